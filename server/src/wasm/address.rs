//! Where a plugin's request may connect: [`is_internal`], the classification of addresses that
//! are not globally routable, and `GuardedResolver`, the DNS resolver of the plugins' shared
//! client that drops such addresses unless the operator named the host. The checks on the URL
//! itself are in `fetch.rs`; this file is the part that sees IP addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::fetch::HostRules;

/// True for addresses a plugin must not reach unless the operator named the host: everything
/// that is not globally routable (std's `is_global` is unstable, so the IANA special-purpose
/// registries are spelled out here), and IPv6 forms that embed an IPv4 address are judged by it.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240 // reserved (and broadcast)
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let embedded = |high: u16, low: u16| {
                let [h1, h2] = high.to_be_bytes();
                let [l1, l2] = low.to_be_bytes();
                std::net::Ipv4Addr::new(h1, h2, l1, l2)
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            // NAT64 (64:ff9b::/96): the IPv4 address it translates to decides.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_internal(IpAddr::V4(embedded(segments[6], segments[7])));
            }
            let first = segments[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || segments[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible (deprecated)
                || (first == 0x64 && segments[1] == 0xff9b) // local-use NAT64 (64:ff9b:1::/48)
                || (first == 0x100 && segments[1..4] == [0, 0, 0]) // discard-only
                || (first == 0x2001 && segments[1] < 0x200) // IETF assignments, Teredo
                || first == 0x2002 // 6to4: relays reach any IPv4 address, private ones too
                || (first == 0x2001 && segments[1] == 0x0db8) // documentation
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || (first & 0xffc0) == 0xfec0 // site local (deprecated)
        }
    }
}

/// Resolves names for the shared client, dropping internal addresses for names the operator did
/// not name, at connection time (so a DNS answer cannot smuggle in a private address).
pub(super) struct GuardedResolver {
    operator: Arc<HostRules>,
}

impl GuardedResolver {
    pub(super) fn new(operator: Arc<HostRules>) -> Self {
        Self { operator }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let operator = self.operator.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let usable: Vec<SocketAddr> = if operator.names(&host) {
                resolved
            } else {
                resolved
                    .into_iter()
                    .filter(|a| !is_internal(a.ip()))
                    .collect()
            };
            if usable.is_empty() {
                return Err(format!("{host} resolves only to internal addresses").into());
            }
            Ok(Box::new(usable.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            // What a review found slipping through.
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "2002:a00:1::1",
            "2002:5db8:d822::1",
            "fec0::1",
            "192.0.0.8",
            "240.0.0.1",
            "255.255.255.254",
            "192.0.2.1",
            "2001:db8::1",
            "2001::1",
            "::10.0.0.1",
            "100::1",
        ] {
            assert!(is_internal(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "64:ff9b::5db8:d822",
            "2a00:1450:4001::200e",
        ] {
            assert!(!is_internal(ip.parse().expect("ip")), "{ip}");
        }
    }
}
