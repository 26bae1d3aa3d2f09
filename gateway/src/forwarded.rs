//! Who the client is, and what the upstream is told about it.
//!
//! A client-supplied `X-Forwarded-For` is believed only when the connection comes from a configured
//! trusted proxy; then the client is the right-most address that is not itself a trusted proxy. From
//! anyone else the header is replaced, so a client cannot pick the IP that rate limits and IP rules see.

use std::net::IpAddr;

use ipnet::IpNet;

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|n| n.contains(&ip))
}

/// Parse one `X-Forwarded-For` element: an IP, optionally `v4:port` or `[v6]:port`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':').and_then(|(h, _)| h.parse().ok())
}

/// The client's IP as the gateway should believe it.
pub fn client_ip<'a>(
    peer: IpAddr,
    xff: impl Iterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    // All XFF headers, in order, form one list; walk it from the right.
    let hops: Vec<&str> = xff.flat_map(|h| h.split(',')).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                let ip = ip.to_canonical();
                client = ip;
                if !is_trusted(ip, trusted) {
                    break;
                }
            }
            // Garbage: whoever wrote it is not trustworthy; the hop to its right is our answer.
            None => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|x| x.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let ip = client_ip(
            "203.0.113.9".parse().unwrap(),
            ["1.2.3.4"].into_iter(),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let t = nets(&["10.0.0.0/8"]);
        let ip = client_ip(
            "10.0.0.1".parse().unwrap(),
            ["6.6.6.6, 198.51.100.7, 10.1.1.1"].into_iter(),
            &t,
        );
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        let ip = client_ip(
            "10.0.0.1".parse().unwrap(),
            ["6.6.6.6", "198.51.100.7:5555"].into_iter(),
            &t,
        );
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        let ip = client_ip(
            "10.0.0.1".parse().unwrap(),
            ["junk, 10.2.2.2"].into_iter(),
            &t,
        );
        assert_eq!(ip, "10.2.2.2".parse::<IpAddr>().unwrap());
        let ip = client_ip(
            "::ffff:10.0.0.1".parse().unwrap(),
            ["[2001:db8::1]:80"].into_iter(),
            &t,
        );
        assert_eq!(ip, "2001:db8::1".parse::<IpAddr>().unwrap());
    }
}
