//! Where a merchant's webhook may be delivered.
//!
//! A webhook URL is chosen by whoever registers it, and the notifier posts
//! to it from inside the acquirer's network. In production a URL must not
//! reach anything that is not on the public internet: not the cluster's own
//! services, the cloud's metadata endpoint, a private network or loopback.
//! The rule is checked twice by the notifier: on the URL when it is
//! registered (an address literal), and on every address its name resolves
//! to at connect time, so a name that resolved to a public address at
//! registration and to a private one later (DNS rebinding) is still
//! refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which destinations the notifier may deliver to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destinations {
    /// `http` or `https`, any address: a laptop's local receivers.
    Any,
    /// `https` only, and only to public unicast addresses.
    PublicHttps,
}

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationRefusal {
    /// Production delivers over TLS only.
    NotHttps,
    /// The address is not a public unicast address; names the class.
    NotPublic {
        address: IpAddr,
        class: &'static str,
    },
}

impl std::fmt::Display for DestinationRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DestinationRefusal::NotHttps => f.write_str("must be an https:// URL"),
            DestinationRefusal::NotPublic { address, class } => {
                write!(f, "{address} is a {class} address, not a public one")
            }
        }
    }
}

impl Destinations {
    /// Checks a URL's scheme (lower case, as URL parsers give it).
    pub fn admits_scheme(self, scheme: &str) -> Result<(), DestinationRefusal> {
        match self {
            Destinations::PublicHttps if scheme != "https" => Err(DestinationRefusal::NotHttps),
            _ => Ok(()),
        }
    }

    /// Checks one address a URL names or its host resolved to.
    pub fn admits_address(self, address: IpAddr) -> Result<(), DestinationRefusal> {
        match self {
            Destinations::Any => Ok(()),
            Destinations::PublicHttps => match non_public_class(address) {
                None => Ok(()),
                Some(class) => Err(DestinationRefusal::NotPublic { address, class }),
            },
        }
    }
}

/// The class of an address that is not public unicast, or `None` for a
/// public one. IPv4 addresses carried in IPv6 (mapped, NAT64) are judged
/// as the IPv4 address they reach.
pub fn non_public_class(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(a: Ipv4Addr) -> Option<&'static str> {
    let [first, second, third, _] = a.octets();
    let class = if a.is_unspecified() || first == 0 {
        "unspecified (0.0.0.0/8)"
    } else if a.is_loopback() {
        "loopback"
    } else if a.is_private() {
        "private (RFC 1918)"
    } else if a.is_link_local() {
        // 169.254.169.254 is the cloud metadata endpoint.
        "link-local (cloud metadata)"
    } else if first == 100 && (64..128).contains(&second) {
        "shared (CGNAT, RFC 6598)"
    } else if first == 192 && second == 0 && third == 0 {
        "IETF protocol assignment"
    } else if a.is_documentation() {
        "documentation"
    } else if first == 198 && (18..20).contains(&second) {
        "benchmarking"
    } else if a.is_multicast() {
        "multicast"
    } else if first >= 240 {
        // Reserved for future use, 255.255.255.255 (broadcast) included.
        "reserved"
    } else {
        return None;
    };
    Some(class)
}

fn v6_class(a: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = a.to_ipv4_mapped() {
        return v4_class(v4);
    }
    let segments = a.segments();
    // 64:ff9b::/96 reaches IPv4 through NAT64.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let o = a.octets();
        return v4_class(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    let class = if a.is_unspecified() {
        "unspecified"
    } else if a.is_loopback() {
        "loopback"
    } else if a.is_multicast() {
        "multicast"
    } else if segments[0] & 0xfe00 == 0xfc00 {
        // fd00:ec2::254 is a cloud metadata endpoint.
        "unique local (fc00::/7)"
    } else if segments[0] & 0xffc0 == 0xfe80 {
        "link-local"
    } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
        "documentation"
    } else if segments[..6] == [0, 0, 0, 0, 0, 0] {
        // The deprecated IPv4-compatible form ::a.b.c.d.
        "IPv4-compatible (deprecated)"
    } else {
        return None;
    };
    Some(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> Option<&'static str> {
        non_public_class(text.parse().unwrap())
    }

    #[test]
    fn every_non_public_range_is_refused_with_its_class() {
        let cases = [
            ("0.0.0.0", "unspecified (0.0.0.0/8)"),
            ("0.1.2.3", "unspecified (0.0.0.0/8)"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.0.0.1", "private (RFC 1918)"),
            ("172.16.0.1", "private (RFC 1918)"),
            ("172.31.255.255", "private (RFC 1918)"),
            ("192.168.1.1", "private (RFC 1918)"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("100.64.0.1", "shared (CGNAT, RFC 6598)"),
            ("100.127.255.255", "shared (CGNAT, RFC 6598)"),
            ("192.0.0.8", "IETF protocol assignment"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.1", "documentation"),
            ("203.0.113.1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("ff02::1", "multicast"),
            ("fc00::1", "unique local (fc00::/7)"),
            ("fd00:ec2::254", "unique local (fc00::/7)"),
            ("fe80::1", "link-local"),
            ("2001:db8::1", "documentation"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local (cloud metadata)"),
            ("64:ff9b::a00:1", "private (RFC 1918)"),
            ("::10.0.0.1", "IPv4-compatible (deprecated)"),
        ];
        for (address, expected) in cases {
            assert_eq!(class(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn public_addresses_next_to_the_ranges_are_admitted() {
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(class(address), None, "{address}");
        }
    }

    #[test]
    fn production_takes_https_to_public_addresses_only() {
        let production = Destinations::PublicHttps;
        assert_eq!(production.admits_scheme("https"), Ok(()));
        assert_eq!(
            production.admits_scheme("http"),
            Err(DestinationRefusal::NotHttps)
        );
        assert!(
            production
                .admits_address("8.8.8.8".parse().unwrap())
                .is_ok()
        );
        let refused = production
            .admits_address("169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "169.254.169.254 is a link-local (cloud metadata) address, not a public one"
        );
    }

    #[test]
    fn development_takes_anything() {
        let any = Destinations::Any;
        assert_eq!(any.admits_scheme("http"), Ok(()));
        assert_eq!(any.admits_address("127.0.0.1".parse().unwrap()), Ok(()));
    }
}
