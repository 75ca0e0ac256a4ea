//! A terminal speaking ISO 8583 over TLS with its client certificate (or
//! over plain TCP for a lab listener): frames by the profile's length
//! header, answers read as they come.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dev_certs::CertifiedKey;
use iso8583::{Envelope, Header, Message, Profile, Tpdu};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, rustls};

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How long a test waits for an answer before failing.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

pub struct IsoTerminal {
    profile: Profile,
    stream: Box<dyn Stream>,
}

/// The envelope a UnionPay terminal sends (TPDU to NII 0003, a typical
/// header); empty for profiles without one.
pub fn envelope_for(profile: &Profile) -> Envelope {
    Envelope {
        tpdu: profile.framing.tpdu.then_some(Tpdu {
            destination: [0x00, 0x03],
            source: [0x00, 0x00],
        }),
        header: profile
            .framing
            .header
            .then_some(Header([0x60, 0x31, 0x00, 0x31, 0x07, 0x30])),
    }
}

/// Connects until the listener accepts (the gateway binds it as it
/// starts), for at most ten seconds.
async fn tcp(address: SocketAddr) -> anyhow::Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(error) if Instant::now() > deadline => {
                return Err(error).context(format!("ISO listener {address} never accepted"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

impl IsoTerminal {
    /// Over TLS with `cert` (or none), trusting `ca_pem` for the server.
    pub async fn connect_tls(
        address: SocketAddr,
        profile: Profile,
        cert: Option<&CertifiedKey>,
        ca_pem: &str,
    ) -> anyhow::Result<IsoTerminal> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(ca?)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match cert {
            Some(cert) => builder.with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()?,
                PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())?,
            )?,
            None => builder.with_no_client_auth(),
        };
        let tcp = tcp(address).await?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
            .await?;
        Ok(IsoTerminal {
            profile,
            stream: Box::new(tls),
        })
    }

    /// Over plain TCP, to a lab listener.
    pub async fn connect_plain(address: SocketAddr, profile: Profile) -> anyhow::Result<Self> {
        Ok(IsoTerminal {
            profile,
            stream: Box::new(tcp(address).await?),
        })
    }

    pub async fn send(&mut self, message: &Message<'_>) -> anyhow::Result<()> {
        let frame = self
            .profile
            .pack_frame(&envelope_for(&self.profile), message)?;
        self.send_raw(&frame).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The next answer, whole; an error if the gateway closed the
    /// connection instead.
    pub async fn receive(&mut self) -> anyhow::Result<Message<'static>> {
        let (_, message) = self.receive_frame().await?;
        Ok(message)
    }

    /// The next answer with its envelope.
    pub async fn receive_frame(&mut self) -> anyhow::Result<(Envelope, Message<'static>)> {
        let header = self.profile.framing.length.size();
        let mut frame = vec![0u8; header];
        tokio::time::timeout(ANSWER_TIMEOUT, self.stream.read_exact(&mut frame))
            .await
            .context("no answer in time")??;
        let len = self
            .profile
            .frame_len(&frame)?
            .context("a whole length header")?;
        frame.resize(len, 0);
        tokio::time::timeout(ANSWER_TIMEOUT, self.stream.read_exact(&mut frame[header..]))
            .await
            .context("no whole answer in time")??;
        let unpacked = self.profile.unpack_frame(&frame)?;
        Ok((unpacked.envelope, unpacked.message.into_owned()))
    }

    /// Sends `message` and reads the next answer.
    pub async fn call(&mut self, message: &Message<'_>) -> anyhow::Result<Message<'static>> {
        self.send(message).await?;
        self.receive().await
    }

    /// Whether the gateway closed the connection (end of stream) rather
    /// than answering.
    pub async fn closed_by_gateway(&mut self) -> anyhow::Result<bool> {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(ANSWER_TIMEOUT, self.stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Ok(true),
            Ok(Ok(_)) => Ok(false),
            Err(_) => bail!("the gateway neither answered nor closed"),
        }
    }
}

impl IsoTerminal {
    /// Everything the gateway sends until it closes the connection (a TLS
    /// alert, say); an error if it keeps it open.
    pub async fn read_until_closed(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        match tokio::time::timeout(ANSWER_TIMEOUT, self.stream.read_to_end(&mut bytes)).await {
            Ok(_) => Ok(bytes),
            Err(_) => bail!("the gateway kept the connection open"),
        }
    }
}

/// Field 39 of an answer.
pub fn code(answer: &Message<'_>) -> String {
    answer.text(39).unwrap_or("<none>").to_owned()
}
