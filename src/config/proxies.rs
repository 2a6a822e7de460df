//! Who the client is: the socket peer, unless the peer is one of our own proxies
//! (`STRATA_TRUSTED_PROXIES`), in which case the forwarded-address header named by
//! `STRATA_TRUSTED_PROXY_HEADER` is read from the right, the way nginx's `real_ip_recursive` and
//! Express's `trust proxy` read it.
//!
//! An appending proxy (nginx `$proxy_add_x_forwarded_for`, most load balancers) adds the address it
//! was connected from to the end of whatever the client sent. Only the entries our own proxies
//! appended are facts; everything to their left was written by the client. So the walk starts at the
//! socket peer and goes left while the hop is a trusted proxy; the first address that is not ours is
//! the client. Spoofed entries sit further left and are never reached.
//!
//! - [`TrustedProxies`]: the CIDR list, parsed once from configuration.
//! - [`TrustedProxies::client`]: the walk, pure (no HTTP types), over the header's lines.
//!
//! An entry that does not parse as an address stops the walk: the client is then the last hop a
//! trusted proxy vouched for (the entry right of the bad one, or the peer). Taking the entry further
//! left would let a client choose its address by sending garbage; taking the peer would blame our
//! own proxy for every such client.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// The proxies whose forwarded-address header is believed (`STRATA_TRUSTED_PROXIES`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// A `STRATA_TRUSTED_PROXIES` entry that is neither a CIDR block nor an address.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a CIDR block (e.g. 10.0.0.0/8, ::1/128) or an address")]
pub struct ProxyListError(pub String);

impl TrustedProxies {
    /// Parses a comma-separated list of CIDR blocks (`10.0.0.0/8,::1/128`); a bare address is the
    /// block of that one address. Empty entries are skipped.
    pub fn parse(list: &str) -> Result<TrustedProxies, ProxyListError> {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let net = match entry.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => entry.parse::<IpAddr>().map(IpNet::from).map_err(|_| ProxyListError(entry.to_owned()))?,
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }

    /// True when no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `addr` is one of the trusted proxies (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.0.iter().any(|net| net.contains(&addr))
    }

    /// The client's address: `peer` unless it is a trusted proxy, else the right-most address of the
    /// forwarded-header `lines` (in the order received; several lines are one list) that is not a
    /// trusted proxy; the left-most when all of them are; the last trusted hop when an entry does
    /// not parse (see the module documentation).
    pub fn client<'a>(&self, peer: IpAddr, lines: impl DoubleEndedIterator<Item = &'a str>) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.contains(client) {
            return client;
        }
        for entry in lines.rev().flat_map(|line| line.rsplit(',')) {
            let Some(hop) = parse_entry(entry.trim()) else { break };
            client = hop;
            if !self.contains(hop) {
                break;
            }
        }
        client
    }
}

impl std::fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.0.iter().map(IpNet::to_string).collect();
        f.write_str(&list.join(","))
    }
}

