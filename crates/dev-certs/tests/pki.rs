//! Generates the development PKI and parses every certificate back to check
//! subjects, SANs, key usages and the files `write_dev_layout` produces.

use std::net::IpAddr;
use std::path::PathBuf;

use dev_certs::{CertError, DEFAULT_TERMINALS, DevPki, SERVER_HOSTS};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;
use x509_parser::prelude::X509Certificate;

/// Parses a PEM certificate and hands it to `check`.
fn with_cert<R>(pem: &str, check: impl FnOnce(&X509Certificate<'_>) -> R) -> R {
    let (rest, pem) = parse_x509_pem(pem.as_bytes()).expect("PEM");
    assert!(rest.iter().all(u8::is_ascii_whitespace), "trailing data");
    assert_eq!(pem.label, "CERTIFICATE");
    let cert = pem.parse_x509().expect("X.509");
    check(&cert)
}

fn first_attr(iter: impl Iterator<Item = String>) -> Option<String> {
    iter.into_iter().next()
}

fn common_name(cert: &X509Certificate<'_>) -> Option<String> {
    first_attr(
        cert.subject()
            .iter_common_name()
            .map(|a| a.as_str().expect("utf8").to_owned()),
    )
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dev-certs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn ca_is_self_signed_and_current() {
    let pki = DevPki::generate().expect("generate");
    assert!(pki.ca_cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    with_cert(pki.ca_cert_pem(), |ca| {
        assert!(ca.is_ca());
        assert!(
            ca.validity().is_valid(),
            "CA must be valid now (back-dated)"
        );
        assert_eq!(common_name(ca).as_deref(), Some("Switch Dev CA"));
        assert_eq!(ca.subject(), ca.issuer());
        let validity = ca.validity();
        let span = validity.not_after.timestamp() - validity.not_before.timestamp();
        // ~ one year plus the day of back-dating.
        assert!((365 * 86_400..=367 * 86_400).contains(&span), "{span}");
    });
}

#[test]
fn server_cert_has_sans_and_server_auth() {
    let pki = DevPki::generate().expect("generate");
    let issued = pki.server_cert(SERVER_HOSTS).expect("server cert");
    assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let ca_subject = with_cert(pki.ca_cert_pem(), |ca| ca.subject().to_string());
    with_cert(&issued.cert_pem, |cert| {
        assert!(!cert.is_ca());
        assert!(cert.validity().is_valid());
        assert_eq!(cert.issuer().to_string(), ca_subject);
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("eku present");
        assert!(eku.value.server_auth);
        assert!(!eku.value.client_auth);

        let san = cert
            .subject_alternative_name()
            .expect("san")
            .expect("san present");
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                GeneralName::IPAddress(bytes) => ips.push(match bytes.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("v4")),
                    16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).expect("v6")),
                    n => panic!("bad IP SAN length {n}"),
                }),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        assert_eq!(
            dns,
            [
                "localhost",
                "terminal-gateway",
                "authorization",
                "issuer-simulator"
            ]
        );
        assert_eq!(
            ips,
            [
                "127.0.0.1".parse::<IpAddr>().expect("ip"),
                "::1".parse().expect("ip")
            ]
        );
    });
}

#[test]
fn server_cert_needs_a_host() {
    let pki = DevPki::generate().expect("generate");
    assert!(matches!(pki.server_cert(&[]), Err(CertError::NoHosts)));
}

#[test]
fn terminal_cert_carries_identity_and_client_auth() {
    let pki = DevPki::generate().expect("generate");
    let issued = pki
        .terminal_cert("TERM0003", "MERCHANT0000002")
        .expect("terminal cert");
    assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    // Debug never shows the key.
    assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
    with_cert(&issued.cert_pem, |cert| {
        assert!(cert.validity().is_valid());
        assert_eq!(common_name(cert).as_deref(), Some("TERM0003"));
        let ou = first_attr(
            cert.subject()
                .iter_organizational_unit()
                .map(|a| a.as_str().expect("utf8").to_owned()),
        );
        assert_eq!(ou.as_deref(), Some("MERCHANT0000002"));
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("eku present");
        assert!(eku.value.client_auth);
        assert!(!eku.value.server_auth);
        assert_eq!(common_name(cert).as_deref(), Some("TERM0003"));
        let issuer_cn = first_attr(
            cert.issuer()
                .iter_common_name()
                .map(|a| a.as_str().expect("utf8").to_owned()),
        );
        assert_eq!(issuer_cn.as_deref(), Some("Switch Dev CA"));
    });
}

