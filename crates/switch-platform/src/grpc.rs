//! What every gRPC server of the switch shares: rustls TLS (optionally
//! requiring client certificates), server reflection for `grpcurl` (both
//! the v1 and the v1alpha API, since grpcurl 1.8 speaks only the latter),
//! and the listener plumbing that lets tests bind port 0.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::ConfigError;

/// PEM files a server presents, and the CA its clients' certificates must
/// chain to when client authentication is required.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// When set, clients must present a certificate issued by this CA.
    pub client_ca_path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Reflection(#[from] tonic_reflection::server::Error),
}

impl TlsFiles {
    /// Checks that every named file exists, naming the key that points at
    /// a missing one.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let mut files = vec![("cert_path", &self.cert_path), ("key_path", &self.key_path)];
        if let Some(ca) = &self.client_ca_path {
            files.push(("client_ca_path", ca));
        }
        for (key, path) in files {
            if !path.is_file() {
                return Err(ConfigError::invalid(
                    format!("{section}.{key}"),
                    format!("no such file: {}", path.display()),
                ));
            }
        }
        Ok(())
    }

    pub fn server_config(&self) -> Result<ServerTlsConfig, GrpcError> {
        let identity = Identity::from_pem(read(&self.cert_path)?, read(&self.key_path)?);
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca_path {
            config = config
                .client_ca_root(Certificate::from_pem(read(ca)?))
                .client_auth_optional(false);
        }
        Ok(config)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, GrpcError> {
    std::fs::read(path).map_err(|source| GrpcError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Server reflection over every proto of the switch, in both API versions.
pub fn reflection_services() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    GrpcError,
> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(switch_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(switch_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
}

/// The incoming connection stream of a bound listener, with `TCP_NODELAY`
/// (small request/response messages must not wait for Nagle).
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}