/// One forwarded entry: `203.0.113.7`, `203.0.113.7:4711`, `2001:db8::1` or `[2001:db8::1]:4711`.
fn parse_entry(s: &str) -> Option<IpAddr> {
    let ip = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| s.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::parse("10.0.0.0/8, 127.0.0.1/32,::1/128").unwrap()
    }

    #[test]
    fn the_list_parses_cidr_blocks_and_bare_addresses_of_both_families() {
        let p = TrustedProxies::parse("10.1.2.3/8,192.0.2.1,2001:db8::/32,, ").unwrap();
        assert_eq!(p.to_string(), "10.0.0.0/8,192.0.2.1/32,2001:db8::/32");
        assert!(p.contains(ip("10.255.0.1")) && p.contains(ip("192.0.2.1")) && p.contains(ip("2001:db8::7")));
        assert!(!p.contains(ip("11.0.0.1")) && !p.contains(ip("192.0.2.2")) && !p.contains(ip("2001:db9::1")));
        // A dual-stack listener sees IPv4 peers as IPv4-mapped IPv6.
        assert!(p.contains(ip("::ffff:10.0.0.9")));
        for bad in ["10.0.0.0/33", "proxy.internal", "10.0.0.0/8;1.2.3.4", "::1/129"] {
            assert_eq!(TrustedProxies::parse(bad).unwrap_err().0, bad);
        }
        assert!(TrustedProxies::parse("").unwrap().is_empty());
    }

    #[test]
    fn a_peer_that_is_not_a_trusted_proxy_is_the_client_whatever_the_header_says() {
        let p = proxies();
        assert_eq!(p.client(ip("203.0.113.7"), ["198.51.100.1"].into_iter()), ip("203.0.113.7"));
        assert_eq!(TrustedProxies::default().client(ip("127.0.0.1"), ["1.2.3.4"].into_iter()), ip("127.0.0.1"));
    }

    #[test]
    fn the_client_is_the_right_most_forwarded_address_that_is_not_a_trusted_proxy() {
        let p = proxies();
        let peer = ip("127.0.0.1");
        assert_eq!(p.client(peer, ["203.0.113.7"].into_iter()), ip("203.0.113.7"));
        assert_eq!(p.client(peer, ["203.0.113.7, 10.0.0.2"].into_iter()), ip("203.0.113.7"));
        // Whatever the client put on the left changes nothing.
        assert_eq!(p.client(peer, ["1.1.1.1, 8.8.8.8 ,203.0.113.7,10.0.0.2,10.0.0.3"].into_iter()), ip("203.0.113.7"));
        assert_eq!(p.client(peer, ["10.9.9.9, 203.0.113.7, 10.0.0.2"].into_iter()), ip("203.0.113.7"));
        // Ports and bracketed IPv6 are understood; IPv4-mapped IPv6 is IPv4.
        assert_eq!(p.client(peer, ["[2001:db8::5]:4711, 10.0.0.2:80"].into_iter()), ip("2001:db8::5"));
        assert_eq!(p.client(peer, ["203.0.113.7:4711"].into_iter()), ip("203.0.113.7"));
        assert_eq!(p.client(ip("::ffff:127.0.0.1"), ["::ffff:203.0.113.7"].into_iter()), ip("203.0.113.7"));
        assert_eq!(p.client(ip("::1"), ["2001:db8::5"].into_iter()), ip("2001:db8::5"));
    }

    #[test]
    fn several_header_lines_are_one_list_in_the_order_received() {
        let p = proxies();
        let peer = ip("127.0.0.1");
        assert_eq!(p.client(peer, ["198.51.100.1, 203.0.113.7", "10.0.0.2"].into_iter()), ip("203.0.113.7"));
        assert_eq!(p.client(peer, ["203.0.113.7", "198.51.100.1", "10.0.0.2"].into_iter()), ip("198.51.100.1"));
    }

    #[test]
    fn all_trusted_gives_the_left_most_and_no_header_gives_the_peer() {
        let p = proxies();
        let peer = ip("127.0.0.1");
        assert_eq!(p.client(peer, ["10.0.0.5, 10.0.0.2"].into_iter()), ip("10.0.0.5"));
        assert_eq!(p.client(peer, std::iter::empty()), peer);
    }

    #[test]
    fn the_header_without_the_proxy_list_fails_startup_naming_both_settings() {
        use crate::config::Config;
        let vars = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let err = Config::from_vars(&vars(&[("STRATA_TRUSTED_PROXY_HEADER", "X-Forwarded-For")])).unwrap_err();
        assert_eq!(err.name, "STRATA_TRUSTED_PROXY_HEADER");
        assert!(err.to_string().contains("STRATA_TRUSTED_PROXIES"), "{err}");
        let err = Config::from_vars(&vars(&[("STRATA_TRUSTED_PROXIES", "10.0.0.0/8,proxy")])).unwrap_err();
        assert_eq!(err.name, "STRATA_TRUSTED_PROXIES");
        let both = [("STRATA_TRUSTED_PROXY_HEADER", "X-Forwarded-For"), ("STRATA_TRUSTED_PROXIES", "10.0.0.0/8,::1")];
        let c = Config::from_vars(&vars(&both)).unwrap();
        assert_eq!(c.trusted_proxy_header.as_deref(), Some("x-forwarded-for"));
        assert_eq!(c.trusted_proxies.to_string(), "10.0.0.0/8,::1/128");
        assert!(Config::default().trusted_proxies.is_empty());
    }

    #[test]
    fn an_entry_that_is_no_address_stops_at_the_last_trusted_hop() {
        let p = proxies();
        let peer = ip("127.0.0.1");
        assert_eq!(p.client(peer, ["203.0.113.7, unknown, 10.0.0.2"].into_iter()), ip("10.0.0.2"));
        assert_eq!(p.client(peer, ["203.0.113.7, , 10.0.0.2"].into_iter()), ip("10.0.0.2"));
        assert_eq!(p.client(peer, ["203.0.113.7, garbage"].into_iter()), peer);
        assert_eq!(p.client(peer, [""].into_iter()), peer);
        // Past an untrusted address, garbage further left is never read.
        assert_eq!(p.client(peer, ["garbage, 203.0.113.7"].into_iter()), ip("203.0.113.7"));
    }
}
