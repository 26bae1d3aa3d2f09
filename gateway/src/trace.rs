//! W3C Trace Context (`traceparent`): keep the caller's trace, or start one, and tell the upstream that
//! the gateway's hop is the parent of what it does next.
//!
//! `traceparent: 00-<trace-id 32 hex>-<parent-id 16 hex>-<flags 2 hex>`. An invalid header (wrong
//! lengths, upper-case hex, all-zero ids, version `ff`) is treated as absent, as the spec says. The
//! `tracestate` header is passed on untouched.

/// The trace context of one request through the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    /// The gateway's own span id: the `parent-id` the upstream sees.
    pub span_id: String,
    /// The caller's span (the `parent-id` it sent), when it sent a valid `traceparent`.
    pub parent_span_id: Option<String>,
    pub flags: String,
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `bytes` (at most 16) random bytes as lower-case hex, never all zero.
fn random_hex(bytes: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut v = if bytes >= 16 {
        fastrand::u128(1..)
    } else {
        u128::from(fastrand::u64(1..))
    };
    let mut s = String::with_capacity(bytes * 2);
    for _ in 0..bytes * 2 {
        s.push(HEX[(v & 15) as usize] as char);
        v >>= 4;
    }
    s
}

impl TraceContext {
    /// Continue the caller's trace, or start a new (sampled) one.
    pub fn from_header(v: Option<&[u8]>) -> TraceContext {
        if let Some(parent) = v.and_then(|v| std::str::from_utf8(v).ok()).and_then(parse) {
            return TraceContext {
                trace_id: parent.0,
                span_id: random_hex(8),
                parent_span_id: Some(parent.1),
                flags: parent.2,
            };
        }
        TraceContext {
            trace_id: random_hex(16),
            span_id: random_hex(8),
            parent_span_id: None,
            flags: "01".into(),
        }
    }

    /// The caller (or the gateway, for a new trace) asked for this trace to be recorded.
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.flags, 16).is_ok_and(|f| f & 1 == 1)
    }

    /// The `traceparent` value for the upstream request.
    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// `(trace-id, parent-id, flags)` of a valid `traceparent`.
fn parse(v: &str) -> Option<(String, String, String)> {
    let v = v.trim();
    let mut parts = v.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if !is_lower_hex(version, 2) || version == "ff" {
        return None;
    }
    // Version 00 has exactly four fields; later versions may add more, which we ignore.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if !is_lower_hex(trace, 32) || !is_lower_hex(parent, 16) || !is_lower_hex(flags, 2) {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((trace.to_string(), parent.to_string(), flags.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_valid_and_replaces_invalid() {
        let t = TraceContext::from_header(Some(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert_eq!(t.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
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
            assert_ne!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert_eq!(t.flags, "01");
            assert!(is_lower_hex(&t.trace_id, 32) && is_lower_hex(&t.span_id, 16));
        }
    }
}
