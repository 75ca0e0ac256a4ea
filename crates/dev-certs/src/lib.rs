//! Development PKI for the switch: two throw-away certificate authorities.
//! The terminal CA signs the TLS server certificate the terminal edge
//! presents and the client certificates terminals authenticate with; the
//! service CA (ADR 27) signs one certificate per internal service and one
//! per operator, which the services present to each other (mutual TLS on
//! every internal hop).
//!
//! This crate owns how development certificates look. A terminal's identity
//! lives in its client certificate subject: the common name (CN) is the
//! 8-character terminal id and the organizational unit (OU) is the merchant
//! id. A service's or operator's identity is a URI SAN,
//! `spiffe://switch/service/<name>` or `spiffe://switch/operator/<name>`
//! ([`service_identity`], [`operator_identity`]). Nothing here is fit for
//! production: keys are generated fresh, kept in memory and written
//! unencrypted.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// Terminals provisioned by default: `(terminal id, merchant id)`.
pub const DEFAULT_TERMINALS: &[(&str, &str)] = &[
    ("TERM0001", "MERCHANT0000001"),
    ("TERM0002", "MERCHANT0000001"),
    ("TERM0003", "MERCHANT0000002"),
    ("TERM0004", "MERCHANT0000002"),
];

/// Names the development server certificate is valid for: loopback plus the
/// service names used by the compose setup.
pub const SERVER_HOSTS: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    "terminal-gateway",
    "authorization",
    "issuer-simulator",
];

/// Common name of the development CA.
pub const CA_COMMON_NAME: &str = "Switch Dev CA";

/// Common name of the development service CA: the trust anchor of the
/// internal hops only, so a terminal's certificate never passes for a
/// service's.
pub const SERVICE_CA_COMMON_NAME: &str = "Switch Dev Service CA";

/// The services that get a certificate of the service CA, by the name
/// each reports (`SERVICE_NAME` of its crate).
pub const SERVICES: &[&str] = &[
    "authorization",
    "terminal-gateway",
    "reversal-handler",
    "settlement-batcher",
    "notifier",
    "issuer-simulator",
];

/// The operator certificate `make certs` issues (for posctl and
/// `switchd admin`).
pub const DEFAULT_OPERATOR: &str = "operator";

/// The URI SAN naming service `name`.
pub fn service_identity(name: &str) -> String {
    format!("spiffe://switch/service/{name}")
}

/// The URI SAN naming operator `name`.
pub fn operator_identity(name: &str) -> String {
    format!("spiffe://switch/operator/{name}")
}

/// How long issued certificates stay valid (they are back-dated one day).
const VALIDITY: Duration = Duration::days(365);
/// Back-dating of `not_before`, so clock skew never makes a fresh cert invalid.
const BACKDATE: Duration = Duration::days(1);

/// A certificate and its private key, both PEM encoded.
#[derive(Clone)]
pub struct CertifiedKey {
    /// The certificate (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// The PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
    /// The serial number as encoded, what a CRL names the certificate by.
    pub serial: Vec<u8>,
}

impl std::fmt::Debug for CertifiedKey {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("serial", &self.serial)
            .finish()
    }
}

/// Why a certificate could not be generated or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or failed to sign.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Writing a file or creating a directory failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A terminal id that cannot be used as a file name in the dev layout
    /// (empty, or not ASCII alphanumeric / `-` / `_`).
    #[error("terminal id {0:?} cannot name a file: expected ASCII alphanumerics, '-' or '_'")]
    UnsafeFileName(String),
    /// A server certificate was requested for no host at all.
    #[error("a server certificate needs at least one host name")]
    NoHosts,
}

/// The development certificate authority: its certificate and signing key.
pub struct DevPki {
    ca_cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevPki {
    /// Never prints the CA key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPki")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .finish_non_exhaustive()
    }
}

impl DevPki {
    /// Generates a fresh self-signed CA named [`CA_COMMON_NAME`], valid for
    /// about one year and back-dated one day.
    pub fn generate() -> Result<DevPki, CertError> {
        Self::generate_named(CA_COMMON_NAME)
    }

