//! Request path normalization, done once per request before routing and before any auth decision.
//!
//! What the upstream sees, what the router matches and what a policy checks must be the same string, or
//! `/admin/%2e%2e/public` and `//admin` become ways around a rule. The rules:
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every other escape is kept,
//!   with its hex digits upper-cased;
//! - an encoded slash (`%2F`), NUL (raw or `%00`) or backslash (raw or `%5C`) is rejected: they mean
//!   different things to different backends, and no legitimate API needs them;
//! - `.` and `..` segments are resolved (RFC 3986 §5.2.4), including encoded ones, never above the root;
//! - runs of `/` collapse to one. A trailing slash is kept.
//!
//! Refused outright (each a `400 invalid_path`), because some backend reads them differently from the
//! gateway (the README has the table with the reasons):
//! - a dot-segment carrying parameters (`..;x`, `.;`): Tomcat, Jetty and Spring drop `;...` from a
//!   segment and then resolve the `..`, so `/public/..;/private` would reach `/private`;
//! - a percent-encoded `%` that encodes `.`, `/`, `\` or `%` again (`%252e`, `%252f`, `%255c`, `%2525`):
//!   a backend or framework that decodes twice sees a dot-segment or a slash the router never saw;
//! - percent-escapes that decode to bytes that are not UTF-8 (overlong `%c0%ae`, stray `%ff`): some
//!   decoders map overlong forms to `.` and `/`;
//! - percent-encoded control characters (`%00`-`%1F`, `%7F`): `%0d%0a` splits log lines and headers in
//!   backends that decode the path into a header or a log.
//!
//! The common case (a path with none of `%`, `//`, `/.` or `\`) is returned borrowed, without allocating.

use std::borrow::Cow;

/// Why a path was refused; each maps to a 400 with its own error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an origin-form path (does not start with `/`).
    NotAbsolute,
    /// `%` not followed by two hex digits.
    BadEscape,
    EncodedSlash,
    Nul,
    Backslash,
    /// A `.` or `..` segment with `;parameters`.
    DotSegmentParams,
    /// `%25` followed by the escape of `.`, `/`, `\` or `%`.
    DoubleEncoding,
    /// Percent-escapes that decode to something that is not UTF-8.
    InvalidUtf8,
    /// A percent-encoded control character.
    EncodedControl,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request path must start with '/'",
            PathError::BadEscape => "the request path has a malformed percent-escape",
            PathError::EncodedSlash => "an encoded slash (%2F) is not allowed in the request path",
            PathError::Nul => "a NUL byte is not allowed in the request path",
            PathError::Backslash => "a backslash is not allowed in the request path",
            PathError::DotSegmentParams => {
                "a dot-segment with parameters (`..;`, `.;`) is not allowed in the request path"
            }
            PathError::DoubleEncoding => {
                "a double-encoded `.`, `/`, `\\` or `%` (`%252e`...) is not allowed in the request path"
            }
            PathError::InvalidUtf8 => "the request path's percent-escapes do not decode to UTF-8",
            PathError::EncodedControl => {
                "an encoded control character (`%00`-`%1F`, `%7F`) is not allowed in the request path"
            }
        }
    }
}

fn needs_work(p: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in p {
        match b {
            b'%' | b'\\' | 0 => return true,
            b'/' if prev == b'/' => return true,
            b'.' if prev == b'/' => return true,
            _ => {}
        }
        prev = b;
    }
    false
}

/// The value of hex digit `b`.
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// After a `%25`: do the next bytes spell the escape of `.`, `/`, `\` or `%`?
fn double_encoded(rest: &[u8]) -> bool {
    match (
        rest.first().and_then(|&x| hex(x)),
        rest.get(1).and_then(|&x| hex(x)),
    ) {
        (Some(h), Some(l)) => matches!(h << 4 | l, b'.' | b'/' | b'\\' | b'%'),
        _ => false,
    }
}

