//! Who the client is: the socket peer, or — when the peer is a trusted proxy — the
//! right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
//!
//! A peer outside `client_ip.trusted_proxies` cannot influence the result: its
//! `X-Forwarded-For` is ignored here and replaced before forwarding.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// Whether `ip` is inside one of `nets`. IPv4-mapped IPv6 addresses are compared as
/// IPv4, so a dual-stack listener does not defeat an IPv4 allowlist.
pub fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as IPv4; everything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn parse_entry(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    // `[v6]:port` and `v4:port` forms some proxies emit.
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// Resolves the client IP for a request from `peer` with `headers`.
///
/// Walks `X-Forwarded-For` (all header lines, in order) from the right while entries
/// are trusted proxies; the first untrusted entry is the client. An unparsable entry
/// stops the walk at the last trusted hop, which is what that hop saw.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !contains(trusted, peer) {
        return peer;
    }
    let mut current = peer;
    let lines: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for line in lines.iter().rev() {
        for entry in line.rsplit(',') {
            if entry.trim().is_empty() {
                continue;
            }
            let Some(ip) = parse_entry(entry) else {
                return current;
            };
            let ip = canonical(ip);
            if !contains(trusted, ip) {
                return ip;
            }
            current = ip;
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn xff(v: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in v {
            h.append("x-forwarded-for", HeaderValue::from_str(line).unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_cannot_spoof() {
        let ip = resolve(
            "203.0.113.9".parse().unwrap(),
            &xff(&["1.2.3.4"]),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_peer_gives_right_most_untrusted_entry() {
        let h = xff(&["6.6.6.6, 1.2.3.4, 10.0.0.7"]);
        let ip = resolve("10.0.0.1".parse().unwrap(), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(ip, "1.2.3.4".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn multiple_header_lines_are_one_list() {
        let h = xff(&["6.6.6.6", "1.2.3.4"]);
        let ip = resolve("10.0.0.1".parse().unwrap(), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(ip, "1.2.3.4".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn all_trusted_or_garbage_stops_at_last_trusted_hop() {
        let n = nets(&["10.0.0.0/8"]);
        let ip = resolve("10.0.0.1".parse().unwrap(), &xff(&["10.0.0.2"]), &n);
        assert_eq!(ip, "10.0.0.2".parse::<IpAddr>().unwrap());
        let ip = resolve(
            "10.0.0.1".parse().unwrap(),
            &xff(&["1.1.1.1, garbage, 10.0.0.3"]),
            &n,
        );
        assert_eq!(ip, "10.0.0.3".parse::<IpAddr>().unwrap());
        let ip = resolve("10.0.0.1".parse().unwrap(), &HeaderMap::new(), &n);
        assert_eq!(ip, "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ports_and_mapped_addresses() {
        let n = nets(&["127.0.0.0/8"]);
        let ip = resolve(
            "::ffff:127.0.0.1".parse().unwrap(),
            &xff(&["[2001:db8::1]:443"]),
            &n,
        );
        assert_eq!(ip, "2001:db8::1".parse::<IpAddr>().unwrap());
        let ip = resolve("127.0.0.1".parse().unwrap(), &xff(&["192.0.2.1:8080"]), &n);
        assert_eq!(ip, "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
