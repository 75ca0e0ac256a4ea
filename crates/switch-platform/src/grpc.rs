//! What every gRPC server of the switch shares: rustls TLS (optionally
//! requiring client certificates), server reflection for `grpcurl` (both
//! the v1 and the v1alpha API, since grpcurl 1.8 speaks only the latter;
//! over every proto, or cut down to the services an edge offers),
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
    #[error("the switch's descriptors do not decode: {0}")]
    Descriptors(String),
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

/// The switch's descriptors cut down to what `services` (full names,
/// `switch.v1.TerminalService`) need: their files and the files those
/// import, with every other service removed, so reflection on an edge
/// describes what its callers may call and not the internal APIs.
pub fn descriptors_for(services: &[&str]) -> Result<prost_types::FileDescriptorSet, GrpcError> {
    use prost::Message as _;
    use std::collections::{BTreeSet, HashMap};
    let set = prost_types::FileDescriptorSet::decode(switch_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| GrpcError::Descriptors(e.to_string()))?;
    let full_name = |file: &prost_types::FileDescriptorProto, service: &str| {
        format!("{}.{service}", file.package())
    };
    let by_name: HashMap<&str, &prost_types::FileDescriptorProto> =
        set.file.iter().map(|file| (file.name(), file)).collect();
    let mut needed = BTreeSet::new();
    let mut todo: Vec<&str> = set
        .file
        .iter()
        .filter(|file| {
            file.service
                .iter()
                .any(|service| services.contains(&full_name(file, service.name()).as_str()))
        })
        .map(|file| file.name())
        .collect();
    while let Some(name) = todo.pop() {
        if needed.insert(name.to_owned())
            && let Some(file) = by_name.get(name)
        {
            todo.extend(file.dependency.iter().map(String::as_str));
        }
    }
    let file = set
        .file
        .iter()
        .filter(|file| needed.contains(file.name()))
        .map(|file| {
            let mut file = file.clone();
            let package = file.package().to_owned();
            file.service.retain(|service| {
                services.contains(&format!("{package}.{}", service.name()).as_str())
            });
            file
        })
        .collect();
    Ok(prost_types::FileDescriptorSet { file })
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
    reflection_services_for(None)
}

/// Server reflection in both API versions over the descriptors `only`
/// needs ([`descriptors_for`]), or over every proto of the switch; health
/// is always described.
pub fn reflection_services_for(
    only: Option<&[&str]>,
) -> Result<
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
    let builder = || -> Result<tonic_reflection::server::Builder<'static>, GrpcError> {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        Ok(match only {
            None => builder.register_encoded_file_descriptor_set(switch_proto::FILE_DESCRIPTOR_SET),
            Some(services) => builder.register_file_descriptor_set(descriptors_for(services)?),
        })
    };
    let v1 = builder()?.build_v1()?;
    let v1alpha = builder()?.build_v1alpha()?;
    Ok((v1, v1alpha))
}

/// The incoming connection stream of a bound listener, with `TCP_NODELAY`
/// (small request/response messages must not wait for Nagle).
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_for_a_service_keep_its_imports_and_no_other_service() {
        let set = descriptors_for(&["switch.v1.TerminalService"]).expect("descriptors");
        let services: Vec<String> = set
            .file
            .iter()
            .flat_map(|file| {
                file.service
                    .iter()
                    .map(move |service| format!("{}.{}", file.package(), service.name()))
            })
            .collect();
        assert_eq!(services, ["switch.v1.TerminalService"]);
        let names: Vec<&str> = set.file.iter().map(|file| file.name()).collect();
        for file in &set.file {
            for dependency in &file.dependency {
                assert!(
                    names.contains(&dependency.as_str()),
                    "{} imports {dependency}, which is missing",
                    file.name()
                );
            }
        }
        assert!(
            !names.iter().any(|name| name.ends_with("issuer.proto")),
            "the issuer's API is not described: {names:?}"
        );
    }
}
