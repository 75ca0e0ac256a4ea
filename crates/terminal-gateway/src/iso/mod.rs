//! ISO 8583 listeners: the edge for terminals that do not speak gRPC.
//!
//! Each configured listener (`gateway.iso_listeners`) has its own address
//! and profile (`ascii_1987` or `cup_pos`, from the `iso8583` crate) and
//! serves TLS with a client certificate from the terminal CA, the same
//! identity as the gRPC edge (CN = terminal id, OU = merchant id). Plain
//! TCP is served only when a listener says `plain_tcp_for_lab = true`:
//! there is no certificate then, so field 41 names the terminal and field
//! 42 the merchant, which is only fit for a lab.
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
//! `CloseBatch` to the settlement batcher. 0800 (sign-on, echo,
//! sign-off) is answered here. Field 39 comes from the authorization's
//! record, or, when the edge refuses, from `switch_core::iso_response`.
//! A message that cannot be read gets "30" in its MTI's response class when
//! the MTI and fields 11 and 41 could be read; otherwise the connection is
//! closed and the reason logged, never the bytes.

mod connection;
mod handler;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switch_platform::config::ConfigError;
use switch_platform::grpc::TlsFiles;
use switch_platform::service::ServeError;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::service::TerminalApi;

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
    /// How long a connection may take to finish its TLS handshake; a
    /// connection that never starts one would otherwise hold a task.
    pub handshake_timeout_ms: u64,
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
            handshake_timeout_ms: 10_000,
            max_in_flight: 16,
        }
    }
}

impl IsoListenerConfig {
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let key = |name: &str| format!("gateway.iso_listeners[{index}].{name}");
        if self.handshake_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                key("handshake_timeout_ms"),
                "must be at least 1",
            ));
        }
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
    pub profile: iso8583::Profile,
    /// `None`: plain TCP (lab).
    pub tls: Option<TlsAcceptor>,
    pub handshake_timeout: Duration,
    pub max_in_flight: usize,
    pub api: Arc<TerminalApi>,
    pub clock: switch_core::SharedClock,
    pub metrics: metrics::IsoMetrics,
}

/// Binds every configured listener and serves it until `stop`; the
/// returned tasks end once their connections have answered what they were
/// handling.
pub(crate) async fn spawn(
    listeners: &[IsoListenerConfig],
    tls: &TlsFiles,
    api: Arc<TerminalApi>,
    stop: CancellationToken,
) -> Result<Vec<JoinHandle<()>>, ServeError> {
    let mut tasks = Vec::new();
    let metrics = metrics::IsoMetrics::new();
    for config in listeners {
        let acceptor = match config.plain_tcp_for_lab {
            true => {
                tracing::warn!(address = %config.listen, "ISO 8583 listener serves plain TCP: field 41 is trusted as the terminal's identity; lab use only.");
                None
            }
            false => Some(connection::acceptor(tls)?),
        };
        let socket = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind {
                address: config.listen,
                source,
            })?;
        let listener = Arc::new(Listener {
            profile: config.profile.profile(),
            tls: acceptor,
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
            max_in_flight: config.max_in_flight,
            api: api.clone(),
            clock: switch_core::SystemClock::shared(),
            metrics: metrics.clone(),
        });
        tracing::info!(address = %config.listen, profile = listener.profile.name, "ISO 8583 listener started.");
        tasks.push(tokio::spawn(connection::accept_until_stopped(
            socket,
            listener,
            stop.clone(),
        )));
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
        let zero = IsoListenerConfig {
            handshake_timeout_ms: 0,
            ..IsoListenerConfig::default()
        };
        assert!(
            zero.validate(0)
                .unwrap_err()
                .to_string()
                .contains("handshake_timeout_ms")
        );
        assert!(IsoListenerConfig::default().validate(0).is_ok());
    }
}