/// Do the path's bytes, every escape decoded, form UTF-8? (Only called when an escape is >= 0x80;
/// escapes were checked to be well formed.)
fn decodes_to_utf8(raw: &[u8]) -> bool {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match (
            raw[i],
            raw.get(i + 1).and_then(|&x| hex(x)),
            raw.get(i + 2).and_then(|&x| hex(x)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&out).is_ok()
}

/// Normalize a request path (without its query). See the module docs for the rules.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let raw = path.as_bytes();
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(raw) {
        return Ok(Cow::Borrowed(path));
    }

    // Pass 1: decode unreserved escapes, refuse the dangerous ones.
    let mut decoded = Vec::with_capacity(raw.len());
    let mut high = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (h, l) = match (
                    raw.get(i + 1).and_then(|&x| hex(x)),
                    raw.get(i + 2).and_then(|&x| hex(x)),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadEscape),
                };
                let c = h << 4 | l;
                high |= c >= 0x80;
                match c {
                    b'/' => return Err(PathError::EncodedSlash),
                    0 => return Err(PathError::Nul),
                    b'\\' => return Err(PathError::Backslash),
                    0x01..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                    b'%' if double_encoded(&raw[i + 3..]) => return Err(PathError::DoubleEncoding),
                    c if is_unreserved(c) => decoded.push(c),
                    c => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        decoded.extend_from_slice(&[
                            b'%',
                            HEX[(c >> 4) as usize],
                            HEX[(c & 15) as usize],
                        ]);
                    }
                }
                i += 3;
            }
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }

    if high && !decodes_to_utf8(raw) {
        return Err(PathError::InvalidUtf8);
    }

    // Pass 2: segments, dropping empty ones and resolving dot-segments.
    let mut segs: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split(|&b| b == b'/').skip(1) {
        trailing_slash = false;
        if let Some(semi) = seg.iter().position(|&b| b == b';') {
            if matches!(&seg[..semi], b"." | b"..") {
                return Err(PathError::DotSegmentParams);
            }
        }
        match seg {
            b"" => trailing_slash = true,
            b"." => trailing_slash = true,
            b".." => {
                segs.pop();
                trailing_slash = true;
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segs {
        out.push('/');
        // Safe: input was &str, and we only decoded ASCII bytes or re-emitted escapes.
        out.push_str(std::str::from_utf8(s).map_err(|_| PathError::BadEscape)?);
    }
    if segs.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(|c| c.into_owned())
    }

    #[test]
    fn clean_paths_are_borrowed() {
        assert!(matches!(normalize("/api/users/42"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/a/b.json"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn vectors() {
        let cases = [
            ("/a/b/../c", "/a/c"),
            ("/a/./b", "/a/b"),
            ("/../../a", "/a"),
            ("//a///b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E%2e/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/a/%2e/b", "/a/b"),
            ("/%61%62c", "/abc"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/a/..%2fb", "error"),
            ("/", "/"),
            ("//", "/"),
            ("/.", "/"),
            ("/..", "/"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/a;b/c;d=1", "/a;b/c;d=1"),
            ("/a/...;x", "/a/...;x"),
            ("/a%25b", "/a%25b"),
            ("/a%2541", "/a%2541"),
        ];
        for (input, want) in cases {
            let got = n(input);
            if want == "error" {
                assert!(got.is_err(), "{input} -> {got:?}");
            } else {
                assert_eq!(got.as_deref(), Ok(want), "{input}");
            }
        }
    }

    #[test]
    fn rejections() {
        assert_eq!(n("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%00b"), Err(PathError::Nul));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("/a%5cb"), Err(PathError::Backslash));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
        assert_eq!(n("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
        for p in [
            "/public/..;/private/x",
            "/a/.;/b",
            "/a/..;",
            "/a/%2e%2e;x/b",
            "/a/.;jsessionid=1",
        ] {
            assert_eq!(n(p), Err(PathError::DotSegmentParams), "{p}");
        }
        for p in ["/a/%252e%252e/b", "/a%252Fb", "/a%255cb", "/a%2525"] {
            assert_eq!(n(p), Err(PathError::DoubleEncoding), "{p}");
        }
        for p in ["/a/%c0%ae%c0%ae/b", "/%ff", "/caf%C3", "/%e0%80%af"] {
            assert_eq!(n(p), Err(PathError::InvalidUtf8), "{p}");
        }
        for p in ["/a%0d%0aSet-Cookie:x", "/a%09", "/a%1F", "/a%7f"] {
            assert_eq!(n(p), Err(PathError::EncodedControl), "{p}");
        }
    }

    #[test]
    fn idempotent() {
        for p in ["/a/%2e%2e/b//c/./d/", "/x/%41/../y", "/%7euser"] {
            let once = n(p).unwrap();
            assert_eq!(n(&once).unwrap(), once);
        }
    }
}
