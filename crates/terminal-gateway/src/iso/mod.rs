//! ISO 8583 listeners: the edge for terminals that do not speak gRPC.
//!
//! Each configured listener (`gateway.iso_listeners`) has its own address
//! and profile (`ascii_1987` or `cup_pos`, from the `iso8583` crate) and
//! accepts through the same edge as gRPC ([`crate::edge::incoming`]): the
//! gateway's maximum of connections (shared with every other listener),
//! the TLS handshake timeout, a client certificate from the terminal CA
//! that is not revoked, a terminal that is not suspended and within its
//! maximum of connections, the idle timeout, and all of it reloaded
//! without a restart. The identity is the gRPC edge's (CN = terminal id,
//! OU = merchant id). Plain TCP is served only when a listener says
//! `plain_tcp_for_lab = true`: there is no certificate then, so field 41
//! names the terminal and field 42 the merchant, which is only fit for a
//! lab (the connection maximum and the idle timeout still apply).
//!
//! Every request is admitted like a gRPC call before anything else: a
//! certificate revoked or a terminal suspended since the connection opened
//! closes it; a terminal over its request rate (the same bucket as its
//! gRPC calls) is answered the profile's "try later" code
//! (`IsoRefusal::OverRate`) and nothing is forwarded.
//!
//! A connection carries many messages, each framed by the profile's length
//! header; requests are handled concurrently (at most `max_in_flight` per
//! connection) and answered as they finish, so a terminal matches an answer
//! to its request by field 41 + field 11, never by order.
//!
//! Every message goes through the same forwarding as its gRPC twin
//! ([`crate::service::TerminalApi`]): a 0200 sale is an `Authorize`, a 0220
//! completion advice an `Acknowledge`, a 0400/0420 reversal (and the repeats
//! 0401/0421) a terminal-requested `Reverse`, whose idempotency in the
//! journal gives a repeat the original's answer; a 0500 batch close a
//! `CloseBatch` to the settlement batcher (totals in fields 74-89, or in
//! field 48 on `cup_pos`); the 0320 messages of a batch upload are gathered
//! per connection and forwarded as one `UploadBatch` when the upload's end
//! arrives ([`handler`]). 0800 (sign-on, echo, sign-off) is answered here. Field 39 comes from the authorization's
//! record, or, when the edge refuses, from `switch_core::iso_response`.
//! A message that cannot be read gets "30" in its MTI's response class when
//! the MTI and fields 11 and 41 could be read; otherwise the connection is
//! closed and the reason logged, never the bytes.

mod connection;
mod handler;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use switch_core::ResponseCodes;
use switch_platform::config::ConfigError;
use switch_platform::service::ServeError;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::edge::{self, AcceptSettings, Edge};
use crate::limits::Connections;
use crate::service::TerminalApi;

/// The edge metrics' name for connections of the ISO listeners.
const LISTENER_NAME: &str = "iso";

/// A wire layout a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IsoProfile {
    /// ISO 8583:1987 ASCII (pyiso8583's `default_ascii`), two-byte binary
    /// length header.
    #[serde(rename = "ascii_1987")]
    Ascii1987,
    /// China UnionPay POS: two-byte length, TPDU, header, BCD.
    #[serde(rename = "cup_pos")]
    CupPos,
}

impl IsoProfile {
    pub fn profile(self) -> iso8583::Profile {
        match self {
            IsoProfile::Ascii1987 => iso8583::Profile::ASCII_1987,
            IsoProfile::CupPos => iso8583::Profile::CUP_POS,
        }
    }

    /// The list of response codes the profile's terminals read.
    pub fn response_codes(self) -> ResponseCodes {
        match self {
            IsoProfile::Ascii1987 => ResponseCodes::Iso1987,
            IsoProfile::CupPos => ResponseCodes::UnionPay,
        }
    }
}

/// One ISO 8583 listener (`[[gateway.iso_listeners]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IsoListenerConfig {
    pub listen: SocketAddr,
    pub profile: IsoProfile,
    /// Serve plain TCP instead of TLS, trusting fields 41 and 42 for the
    /// terminal's identity. For a lab only; never set it where real
    /// terminals connect.
    pub plain_tcp_for_lab: bool,
    /// Requests of one connection handled at the same time; the next is
    /// read once one of them is answered.
    pub max_in_flight: usize,
}

impl Default for IsoListenerConfig {
    fn default() -> Self {
        IsoListenerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8583)),
            profile: IsoProfile::Ascii1987,
            plain_tcp_for_lab: false,
            max_in_flight: 16,
        }
    }
}

