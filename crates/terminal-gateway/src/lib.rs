//! The terminal-facing edge of the switch.
//!
//! Terminals speak gRPC over mutual TLS. The client certificate *is* the
//! terminal's identity: its subject CN is the terminal id and its OU the
//! merchant id, both issued by the acquirer. A request that names another
//! terminal is refused with `PERMISSION_DENIED`; a connection without a
//! certificate from the terminal CA never completes its handshake. The
//! merchant id sent to authorization comes from the certificate, never from
//! the request, so a terminal cannot charge on another merchant's behalf.
//!
//! Batch close and upload go to the settlement batcher with the same
//! identity rule.
//!
//! The gateway keeps no state: duplicate detection is authoritative in the
//! authorization journal (see `docs/adr/0003-duplicate-detection.md`), so
//! gateway replicas can be added and removed freely.

mod identity;
mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switch_platform::config::ConfigError;
use switch_platform::grpc::TlsFiles;
use switch_proto::v1::terminal_service_server::TerminalServiceServer;
use tokio::net::TcpListener;

pub use identity::TerminalIdentity;

pub const SERVICE_NAME: &str = "terminal-gateway";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Server certificate and the terminal CA; client certificates are
    /// always required.
    pub tls: TlsFiles,
    pub authorization_endpoint: String,
    /// URL of the settlement batcher's `SettlementService` (batch close and
    /// upload).
    pub settlement_endpoint: String,
    /// Upper bound on one call to authorization; keep it above the issuer
    /// timeout so the terminal hears the switch's answer, not a deadline.
    pub authorization_timeout_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            tls: TlsFiles {
                cert_path: PathBuf::from(".run/certs/server.pem"),
                key_path: PathBuf::from(".run/certs/server.key"),
                client_ca_path: Some(PathBuf::from(".run/certs/ca.pem")),
            },
            authorization_endpoint: "http://127.0.0.1:50052".into(),
            settlement_endpoint: "http://127.0.0.1:50054".into(),
            authorization_timeout_ms: 5_000,
        }
    }
}

impl GatewayConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls.client_ca_path.is_none() {
            return Err(ConfigError::invalid(
                "gateway.tls.client_ca_path",
                "terminals are identified by client certificates; the CA is required",
            ));
        }
        self.tls.validate("gateway.tls")?;
        if tonic::transport::Endpoint::from_shared(self.authorization_endpoint.clone()).is_err() {
            return Err(ConfigError::invalid(
                "gateway.authorization_endpoint",
                "not a valid URL",
            ));
        }
        if tonic::transport::Endpoint::from_shared(self.settlement_endpoint.clone()).is_err() {
            return Err(ConfigError::invalid(
                "gateway.settlement_endpoint",
                "not a valid URL",
            ));
        }
        if self.authorization_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "gateway.authorization_timeout_ms",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("grpc: {0}")]
    Grpc(#[from] switch_platform::grpc::GrpcError),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves terminals on `listener` until `shutdown` resolves.
pub async fn serve(
    config: &GatewayConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let api = service::TerminalApi::connect(
        &config.authorization_endpoint,
        &config.settlement_endpoint,
        Duration::from_millis(config.authorization_timeout_ms),
    )?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<TerminalServiceServer<service::TerminalApi>>()
        .await;
    let (reflection_v1, reflection_v1alpha) = switch_platform::grpc::reflection_services()?;
    tracing::info!(listen = ?listener.local_addr().ok(), "Terminal gateway listening (mutual TLS).");
    tonic::transport::Server::builder()
        .tls_config(config.tls.server_config()?)?
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(TerminalServiceServer::new(api))
        .serve_with_incoming_shutdown(switch_platform::grpc::incoming(listener), shutdown)
        .await?;
    tracing::info!("Terminal gateway stopped.");
    Ok(())
}
