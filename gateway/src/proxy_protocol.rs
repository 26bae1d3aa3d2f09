//! The PROXY protocol (HAProxy's, versions 1 and 2) on the public listeners: behind a TCP load balancer
//! (AWS NLB, HAProxy in TCP mode, a Kubernetes Service with `externalTrafficPolicy` that rewrites
//! sources) the connection's peer is the balancer, and the client's address comes first on the
//! connection, as a header the balancer writes.
//!
//! Only peers named in `server.proxy_protocol.from` may send one, and from them it is required: a
//! connection from such a peer that does not start with a valid header is closed (a balancer that
//! forgot to send it, or a client that reached the gateway around it). From any other peer nothing is
//! parsed: bytes that look like a header are just a malformed HTTP request, answered 400, so a client
//! can never choose its own address. A `LOCAL` (v2) or `UNKNOWN` (v1) header, which balancers send
//! for their health checks, keeps the connection's own peer.
//!
//! The address is given to Pingora as the connection's peer (a new [`SocketDigest`] on the same
//! socket), so the access log, rate-limit keys, `ip_filter` and `X-Forwarded-For` all see the client;
//! `trusted_proxies` then applies to that client, as it would without a balancer. The header is read
//! within the head deadline (`limits.header_read_timeout`), byte-exact, so what follows it (the TLS
//! handshake or the HTTP request) is untouched: on plain listeners in [`crate::conn::HeaderDeadline`],
//! on HTTPS listeners before the handshake through Pingora's `PreTlsProcess` hook
//! (pingora-core `listeners/mod.rs`, `UninitializedStream::handshake`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, UniqueID};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest header accepted: version 1's limit is 107 bytes; version 2's address block is at most
/// 216 bytes (two UNIX paths), and balancers add TLVs (AWS: the VPC endpoint id). Far more than any
/// balancer sends, and a bound on what a trusted peer can make the gateway buffer.
const MAX_V2_PAYLOAD: usize = 1024;
const V1_MAX: usize = 107;

/// Which peers may send a PROXY header (`server.proxy_protocol.from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub from: Vec<IpNet>,
}

impl Policy {
    fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.from.iter().any(|n| n.contains(&peer))
    }
}

/// Why a connection from a trusted peer was closed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The first bytes are no PROXY header.
    NoHeader,
    /// A header that does not parse, or is too long.
    Malformed(String),
    /// Not within the head deadline, or the peer went away.
    Timeout,
    Io(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NoHeader => f.write_str("no PROXY protocol header"),
            Refused::Malformed(m) => write!(f, "malformed PROXY protocol header: {m}"),
            Refused::Timeout => f.write_str("no PROXY protocol header within the head deadline"),
            Refused::Io(e) => write!(f, "reading the PROXY protocol header: {e}"),
        }
    }
}

/// What the header said: the client's address, or `None` for the connection's own (`LOCAL`,
/// `UNKNOWN`, a family without addresses).
pub type Client = Option<SocketAddr>;

/// Parse a whole header (its exact bytes).
pub fn parse(header: &[u8]) -> Result<Client, Refused> {
    if header.starts_with(ppp::v2::PROTOCOL_PREFIX) {
        let h = ppp::v2::Header::try_from(header).map_err(|e| Refused::Malformed(e.to_string()))?;
        if h.command == ppp::v2::Command::Local {
            return Ok(None);
        }
        return Ok(match h.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v2::Addresses::IPv6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
        });
    }
    if header.starts_with(b"PROXY ") {
        let h = ppp::v1::Header::try_from(header).map_err(|e| Refused::Malformed(e.to_string()))?;
        if h.header.len() != header.len() {
            return Err(Refused::Malformed("bytes after the header's end".into()));
        }
        return Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        });
    }
    Err(Refused::NoHeader)
}

/// Read exactly one header from `s` (nothing after it), and parse it.
pub async fn read<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> Result<Client, Refused> {
    let io = |e: std::io::Error| Refused::Io(e.to_string());
    // Both versions are longer than 8 bytes (the shortest, `PROXY UNKNOWN\r\n`, has 15), so these
    // are never bytes of what follows the header.
    let mut buf = vec![0u8; 8];
    s.read_exact(&mut buf).await.map_err(io)?;
    if buf.starts_with(&ppp::v2::PROTOCOL_PREFIX[..8]) {
        // Signature (12), version and command, family, and the payload's length (2).
        buf.resize(16, 0);
        s.read_exact(&mut buf[8..]).await.map_err(io)?;
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if len > MAX_V2_PAYLOAD {
            return Err(Refused::Malformed(format!(
                "a {len}-byte payload (at most {MAX_V2_PAYLOAD})"
            )));
        }
        buf.resize(16 + len, 0);
        s.read_exact(&mut buf[16..]).await.map_err(io)?;
    } else if buf.starts_with(b"PROXY ") {
        // Up to the CRLF, one byte at a time: the stream is buffered, and the header is short.
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(Refused::Malformed(format!("longer than {V1_MAX} bytes")));
            }
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.map_err(io)?;
            buf.push(b[0]);
        }
    } else {
        return Err(Refused::NoHeader);
    }
    parse(&buf)
}

