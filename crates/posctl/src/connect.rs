//! Building mutual-TLS gRPC channels to the terminal gateway from the dev
//! certificate layout: `<certs>/ca.pem` to trust the server and
//! `<certs>/terminals/<TID>.pem|.key` as the terminal's client identity.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use switch_core::TerminalId;
use switch_proto::v1::terminal_service_client::TerminalServiceClient;
use tonic::codegen::http::Uri;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How to reach the gateway, shared by every terminal identity.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Gateway URL, e.g. `https://localhost:50051`.
    pub gateway: String,
    /// Directory holding the dev PKI layout.
    pub certs_dir: PathBuf,
    /// TLS server name to verify; defaults to the host of `gateway`.
    pub tls_domain: Option<String>,
    /// Per-request deadline.
    pub timeout: Duration,
}

/// The operator's certificate of the service CA, presented to the
/// internal APIs' operator RPCs (ADR 27), and the service CA trusted for
/// their servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorTls {
    pub service_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl OperatorTls {
    /// The dev layout under `certs_dir`: `service-ca.pem`,
    /// `operators/<operator>.pem|.key`.
    pub fn in_dir(certs_dir: &Path, operator: &str) -> Self {
        let dir = certs_dir.join("operators");
        OperatorTls {
            service_ca: certs_dir.join("service-ca.pem"),
            cert: dir.join(format!("{operator}.pem")),
            key: dir.join(format!("{operator}.key")),
        }
    }
}

/// Connects to an internal API as the operator: mutual TLS for an
/// `https://` URL; an `http://` URL is plaintext, for a lab whose switch
/// runs with `internal_tls.plaintext_for_lab`.
pub async fn operator_channel(
    what: &str,
    url: &str,
    tls: &OperatorTls,
    timeout: Duration,
) -> Result<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid {what} URL {url:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout);
    if url.starts_with("https://") {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_pem(&tls.service_ca)?))
            .identity(Identity::from_pem(
                read_pem(&tls.cert)?,
                read_pem(&tls.key)?,
            ));
        endpoint = endpoint
            .tls_config(config)
            .context("invalid TLS configuration")?;
    } else if !url.starts_with("http://") {
        anyhow::bail!("{what} URL {url:?}: expected https:// (or http:// for a plaintext lab)");
    }
    endpoint
        .connect()
        .await
        .map_err(anyhow::Error::new)
        .with_context(|| format!("cannot connect to {what} at {url}"))
}

/// A connected client speaking for one terminal.
pub type TerminalClient = TerminalServiceClient<Channel>;

fn read_pem(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} (generate dev certificates with `posctl certs`)",
            path.display()
        )
    })
}

/// Paths of a terminal's certificate and key in the dev layout.
pub fn terminal_cert_paths(certs_dir: &Path, terminal_id: &str) -> (PathBuf, PathBuf) {
    let dir = certs_dir.join("terminals");
    (
        dir.join(format!("{terminal_id}.pem")),
        dir.join(format!("{terminal_id}.key")),
    )
}

/// Host part of a URL such as `https://localhost:50051/` (IPv6 brackets removed).
pub fn url_host(url: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    let host = uri.host()?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
}

/// Builds the endpoint for one terminal identity (TLS when the URL is https).
/// A [`TerminalId`] is 8 ASCII alphanumerics, so it is always a plain file
/// name in `terminals/`.
pub fn endpoint(options: &GatewayOptions, terminal_id: &TerminalId) -> Result<Endpoint> {
    let mut endpoint = Endpoint::from_shared(options.gateway.clone())
        .with_context(|| format!("invalid gateway URL {:?}", options.gateway))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(options.timeout)
        .tcp_nodelay(true);
    if options.gateway.starts_with("https://") {
        let ca = read_pem(&options.certs_dir.join("ca.pem"))?;
        let (cert_path, key_path) = terminal_cert_paths(&options.certs_dir, terminal_id.as_str());
        let cert = read_pem(&cert_path)?;
        let key = read_pem(&key_path)?;
        let domain = options
            .tls_domain
            .clone()
            .or_else(|| url_host(&options.gateway))
            .unwrap_or_else(|| "localhost".to_owned());
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(domain);
        endpoint = endpoint
            .tls_config(tls)
            .context("invalid TLS configuration")?;
    }
    Ok(endpoint)
}

/// Connects to the gateway as `terminal_id`.
pub async fn connect(options: &GatewayOptions, terminal_id: &TerminalId) -> Result<TerminalClient> {
    let channel = endpoint(options, terminal_id)?
        .connect()
        .await
        .map_err(anyhow::Error::new)
        .with_context(|| {
            format!(
                "cannot connect to gateway {} as {terminal_id}",
                options.gateway
            )
        })?;
    Ok(TerminalServiceClient::new(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_host_from_url() {
        assert_eq!(
            url_host("https://localhost:50051").as_deref(),
            Some("localhost")
        );
        assert_eq!(
            url_host("https://127.0.0.1:50051/").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(url_host("https://[::1]:50051").as_deref(), Some("::1"));
    }

    #[test]
    fn terminal_ids_are_plain_file_names() {
        assert!(TerminalId::parse("TERM0001").is_ok());
        assert!(TerminalId::parse("../etc/x").is_err());
        assert!(TerminalId::parse("TERM/001").is_err());
        assert!(TerminalId::parse("").is_err());
    }

    #[test]
    fn cert_paths_follow_dev_layout() {
        let (cert, key) = terminal_cert_paths(Path::new("/c"), "TERM0002");
        assert_eq!(cert, Path::new("/c/terminals/TERM0002.pem"));
        assert_eq!(key, Path::new("/c/terminals/TERM0002.key"));
    }
}