    /// Generates a fresh self-signed CA named [`SERVICE_CA_COMMON_NAME`],
    /// for the internal hops.
    pub fn generate_service_ca() -> Result<DevPki, CertError> {
        Self::generate_named(SERVICE_CA_COMMON_NAME)
    }

    fn generate_named(common_name: &str) -> Result<DevPki, CertError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Payment Switch (development)");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params);

        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(DevPki {
            ca_cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM encoded: the trust anchor for both servers and
    /// terminals.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// Issues a TLS server certificate for `hosts`. Entries that parse as IP
    /// addresses become IP SANs, everything else DNS SANs. The CN is the
    /// first host. Extended key usage: serverAuth.
    pub fn server_cert(&self, hosts: &[&str]) -> Result<CertifiedKey, CertError> {
        let first = hosts.first().ok_or(CertError::NoHosts)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = hosts
            .iter()
            .map(|host| match host.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*host).try_into()?)),
            })
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, *first);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign_leaf(params)
    }

    /// Issues a terminal client certificate: CN = `terminal_id`,
    /// OU = `merchant_id`. Extended key usage: clientAuth.
    ///
    /// The ids are not validated here (the gateway decides what identity it
    /// accepts), so tests can also mint certificates with malformed ids.
    pub fn terminal_cert(
        &self,
        terminal_id: &str,
        merchant_id: &str,
    ) -> Result<CertifiedKey, CertError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, terminal_id);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, merchant_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign_leaf(params)
    }

    /// Issues the certificate of internal service `name`: valid as a
    /// server (DNS SANs `localhost` and `name`, IP SANs for loopback) and
    /// as a client, with its identity in the URI SAN
    /// [`service_identity`]. Extended key usage: serverAuth, clientAuth.
    pub fn service_cert(&self, name: &str) -> Result<CertifiedKey, CertError> {
        self.service_cert_for_hosts(name, &["localhost", name, "127.0.0.1", "::1"])
    }

    /// [`DevPki::service_cert`] valid as a server for `hosts` only (IP
    /// addresses become IP SANs, the rest DNS SANs): a test's certificate
    /// that names the right service but another host.
    pub fn service_cert_for_hosts(
        &self,
        name: &str,
        hosts: &[&str],
    ) -> Result<CertifiedKey, CertError> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(service_identity(name).try_into()?)];
        for host in hosts {
            params.subject_alt_names.push(match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*host).try_into()?),
            });
        }
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "service");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign_leaf(params)
    }

    /// Issues the client certificate of operator `name`, identity in the
    /// URI SAN [`operator_identity`]. Extended key usage: clientAuth.
    pub fn operator_cert(&self, name: &str) -> Result<CertifiedKey, CertError> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(operator_identity(name).try_into()?)];
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "operator");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign_leaf(params)
    }

    /// Writes the service layout of this (service) CA under `dir`:
    ///
    /// - `service-ca.pem`
    /// - `services/<name>.pem`, `services/<name>.key` for each of `services`
    /// - `operators/<name>.pem`, `operators/<name>.key` for each of `operators`
    ///
    /// beside the terminal layout of [`write_dev_layout`](Self::write_dev_layout).
    pub fn write_service_layout(
        &self,
        dir: &Path,
        services: &[&str],
        operators: &[&str],
    ) -> Result<(), CertError> {
        if let Some(bad) = services
            .iter()
            .chain(operators)
            .find(|name| !is_safe_file_stem(name))
        {
            return Err(CertError::UnsafeFileName((*bad).to_owned()));
        }
        let service_dir = dir.join("services");
        let operator_dir = dir.join("operators");
        for sub in [&service_dir, &operator_dir] {
            fs::create_dir_all(sub).map_err(|source| CertError::Io {
                path: sub.clone(),
                source,
            })?;
        }
        write_file(&dir.join("service-ca.pem"), &self.ca_cert_pem, false)?;
        for name in services {
            let cert = self.service_cert(name)?;
            write_pair(&service_dir, name, &cert)?;
        }
        for name in operators {
            let cert = self.operator_cert(name)?;
            write_pair(&operator_dir, name, &cert)?;
        }
        Ok(())
    }

    /// A CRL of the CA revoking `revoked` (none: an empty one, which still
    /// makes the revocation status of every certificate known), valid for
    /// a week from a day ago.
    pub fn revocation_list_pem(&self, revoked: &[&CertifiedKey]) -> Result<String, CertError> {
        let now = now();
        let params = CertificateRevocationListParams {
            this_update: now - BACKDATE,
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from(u64::try_from(revoked.len()).unwrap_or(0) + 1),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|cert| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&cert.serial),
                    revocation_time: now - BACKDATE,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Writes the development layout under `dir`:
    ///
    /// - `ca.pem`
    /// - `server.pem`, `server.key` (for [`SERVER_HOSTS`])
    /// - `terminals/<TID>.pem`, `terminals/<TID>.key` for each terminal
    ///
    /// Directories are created as needed; key files get mode 0600 on Unix.
    pub fn write_dev_layout(
        &self,
        dir: &Path,
        terminals: &[(&str, &str)],
    ) -> Result<(), CertError> {
        // Terminal ids become file names: refuse anything that could escape
        // `terminals/`, before writing anything.
        if let Some((bad, _)) = terminals.iter().find(|(tid, _)| !is_safe_file_stem(tid)) {
            return Err(CertError::UnsafeFileName((*bad).to_owned()));
        }
        let terminal_dir = dir.join("terminals");
        fs::create_dir_all(&terminal_dir).map_err(|source| CertError::Io {
            path: terminal_dir.clone(),
            source,
        })?;

        write_file(&dir.join("ca.pem"), &self.ca_cert_pem, false)?;

        let server = self.server_cert(SERVER_HOSTS)?;
        write_file(&dir.join("server.pem"), &server.cert_pem, false)?;
        write_file(&dir.join("server.key"), &server.key_pem, true)?;

        for (terminal_id, merchant_id) in terminals {
            let cert = self.terminal_cert(terminal_id, merchant_id)?;
            write_file(
                &terminal_dir.join(format!("{terminal_id}.pem")),
                &cert.cert_pem,
                false,
            )?;
            write_file(
                &terminal_dir.join(format!("{terminal_id}.key")),
                &cert.key_pem,
                true,
            )?;
        }
        Ok(())
    }

    /// Common part of every end-entity certificate: validity, key usage,
    /// authority key identifier, fresh key, signature by the CA.
    fn sign_leaf(&self, mut params: CertificateParams) -> Result<CertifiedKey, CertError> {
        set_validity(&mut params);
        params.is_ca = IsCa::ExplicitNoCa;
        // ECDSA keys (rcgen's default) only sign; no keyEncipherment.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        // Unique because the key is: 15 bytes of the fresh public key's
        // first coordinate, behind a 0x01 that keeps the integer positive
        // and its encoding free of padding.
        let public = key.public_key_raw();
        let mut serial = vec![0x01];
        serial.extend(public.iter().skip(1).take(15));
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }
}

/// Writes `<dir>/<name>.pem` and its key `<dir>/<name>.key`.
fn write_pair(dir: &Path, name: &str, cert: &CertifiedKey) -> Result<(), CertError> {
    write_file(&dir.join(format!("{name}.pem")), &cert.cert_pem, false)?;
    write_file(&dir.join(format!("{name}.key")), &cert.key_pem, true)
}

/// Whether `name` is a non-empty run of ASCII alphanumerics, `-` and `_`.
fn is_safe_file_stem(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Valid from one day ago for [`VALIDITY`].
fn set_validity(params: &mut CertificateParams) {
    let now = now();
    params.not_before = now - BACKDATE;
    params.not_after = now + VALIDITY;
}

// Whoever verifies a certificate checks it against their wall clock, not
// the switch's Clock port: so is it stamped.
#[allow(clippy::disallowed_methods)]
fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Writes `contents` to `path`, replacing it; `secret` files are created with
/// mode 0600 (on Unix) before any byte is written.
fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), CertError> {
    let io_err = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(io_err)?;
    // `mode` only applies when the file is created; tighten a pre-existing one too.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err)?;
    }
    file.write_all(contents.as_bytes()).map_err(io_err)?;
    file.flush().map_err(io_err)
}
