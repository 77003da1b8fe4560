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

#[cfg(test)]
mod tests {
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