/// Read the header of a connection from a trusted peer and make its client the connection's peer;
/// a connection from any other peer is left as it is. Err: close the connection.
pub async fn accept<S>(s: &mut S, policy: &Policy, deadline: Duration) -> Result<(), Refused>
where
    S: AsyncRead + Unpin + GetSocketDigest + UniqueID + ?Sized,
{
    let digest = s.get_socket_digest();
    let peer = digest
        .as_ref()
        .and_then(|d| d.peer_addr())
        .and_then(PingoraAddr::as_inet)
        .map(|a| a.ip());
    if !peer.is_some_and(|p| policy.trusts(p)) {
        return Ok(());
    }
    let client = tokio::time::timeout(deadline, read(s))
        .await
        .map_err(|_| Refused::Timeout)??;
    if let Some(client) = client {
        // The same socket, another peer. The local address stays the socket's own.
        let d = SocketDigest::from_raw_fd(s.id());
        let _ = d.peer_addr.set(Some(PingoraAddr::Inet(client)));
        if let Some(local) = digest.as_ref().and_then(|d| d.local_addr()) {
            let _ = d.local_addr.set(Some(local.clone()));
        }
        s.set_socket_digest(d);
    }
    Ok(())
}

/// The policy in force now (it follows reloads) and the head deadline, for the listeners.
pub type Current = Arc<dyn Fn() -> Option<(Arc<Policy>, Duration)> + Send + Sync>;

/// The HTTPS listeners' hook: the header comes before the TLS handshake.
pub struct PreTls(pub Current);

#[async_trait]
impl pingora_core::listeners::PreTlsProcess for PreTls {
    async fn process(
        &self,
        stream: &mut pingora_core::protocols::l4::stream::Stream,
    ) -> pingora_error::Result<()> {
        let Some((policy, deadline)) = (self.0)() else {
            return Ok(());
        };
        accept(stream, &policy, deadline).await.map_err(|e| {
            log::debug!("closing a connection: {e}");
            pingora_error::Error::explain(pingora_error::ErrorType::AcceptError, e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = ppp::v2::PROTOCOL_PREFIX.to_vec();
        h.push(cmd);
        h.push(fam);
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    #[tokio::test]
    async fn reads_exactly_the_header() {
        let mut input: &[u8] = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n";
        let c = read(&mut input).await.unwrap();
        assert_eq!(c, Some("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(input, b"GET / HTTP/1.1\r\n");

        let mut ipv4 = vec![203, 0, 113, 9, 10, 0, 0, 1];
        ipv4.extend_from_slice(&51001u16.to_be_bytes());
        ipv4.extend_from_slice(&443u16.to_be_bytes());
        // A TLV after the addresses (AWS sends its VPC endpoint id so).
        ipv4.extend_from_slice(&[0xEA, 0, 3, 1, 2, 3]);
        let mut bytes = v2(0x21, 0x11, &ipv4);
        bytes.extend_from_slice(b"\x16\x03\x01");
        let mut input: &[u8] = &bytes;
        let c = read(&mut input).await.unwrap();
        assert_eq!(c, Some("203.0.113.9:51001".parse().unwrap()));
        assert_eq!(input, b"\x16\x03\x01");
    }

    #[tokio::test]
    async fn health_checks_and_unknown_keep_the_peer() {
        let mut input: &[u8] = b"PROXY UNKNOWN\r\n";
        assert_eq!(read(&mut input).await, Ok(None));
        let bytes = v2(0x20, 0x00, &[]);
        assert_eq!(read(&mut &bytes[..]).await, Ok(None));
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_header() {
        let mut input: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(read(&mut input).await, Err(Refused::NoHeader));
        let mut input: &[u8] = b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 1\r\n";
        assert!(matches!(read(&mut input).await, Err(Refused::Malformed(_))));
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(matches!(
            read(&mut long.as_bytes()).await,
            Err(Refused::Malformed(_))
        ));
        let mut huge = v2(0x21, 0x11, &[]);
        huge[14..16].copy_from_slice(&60000u16.to_be_bytes());
        assert!(matches!(
            read(&mut &huge[..]).await,
            Err(Refused::Malformed(_))
        ));
        // Cut short: the peer went away.
        let mut input: &[u8] = b"PROXY TCP4 1.2.3";
        assert!(matches!(read(&mut input).await, Err(Refused::Io(_))));
    }

    #[test]
    fn trust_is_by_peer_address() {
        let p = Policy {
            from: vec!["10.0.0.0/8".parse().unwrap()],
        };
        assert!(p.trusts("10.1.2.3".parse().unwrap()));
        assert!(p.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!p.trusts("192.0.2.1".parse().unwrap()));
    }
}
