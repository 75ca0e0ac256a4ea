//! `posctl iso`: a terminal speaking ISO 8583 to one of the gateway's ISO
//! listeners, over TLS with the terminal's dev certificate (or plain TCP to
//! a lab listener). `echo` sends an 0800, `sale` an 0200 followed, like a
//! terminal that printed the receipt, by its 0220 completion advice
//! (unless `--no-ack`), `reverse` an 0400 (or its repeat 0401).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use iso8583::{Envelope, Header, Message, Mti, Profile, Tpdu};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use switch_core::{Clock, Currency, ResponseCode, Stan, SystemClock, TerminalId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, rustls};

use crate::connect::terminal_cert_paths;

#[derive(Debug, Args)]
pub struct IsoArgs {
    /// Address of the gateway's ISO 8583 listener.
    #[arg(long, env = "POSCTL_ISO", default_value = "127.0.0.1:8583")]
    address: SocketAddr,
    /// The listener's profile.
    #[arg(long, value_enum, default_value = "ascii1987")]
    profile: IsoProfileArg,
    /// Plain TCP, for a listener configured with `plain_tcp_for_lab`.
    #[arg(long)]
    plain: bool,
    /// TLS server name to verify.
    #[arg(long, default_value = "localhost")]
    tls_domain: String,
    /// Merchant id for field 42 (default: the dev terminal's merchant).
    #[arg(long)]
    merchant: Option<String>,
    #[command(subcommand)]
    command: IsoCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum IsoProfileArg {
    Ascii1987,
    CupPos,
}

#[derive(Debug, Subcommand)]
enum IsoCommand {
    /// 0800 echo test.
    Echo,
    /// 0200 sale, then 0220 completion advice unless --no-ack.
    Sale(IsoSaleArgs),
    /// 0400 reversal of an earlier sale of this terminal (today's).
    Reverse {
        #[arg(long, value_parser = Stan::parse)]
        stan: Stan,
        /// Send the repeat (0401), as a terminal that got no answer does.
        #[arg(long)]
        repeat: bool,
    },
    /// 0320 batch upload: one message per sale the terminal holds, then
    /// the upload's end with their count (what follows an out-of-balance
    /// close).
    Upload {
        /// The batch number, six digits.
        #[arg(long)]
        batch: String,
        /// A sale the terminal holds, STAN:AMOUNT (minor units, today's);
        /// repeat for each.
        #[arg(long = "sale", value_parser = parse_held_sale)]
        sales: Vec<(Stan, u64)>,
        #[arg(long, default_value = "EUR", value_parser = Currency::parse)]
        currency: Currency,
    },
}

fn parse_held_sale(value: &str) -> Result<(Stan, u64), String> {
    let (stan, amount) = value
        .split_once(':')
        .ok_or_else(|| format!("{value:?} is not STAN:AMOUNT"))?;
    let stan = Stan::parse(stan).map_err(|e| e.to_string())?;
    let amount = amount
        .parse()
        .map_err(|_| format!("{amount:?} is not an amount in minor units"))?;
    Ok((stan, amount))
}

#[derive(Debug, Args)]
struct IsoSaleArgs {
    /// Amount in integer minor units.
    #[arg(long)]
    amount: u64,
    #[arg(long, default_value = "EUR", value_parser = Currency::parse)]
    currency: Currency,
    /// Card number; only ever printed masked.
    #[arg(long)]
    pan: String,
    /// Card expiry, YYMM.
    #[arg(long, default_value = "2812")]
    expiry: String,
    /// Systems trace audit number (default: random).
    #[arg(long, value_parser = Stan::parse)]
    stan: Option<Stan>,
    /// Do not send the completion advice: a terminal that never showed
    /// the result (S1).
    #[arg(long)]
    no_ack: bool,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct Connection {
    profile: Profile,
    stream: Box<dyn Stream>,
    timeout: Duration,
}

impl Connection {
    pub async fn call(&mut self, message: &Message<'_>) -> Result<Message<'static>> {
        let envelope = Envelope {
            tpdu: self.profile.framing.tpdu.then_some(Tpdu {
                destination: [0x00, 0x03],
                source: [0x00, 0x00],
            }),
            header: self
                .profile
                .framing
                .header
                .then_some(Header([0x60, 0x31, 0x00, 0x31, 0x07, 0x30])),
        };
        let frame = self.profile.pack_frame(&envelope, message)?;
        self.stream.write_all(&frame).await?;
        self.stream.flush().await?;
        let header = self.profile.framing.length.size();
        let mut answer = vec![0u8; header];
        tokio::time::timeout(self.timeout, self.stream.read_exact(&mut answer))
            .await
            .context("no answer in time")?
            .context("the gateway closed the connection")?;
        let len = self
            .profile
            .frame_len(&answer)?
            .context("a length header")?;
        answer.resize(len, 0);
        tokio::time::timeout(self.timeout, self.stream.read_exact(&mut answer[header..]))
            .await
            .context("no whole answer in time")??;
        Ok(self.profile.unpack_frame(&answer)?.message.into_owned())
    }
}

/// Where and how to reach an ISO 8583 listener; `posctl iso` and
/// `posctl bench --iso` share it.
#[derive(Debug, Clone)]
pub struct IsoTarget {
    pub address: SocketAddr,
    pub profile: Profile,
    pub plain: bool,
    pub tls_domain: String,
    pub certs_dir: std::path::PathBuf,
    pub timeout: Duration,
}

impl IsoProfileArg {
    pub fn profile(self) -> Profile {
        match self {
            IsoProfileArg::Ascii1987 => Profile::ASCII_1987,
            IsoProfileArg::CupPos => Profile::CUP_POS,
        }
    }
}

async fn connect(
    args: &IsoArgs,
    certs_dir: &Path,
    terminal: &TerminalId,
    timeout: Duration,
) -> Result<Connection> {
    let target = IsoTarget {
        address: args.address,
        profile: args.profile.profile(),
        plain: args.plain,
        tls_domain: args.tls_domain.clone(),
        certs_dir: certs_dir.to_owned(),
        timeout,
    };
    open(&target, terminal).await
}

/// Opens one connection speaking for `terminal` (its dev certificate).
pub async fn open(target: &IsoTarget, terminal: &TerminalId) -> Result<Connection> {
    let IsoTarget {
        address,
        profile,
        plain,
        ref tls_domain,
        ref certs_dir,
        timeout,
    } = *target;
    let tcp = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot reach the ISO listener at {address}"))?;
    tcp.set_nodelay(true)?;
    if plain {
        return Ok(Connection {
            profile,
            stream: Box::new(tcp),
            timeout,
        });
    }
    let read = |path: &Path| {
        std::fs::read(path).with_context(|| {
            format!(
                "cannot read {} (generate dev certificates with `posctl certs`)",
                path.display()
            )
        })
    };
    let (cert_path, key_path) = terminal_cert_paths(certs_dir, terminal.as_str());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read(&certs_dir.join("ca.pem"))?) {
        roots.add(ca?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            CertificateDer::pem_slice_iter(&read(&cert_path)?).collect::<Result<Vec<_>, _>>()?,
            PrivateKeyDer::from_pem_slice(&read(&key_path)?)?,
        )?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(tls_domain.clone())?, tcp)
        .await
        .context("TLS handshake with the ISO listener")?;
    Ok(Connection {
        profile,
        stream: Box::new(tls),
        timeout,
    })
}

/// The answer in one line (or JSON): MTI, STAN, code and its meaning, RRN
/// and approval code when present.
fn show(answer: &Message<'_>, json: bool) -> Result<()> {
    let code = answer.text(39).unwrap_or("");
    let description = ResponseCode::parse(code)
        .map(|c| c.description())
        .unwrap_or("no response code");
    if json {
        println!(
            "{}",
            json!({
                "mti": answer.mti().to_string(),
                "stan": answer.stan(),
                "terminal_id": answer.terminal_id(),
                "response_code": code,
                "description": description,
                "rrn": answer.text(37),
                "approval_code": answer.text(38),
            })
        );
    } else {
        let mut line = format!(
            "{} stan={} {code} {description}",
            answer.mti(),
            answer.stan().unwrap_or("-")
        );
        if let Some(rrn) = answer.text(37) {
            line.push_str(&format!(" rrn={rrn}"));
        }
        if let Some(approval) = answer.text(38) {
            line.push_str(&format!(" approval={approval}"));
        }
        println!("{line}");
    }
    Ok(())
}

fn mmdd() -> String {
    let today = SystemClock.now().date();
    format!("{:02}{:02}", u8::from(today.month()), today.day())
}

/// A sale as `posctl iso sale` and `posctl bench --iso` send it: one place
/// decides what an ISO sale from posctl carries.
pub struct IsoSale<'a> {
    pub pan: &'a str,
    pub amount: u64,
    pub currency: Currency,
    pub expiry: &'a str,
    pub stan: &'a str,
    /// Field 13, the terminal's local date.
    pub mmdd: &'a str,
    pub terminal: &'a str,
    pub merchant: &'a str,
}

impl IsoSale<'_> {
    /// The 0200.
    pub fn request(&self) -> Message<'static> {
        let mut request = Message::new(Mti::FINANCIAL_REQUEST);
        request
            .set(2, self.pan.to_owned())
            .set(3, "000000")
            .set(4, format!("{:012}", self.amount))
            .set(11, self.stan.to_owned())
            .set(13, self.mmdd.to_owned())
            .set(14, self.expiry.to_owned())
            .set(22, "051")
            .set(41, self.terminal.to_owned())
            .set(42, self.merchant.to_owned())
            .set(49, format!("{:03}", self.currency.numeric()));
        request
    }

    /// The 0220 completion advice that follows its approval.
    pub fn advice(&self) -> Message<'static> {
        let mut advice = Message::new(Mti::FINANCIAL_ADVICE);
        advice
            .set(3, "000000")
            .set(4, format!("{:012}", self.amount))
            .set(11, self.stan.to_owned())
            .set(13, self.mmdd.to_owned())
            .set(41, self.terminal.to_owned())
            .set(42, self.merchant.to_owned())
            .set(49, format!("{:03}", self.currency.numeric()));
        advice
    }
}

