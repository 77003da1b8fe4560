//! Which address a request comes from.
//!
//! Forwarding headers are believed only when the connection comes from a
//! configured trusted proxy; otherwise anyone could claim any address and walk
//! past a key's network restriction.

use http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// How to find the client's address.
#[derive(Clone, Debug, Default)]
pub struct ClientIpPolicy {
    /// Proxies whose forwarding header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The header they set (`x-forwarded-for` by default).
    pub header: Option<http::HeaderName>,
}

impl ClientIpPolicy {
    /// The client's address: the peer, or — when the peer is a trusted proxy — the
    /// right-most address in the forwarding header that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let name = self
            .header
            .clone()
            .unwrap_or(http::HeaderName::from_static("x-forwarded-for"));
        let hops: Vec<IpAddr> = headers
            .get_all(&name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| parse_hop(s.trim()))
            .collect();
        hops.iter()
            .rev()
            .find(|ip| !self.is_trusted(**ip))
            .or(hops.first())
            .copied()
            .unwrap_or(peer)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses as plain IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn parse_hop(s: &str) -> Option<IpAddr> {
    // Accept `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]:443`, `2001:db8::1`.
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sock) = s.parse::<std::net::SocketAddr>() {
        return Some(sock.ip());
    }
    None
}

/// The address as text, as `Display` writes it. IPv4 is written by hand: this
/// runs for every request, and `Display`'s formatting machinery cost about 2 %
/// of a proxied request's instructions.
pub fn text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.10.100.200",
            "::1",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(super::text(ip), ip.to_string());
        }
        for n in 0..=255u8 {
            let ip = std::net::IpAddr::from([n, 255 - n, n / 2, 7]);
            assert_eq!(super::text(ip), ip.to_string());
        }
    }

    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarding_headers_are_ignored_unless_from_a_trusted_proxy() {
        let policy = ClientIpPolicy {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            header: None,
        };
        let spoof = headers("203.0.113.9");
        assert_eq!(
            policy.client_ip("198.51.100.1".parse().unwrap(), &spoof),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            policy.client_ip("10.0.0.2".parse().unwrap(), &spoof),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // The client prepends a fake hop; the proxy appended the real one.
        let chain = headers("1.1.1.1, 203.0.113.9, 10.0.0.3");
        assert_eq!(
            policy.client_ip("10.0.0.2".parse().unwrap(), &chain),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let v6 = headers("[2001:db8::7]:443");
        assert_eq!(
            policy.client_ip("10.0.0.2".parse().unwrap(), &v6),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            ClientIpPolicy::default().client_ip("::1".parse().unwrap(), &spoof),
            "::1".parse::<IpAddr>().unwrap()
        );
    }
}
