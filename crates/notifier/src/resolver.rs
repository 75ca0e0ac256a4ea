//! The notifier's name resolution under `public_https`: every address a
//! webhook host resolves to is checked at connect time by
//! [`switch_core::destination`], so a name that pointed at a public address
//! when it was registered cannot later lead a delivery to loopback, the
//! cloud's metadata endpoint or the cluster's own services.

use std::net::SocketAddr;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use switch_core::destination::Destinations;

/// Resolves with the system resolver and keeps only admitted addresses;
/// a name with none left fails to connect, naming the first refusal.
#[derive(Debug, Clone, Copy)]
pub struct AdmittedOnly {
    pub destinations: Destinations,
}

impl Resolve for AdmittedOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let destinations = self.destinations;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            // The port is reqwest's to set; 0 only satisfies the lookup.
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (admitted, refusals) = admit(destinations, resolved);
            if admitted.is_empty() {
                let reason = refusals.first().map_or_else(
                    || "resolves to no address".to_owned(),
                    |refusal| format!("resolves to {refusal}"),
                );
                return Err(format!("webhook host {host} {reason}").into());
            }
            Ok(Box::new(admitted.into_iter()) as Addrs)
        })
    }
}

/// Splits resolved addresses into those `destinations` admits and the
/// reasons the others are refused.
fn admit(destinations: Destinations, resolved: Vec<SocketAddr>) -> (Vec<SocketAddr>, Vec<String>) {
    let mut admitted = Vec::new();
    let mut refusals = Vec::new();
    for address in resolved {
        match destinations.admits_address(address.ip()) {
            Ok(()) => admitted.push(address),
            Err(refusal) => refusals.push(refusal.to_string()),
        }
    }
    (admitted, refusals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_that_resolves_inside_the_network_is_refused_at_connect_time() {
        let resolver = AdmittedOnly {
            destinations: Destinations::PublicHttps,
        };
        let refused = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(addresses) => panic!("admitted {:?}", addresses.collect::<Vec<_>>()),
            Err(error) => error.to_string(),
        };
        assert!(
            refused.starts_with("webhook host localhost resolves to"),
            "{refused}"
        );
        assert!(refused.contains("loopback"), "{refused}");
    }

    #[tokio::test]
    async fn development_resolves_as_the_system_does() {
        let resolver = AdmittedOnly {
            destinations: Destinations::Any,
        };
        let addresses: Vec<_> = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(
            addresses.iter().all(|a| a.ip().is_loopback()),
            "{addresses:?}"
        );
        assert!(!addresses.is_empty());
    }

    #[test]
    fn only_admitted_addresses_are_kept_in_order() {
        let resolved: Vec<SocketAddr> = ["10.0.0.1:0", "8.8.8.8:0", "[::1]:0", "1.1.1.1:0"]
            .into_iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let (admitted, refusals) = admit(Destinations::PublicHttps, resolved);
        assert_eq!(
            admitted,
            ["8.8.8.8:0".parse().unwrap(), "1.1.1.1:0".parse().unwrap()]
        );
        assert_eq!(refusals.len(), 2);
    }
}