/// The merchant id of a dev terminal (field 42).
pub fn dev_merchant(terminal: &TerminalId) -> String {
    dev_certs::DEFAULT_TERMINALS
        .iter()
        .find(|(tid, _)| *tid == terminal.as_str())
        .map_or("MERCHANT0000009", |(_, mid)| *mid)
        .to_owned()
}

pub async fn run_iso(
    args: IsoArgs,
    certs_dir: &Path,
    terminal: &TerminalId,
    timeout: Duration,
    json: bool,
) -> Result<()> {
    let merchant = args
        .merchant
        .clone()
        .unwrap_or_else(|| dev_merchant(terminal));
    let mut connection = connect(&args, certs_dir, terminal, timeout).await?;
    let tid = terminal.as_str().to_owned();
    match args.command {
        IsoCommand::Echo => {
            let stan = crate::random_stan();
            let mut echo = Message::new(Mti::NETWORK_REQUEST);
            echo.set(11, stan.as_str().to_owned())
                .set(41, tid)
                .set(42, merchant);
            if connection.profile.field(70).is_some() {
                echo.set(70, "301");
            }
            show(&connection.call(&echo).await?, json)
        }
        IsoCommand::Sale(sale) => {
            let stan = sale.stan.unwrap_or_else(crate::random_stan);
            let date = mmdd();
            let iso_sale = IsoSale {
                pan: &sale.pan,
                amount: sale.amount,
                currency: sale.currency,
                expiry: &sale.expiry,
                stan: stan.as_str(),
                mmdd: &date,
                terminal: &tid,
                merchant: &merchant,
            };
            let answer = connection.call(&iso_sale.request()).await?;
            show(&answer, json)?;
            if answer.text(39) == Some(ResponseCode::APPROVED.as_str()) && !sale.no_ack {
                show(&connection.call(&iso_sale.advice()).await?, json)?;
            }
            Ok(())
        }
        IsoCommand::Reverse { stan, repeat } => {
            let mti = if repeat { "0401" } else { "0400" };
            let mut reversal = Message::new(Mti::parse(mti).context("a reversal MTI")?);
            reversal
                .set(11, stan.as_str().to_owned())
                .set(13, mmdd())
                .set(41, tid)
                .set(42, merchant);
            let answer = connection.call(&reversal).await?;
            show(&answer, json)?;
            if answer.text(39) != Some(ResponseCode::APPROVED.as_str()) {
                bail!("the reversal was not accepted");
            }
            Ok(())
        }
        IsoCommand::Upload {
            batch,
            sales,
            currency,
        } => {
            if batch.len() != 6 || !batch.bytes().all(|b| b.is_ascii_digit()) {
                bail!("--batch must be six digits");
            }
            // UnionPay carries the batch as 60.2 (60.3 = 202 ends the
            // upload); ISO 1987 as field 60 itself.
            let cup = connection.profile.name == Profile::CUP_POS.name;
            let field_60 = |end: bool| match cup {
                true => iso8583::cup::Field60::new(
                    iso8583::cup::Field60::MANAGEMENT,
                    &batch,
                    if end { "202" } else { "201" },
                )
                .to_string(),
                false => batch.clone(),
            };
            let accepted = |answer: &Message<'_>| -> Result<()> {
                if answer.text(39) != Some(ResponseCode::APPROVED.as_str()) {
                    bail!("the upload was not accepted");
                }
                Ok(())
            };
            for (stan, amount) in &sales {
                let mut held = Message::new(Mti::BATCH_UPLOAD);
                held.set(3, "000000")
                    .set(4, format!("{amount:012}"))
                    .set(11, stan.as_str().to_owned())
                    .set(13, mmdd())
                    .set(41, tid.clone())
                    .set(42, merchant.clone())
                    .set(49, format!("{:03}", currency.numeric()))
                    .set(60, field_60(false));
                let answer = connection.call(&held).await?;
                show(&answer, json)?;
                accepted(&answer)?;
            }
            let mut end = Message::new(Mti::BATCH_UPLOAD);
            end.set(11, crate::random_stan().as_str().to_owned())
                .set(41, tid)
                .set(42, merchant)
                .set(48, sales.len().to_string())
                .set(60, field_60(true));
            let answer = connection.call(&end).await?;
            show(&answer, json)?;
            accepted(&answer)
        }
    }
}