#[test]
fn each_generation_is_a_new_ca() {
    let a = DevPki::generate().expect("generate");
    let b = DevPki::generate().expect("generate");
    assert_ne!(a.ca_cert_pem(), b.ca_cert_pem());
}

#[test]
fn write_dev_layout_writes_every_file() {
    let dir = temp_dir("layout");
    let pki = DevPki::generate().expect("generate");
    pki.write_dev_layout(&dir, DEFAULT_TERMINALS)
        .expect("write layout");

    let read = |rel: &str| std::fs::read_to_string(dir.join(rel)).expect(rel);
    assert_eq!(read("ca.pem"), pki.ca_cert_pem());
    with_cert(&read("server.pem"), |cert| {
        assert_eq!(common_name(cert).as_deref(), Some("localhost"));
    });
    assert!(read("server.key").starts_with("-----BEGIN PRIVATE KEY-----"));
    for (tid, _) in DEFAULT_TERMINALS {
        with_cert(&read(&format!("terminals/{tid}.pem")), |cert| {
            assert_eq!(common_name(cert).as_deref(), Some(*tid));
        });
        assert!(read(&format!("terminals/{tid}.key")).starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |rel: &str| {
            std::fs::metadata(dir.join(rel))
                .expect(rel)
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("server.key"), 0o600);
        assert_eq!(mode("terminals/TERM0001.key"), 0o600);
    }

    // Writing again over an existing layout works (files are replaced).
    pki.write_dev_layout(&dir, DEFAULT_TERMINALS)
        .expect("rewrite layout");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn write_dev_layout_refuses_path_like_terminal_ids() {
    let dir = temp_dir("unsafe");
    let pki = DevPki::generate().expect("generate");
    let err = pki
        .write_dev_layout(&dir, &[("../evil", "MERCHANT0000001")])
        .expect_err("must refuse");
    assert!(matches!(err, CertError::UnsafeFileName(_)));
    assert!(!dir.join("ca.pem").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .expect("san")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn service_and_operator_certificates_carry_their_identity() {
    let terminal_ca = DevPki::generate().expect("terminal CA");
    let service_ca = DevPki::generate_service_ca().expect("service CA");
    assert_ne!(terminal_ca.ca_cert_pem(), service_ca.ca_cert_pem());
    with_cert(service_ca.ca_cert_pem(), |ca| {
        assert_eq!(
            common_name(ca).as_deref(),
            Some(dev_certs::SERVICE_CA_COMMON_NAME)
        );
    });
    let notifier = service_ca.service_cert("notifier").expect("service cert");
    with_cert(&notifier.cert_pem, |cert| {
        assert_eq!(uri_sans(cert), ["spiffe://switch/service/notifier"]);
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("eku present");
        assert!(eku.value.server_auth && eku.value.client_auth);
        assert!(!cert.is_ca());
    });
    let operator = service_ca.operator_cert("alice").expect("operator cert");
    with_cert(&operator.cert_pem, |cert| {
        assert_eq!(uri_sans(cert), ["spiffe://switch/operator/alice"]);
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("eku present");
        assert!(eku.value.client_auth && !eku.value.server_auth);
    });
}

#[test]
fn the_service_layout_writes_every_service_and_the_operator() {
    let dir = temp_dir("services");
    let pki = DevPki::generate_service_ca().expect("service CA");
    pki.write_service_layout(&dir, dev_certs::SERVICES, &[dev_certs::DEFAULT_OPERATOR])
        .expect("written");
    assert!(dir.join("service-ca.pem").is_file());
    for service in dev_certs::SERVICES {
        assert!(
            dir.join(format!("services/{service}.pem")).is_file(),
            "{service}"
        );
        assert!(
            dir.join(format!("services/{service}.key")).is_file(),
            "{service}"
        );
    }
    assert!(dir.join("operators/operator.pem").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("operators/operator.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let error = pki
        .write_service_layout(&dir, &["../escape"], &[])
        .expect_err("a name that is not a file stem is refused");
    assert!(matches!(error, CertError::UnsafeFileName(_)), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}
