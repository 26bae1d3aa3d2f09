//! W3C Trace Context (`traceparent`): keep the caller's trace, or start one, and tell the upstream that
//! the gateway's hop is the parent of what it does next.
//!
//! `traceparent: 00-<trace-id 32 hex>-<parent-id 16 hex>-<flags 2 hex>`. An invalid header (wrong
//! lengths, upper-case hex, all-zero ids, version `ff`) is treated as absent, as the spec says. The
//! `tracestate` header is passed on untouched.
//!
//! Ids are kept as integers and the `traceparent` sent upstream is formatted once, when the context is
//! made, into a fixed array (no `String` per id): the header value, the access log's `trace_id` (a
//! slice of it) and the span export (which formats its own hex, off the request path) all read from
//! that.

use http::HeaderValue;

/// Length of a version-00 `traceparent`: `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

/// The trace context of one request through the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// Never zero.
    pub trace_id: u128,
    /// The gateway's own span id: the `parent-id` the upstream sees. Never zero.
    pub span_id: u64,
    /// The caller's span (the `parent-id` it sent), when it sent a valid `traceparent`.
    pub parent_span_id: Option<u64>,
    pub flags: u8,
    /// `traceparent` for the upstream, formatted once.
    text: [u8; TRACEPARENT_LEN],
}

/// Write the low `out.len() / 2` bytes of `v` as `out.len()` lower-case hex digits, most significant
/// first (`out.len()` is even: 32, 16 or 2 here). A byte at a time through `hex`'s table, not a digit
/// at a time with 128-bit shifts.
pub(crate) fn put_hex(out: &mut [u8], v: u128) {
    debug_assert!(
        out.len().is_multiple_of(2) && out.len() <= 32,
        "{} digits",
        out.len()
    );
    let bytes = v.to_be_bytes();
    let n = (out.len() / 2).min(bytes.len());
    // Every caller passes an even length of at most 32 (the assertion holds it to that in tests);
    // `hex` writes nothing when the lengths do not match, leaving the caller's template.
    let _ = hex::encode_to_slice(&bytes[bytes.len() - n..], out);
}

/// The value of lower-case hex `s` of exactly `len` digits (at most 32).
fn lower_hex(s: &str, len: usize) -> Option<u128> {
    if s.len() != len {
        return None;
    }
    s.bytes().try_fold(0u128, |acc, b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(d))
    })
}

impl TraceContext {
    /// Continue the caller's trace, or start a new (sampled) one.
    pub fn from_header(v: Option<&[u8]>) -> TraceContext {
        let span_id = fastrand::u64(1..);
        match v.and_then(|v| std::str::from_utf8(v).ok()).and_then(parse) {
            Some((trace_id, parent, flags)) => {
                TraceContext::new(trace_id, span_id, Some(parent), flags)
            }
            None => TraceContext::new(fastrand::u128(1..), span_id, None, 1),
        }
    }

    fn new(trace_id: u128, span_id: u64, parent_span_id: Option<u64>, flags: u8) -> TraceContext {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        put_hex(&mut text[3..35], trace_id);
        put_hex(&mut text[36..52], u128::from(span_id));
        put_hex(&mut text[53..55], u128::from(flags));
        TraceContext {
            trace_id,
            span_id,
            parent_span_id,
            flags,
            text,
        }
    }

    /// The caller (or the gateway, for a new trace) asked for this trace to be recorded.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The trace id as 32 lower-case hex digits (for the access log).
    pub fn trace_id_hex(&self) -> &str {
        // Only ASCII hex was written there.
        std::str::from_utf8(&self.text[3..35]).unwrap_or_default()
    }

    /// The gateway's span id as 16 lower-case hex digits (for the access log).
    pub fn span_id_hex(&self) -> &str {
        // Only ASCII hex was written there.
        std::str::from_utf8(&self.text[36..52]).unwrap_or_default()
    }

    /// The `traceparent` value for the upstream request.
    pub fn header(&self) -> HeaderValue {
        // Built from the array `new` filled: visible ASCII, so this cannot fail.
        HeaderValue::from_bytes(&self.text).unwrap_or(HeaderValue::from_static(""))
    }
}

/// `(trace-id, parent-id, flags)` of a valid `traceparent`.
fn parse(v: &str) -> Option<(u128, u64, u8)> {
    let v = v.trim();
    let mut parts = v.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if lower_hex(version, 2)? == 0xff {
        return None;
    }
    // Version 00 has exactly four fields; later versions may add more, which we ignore.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let (trace, parent, flags) = (
        lower_hex(trace, 32)?,
        lower_hex(parent, 16)?,
        lower_hex(flags, 2)?,
    );
    if trace == 0 || parent == 0 {
        return None;
    }
    // 16 and 2 hex digits fit.
    Some((trace, parent as u64, flags as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_lower_hex(s: &str, len: usize) -> bool {
        lower_hex(s, len).is_some()
    }

    #[test]
    fn keeps_valid_and_replaces_invalid() {
        let t = TraceContext::from_header(Some(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_ne!(t.span_id, 0x00f067aa0ba902b7);
        assert_eq!(t.parent_span_id, Some(0x00f067aa0ba902b7));
        assert!(t.sampled());
        let unsampled = TraceContext::from_header(Some(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert!(!unsampled.sampled());
        assert_eq!(t.header().len(), 55);
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "garbage",
        ] {
            let t = TraceContext::from_header(Some(bad.as_bytes()));
            assert_ne!(
                t.trace_id_hex(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
            assert_eq!(t.flags, 1);
            assert!(t.trace_id != 0 && t.span_id != 0);
            let h = t.header();
            let h = h.to_str().unwrap();
            assert!(is_lower_hex(&h[3..35], 32) && is_lower_hex(&h[36..52], 16));
        }
    }

    #[test]
    fn put_hex_is_the_low_bytes_as_lower_case_hex() {
        for v in [
            0,
            1,
            0xab,
            u128::from(u64::MAX),
            u128::MAX,
            fastrand::u128(..),
        ] {
            let mut out = [0u8; 32];
            put_hex(&mut out, v);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{v:032x}"));
            let mut out = [0u8; 16];
            put_hex(&mut out, v);
            assert_eq!(
                std::str::from_utf8(&out).unwrap(),
                format!("{:016x}", v as u64)
            );
            let mut out = [0u8; 2];
            put_hex(&mut out, v);
            assert_eq!(
                std::str::from_utf8(&out).unwrap(),
                format!("{:02x}", v as u8)
            );
        }
    }

    #[test]
    fn header_is_the_ids_formatted_once() {
        let t = TraceContext::from_header(Some(
            b" 01-0000000000000000000000000000000a-00000000000000b0-03-later ",
        ));
        // A later version's extra fields are ignored; what goes upstream is version 00.
        assert_eq!(t.trace_id, 10);
        assert_eq!(t.parent_span_id, Some(0xb0));
        assert_eq!(t.flags, 3);
        let h = t.header();
        let h = h.to_str().unwrap();
        assert_eq!(&h[..36], "00-0000000000000000000000000000000a-");
        assert_eq!(&h[36..52], format!("{:016x}", t.span_id));
        assert_eq!(&h[52..], "-03");
        assert_eq!(t.trace_id_hex(), "0000000000000000000000000000000a");
    }
}