impl IsoListenerConfig {
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let key = |name: &str| format!("gateway.iso_listeners[{index}].{name}");
        if self.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                key("max_in_flight"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// What every connection of a listener shares.
pub(crate) struct Listener {
    pub kind: IsoProfile,
    pub profile: iso8583::Profile,
    pub codes: ResponseCodes,
    pub max_in_flight: usize,
    pub api: Arc<TerminalApi>,
    pub clock: switch_core::SharedClock,
    pub metrics: metrics::IsoMetrics,
}

/// What the ISO listeners share with the gRPC one: the edge (certificates,
/// CRL, registry), the count of connections and the accept timers.
pub(crate) struct Shared {
    pub edge: Edge,
    pub connections: Connections,
    pub settings: AcceptSettings,
    pub metrics: crate::metrics::Metrics,
}

/// Binds every configured listener and serves it until `stop`; the
/// returned tasks end once their connections have answered what they were
/// handling.
pub(crate) async fn spawn(
    listeners: &[IsoListenerConfig],
    shared: &Shared,
    api: Arc<TerminalApi>,
    stop: CancellationToken,
) -> Result<Vec<JoinHandle<()>>, ServeError> {
    let mut tasks = Vec::new();
    let metrics = metrics::IsoMetrics::new();
    for config in listeners {
        let socket = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind {
                address: config.listen,
                source,
            })?;
        let listener = Arc::new(Listener {
            kind: config.profile,
            profile: config.profile.profile(),
            codes: config.profile.response_codes(),
            max_in_flight: config.max_in_flight,
            api: api.clone(),
            clock: switch_core::SystemClock::shared(),
            metrics: metrics.clone(),
        });
        tracing::info!(address = %config.listen, profile = listener.profile.name, "ISO 8583 listener started.");
        let task = if config.plain_tcp_for_lab {
            tracing::warn!(address = %config.listen, "ISO 8583 listener serves plain TCP: field 41 is trusted as the terminal's identity; lab use only.");
            let incoming = edge::incoming_plain_for_lab(
                socket,
                shared.connections.clone(),
                shared.settings,
                shared.metrics.clone(),
                LISTENER_NAME,
                stop.clone(),
            );
            tokio::spawn(connection::serve(incoming, listener, stop.clone()))
        } else {
            let incoming = edge::incoming(
                socket,
                shared.edge.clone(),
                shared.connections.clone(),
                shared.settings,
                shared.metrics.clone(),
                LISTENER_NAME,
                stop.clone(),
            );
            tokio::spawn(connection::serve(incoming, listener, stop.clone()))
        };
        tasks.push(task);
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_read_from_toml_with_their_documented_names() {
        #[derive(Deserialize)]
        struct Gateway {
            iso_listeners: Vec<IsoListenerConfig>,
        }
        let gateway: Gateway = toml::from_str(
            r#"
            [[iso_listeners]]
            listen = "127.0.0.1:18583"
            profile = "ascii_1987"

            [[iso_listeners]]
            listen = "127.0.0.1:18584"
            profile = "cup_pos"
            plain_tcp_for_lab = true
            "#,
        )
        .expect("the documented keys parse");
        let [ascii, cup] = &gateway.iso_listeners[..] else {
            panic!("two listeners");
        };
        assert_eq!(
            (ascii.profile, ascii.plain_tcp_for_lab),
            (IsoProfile::Ascii1987, false)
        );
        assert_eq!(
            (cup.profile, cup.plain_tcp_for_lab),
            (IsoProfile::CupPos, true)
        );
        assert_eq!(cup.profile.profile().name, iso8583::Profile::CUP_POS.name);
        assert!(toml::from_str::<Gateway>("[[iso_listeners]]\nprofile = \"ascii1987\"").is_err());
        assert!(toml::from_str::<Gateway>("[[iso_listeners]]\ntls = true").is_err());
    }

    #[test]
    fn listeners_are_validated_naming_the_key() {
        let zero = IsoListenerConfig {
            max_in_flight: 0,
            ..IsoListenerConfig::default()
        };
        assert!(
            zero.validate(2)
                .unwrap_err()
                .to_string()
                .contains("gateway.iso_listeners[2].max_in_flight")
        );
        assert!(
            toml::from_str::<IsoListenerConfig>("handshake_timeout_ms = 500").is_err(),
            "the handshake timeout is the gateway's, for every listener"
        );
        assert!(IsoListenerConfig::default().validate(0).is_ok());
    }
}
