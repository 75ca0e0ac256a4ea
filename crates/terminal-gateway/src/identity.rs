//! Who is calling: the terminal and merchant named by the verified client
//! certificate of the TLS connection.

use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::edge::EdgeConnectInfo;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalIdentity {
    pub terminal_id: String,
    pub merchant_id: String,
    /// The certificate's serial number as encoded (big-endian bytes), what
    /// a CRL names it by.
    pub certificate_serial: Vec<u8>,
}

impl TerminalIdentity {
    /// The identity the edge read from the peer certificate, which rustls
    /// verified against the terminal CA, when the connection was
    /// established.
    pub fn of<T>(request: &Request<T>) -> Result<TerminalIdentity, Status> {
        request
            .extensions()
            .get::<EdgeConnectInfo>()
            .and_then(|info| info.identity.as_deref())
            .cloned()
            .ok_or_else(|| Status::unauthenticated("a terminal client certificate is required"))
    }

    pub fn from_der(der: &[u8]) -> Result<TerminalIdentity, Status> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|_| Status::unauthenticated("the client certificate cannot be parsed"))?;
        let subject = cert.subject();
        let terminal_id = first_text(subject.iter_common_name()).ok_or_else(|| {
            Status::permission_denied("the client certificate names no terminal (subject CN)")
        })?;
        let merchant_id = first_text(subject.iter_organizational_unit()).ok_or_else(|| {
            Status::permission_denied("the client certificate names no merchant (subject OU)")
        })?;
        Ok(TerminalIdentity {
            terminal_id,
            merchant_id,
            certificate_serial: cert.raw_serial().to_vec(),
        })
    }

    /// Refuses a request that speaks for another terminal.
    pub fn authorize(&self, requested_terminal_id: &str) -> Result<(), Status> {
        if requested_terminal_id == self.terminal_id {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "terminal_id {requested_terminal_id:?} does not match the client certificate's terminal {}",
                self.terminal_id
            )))
        }
    }
}

fn first_text<'a>(
    mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> Option<String> {
    values
        .next()
        .and_then(|attribute| attribute.as_str().ok())
        .map(str::to_owned)
}
