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
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request path must start with '/'",
            PathError::BadEscape => "the request path has a malformed percent-escape",
            PathError::EncodedSlash => "an encoded slash (%2F) is not allowed in the request path",
            PathError::Nul => "a NUL byte is not allowed in the request path",
            PathError::Backslash => "a backslash is not allowed in the request path",
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

fn hex(b: u8) -> Option<u8> {
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
                match c {
                    b'/' => return Err(PathError::EncodedSlash),
                    0 => return Err(PathError::Nul),
                    b'\\' => return Err(PathError::Backslash),
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

    // Pass 2: segments, dropping empty ones and resolving dot-segments.
    let mut segs: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split(|&b| b == b'/').skip(1) {
        trailing_slash = false;
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
            ("/api/users/..;/admin", "/api/users/..;/admin"),
            ("/caf%C3%A9", "/caf%C3%A9"),
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
    }

    #[test]
    fn idempotent() {
        for p in ["/a/%2e%2e/b//c/./d/", "/x/%41/../y", "/%7euser"] {
            let once = n(p).unwrap();
            assert_eq!(n(&once).unwrap(), once);
        }
    }
}
