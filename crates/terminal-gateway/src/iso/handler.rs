//! From a frame to its answer: read the message, check who speaks, turn it
//! into the same forwarding call as its gRPC twin, and write field 39 from
//! the authorization's record or from the core's refusal table
//! (`switch_core::iso_response`). Nothing here decides a payment.

use std::collections::BTreeMap;

use iso8583::cup::Field60;
use iso8583::{Envelope, Frame, Message, Mti};
use switch_core::iso_response::{
    IsoRefusal, advice_accepted, network_management_accepted, reversal_accepted, upload_accepted,
};
use switch_core::{CardExpiry, Currency, InvalidField, LocalDate, Money, Pan, ResponseCode};
use switch_proto::v1 as pb;
use tonic::{Code, Status};
use tracing::Instrument;

use super::{IsoProfile, Listener};
use crate::edge::Refusal;
use crate::identity::TerminalIdentity;
use crate::service::NotAdmitted;

/// Who is at the other end of a connection.
pub(super) enum Caller {
    /// The terminal of the verified client certificate.
    Certified(TerminalIdentity),
    /// Plain TCP in a lab: each message names its terminal (41) and
    /// merchant (42).
    Lab,
}

/// A request read whole and admitted, to be answered once its call
/// returns.
pub(super) struct Request {
    envelope: Envelope,
    message: Message<'static>,
    identity: TerminalIdentity,
    /// The end of a batch upload: what was gathered, to forward.
    upload: Option<pb::UploadBatchRequest>,
    /// When its frame was read: the terminal waits from then on.
    received: std::time::Instant,
}

/// What to do with a frame just read.
pub(super) enum Read {
    Request(Box<Request>),
    /// Answered at once (format error, another terminal's message).
    Answer(Vec<u8>),
    /// Not a request (a response or notification): nothing to answer.
    Ignore,
    /// Cannot be answered: close the connection, for this reason (which
    /// never quotes the message's bytes).
    Close(String),
    /// The terminal may no longer be served (revoked, suspended): close
    /// the connection unanswered.
    Refused(Refusal),
}

/// Fields a response repeats from its request, when the profile has them:
/// processing code, amount, STAN, local time and date, POS condition code,
/// terminal, merchant, currency, CUP field 60, network management code.
const ECHOED: [u8; 11] = [3, 4, 11, 12, 13, 25, 41, 42, 49, 60, 70];

pub(super) fn read(
    listener: &Listener,
    caller: &Caller,
    frame: &[u8],
    uploads: &mut Uploads,
) -> Read {
    let received = std::time::Instant::now();
    let Frame { envelope, message } = match listener.profile.unpack_frame(frame) {
        Ok(frame) => frame,
        Err(rejected) => {
            let error = rejected.error;
            let Some(partial) = rejected.partial else {
                return Read::Close(error.to_string());
            };
            let Some((response_mti, stan, terminal_id)) = partial.answerable() else {
                return Read::Close(format!("{error}; MTI, field 11 or field 41 unreadable"));
            };
            tracing::warn!(mti = %partial.mti, %error, "ISO 8583 message malformed; answered 30.");
            let mut answer = Message::new(response_mti);
            answer
                .set(11, stan.to_owned())
                .set(41, terminal_id.to_owned());
            return pack(
                listener,
                &partial.envelope,
                partial.mti,
                answer,
                IsoRefusal::Malformed.response_code(listener.codes),
            )
            .map_or_else(
                || Read::Close(format!("{error}; the answer cannot be packed")),
                Read::Answer,
            );
        }
    };
    let mti = message.mti();
    if mti.response().is_none() {
        tracing::info!(%mti, "ISO 8583 message is not a request; ignored.");
        return Read::Ignore;
    }
    let (Some(_), Some(terminal_id)) = (message.stan(), message.terminal_id()) else {
        return Read::Close(format!("{mti} without field 11 or field 41"));
    };
    // Field 41 is fixed-length: a shorter terminal id arrives padded.
    if let Caller::Certified(identity) = caller
        && terminal_id.trim_end() != identity.terminal_id
    {
        listener.metrics.wrong_terminal();
        tracing::warn!(%mti, field_41 = terminal_id, certificate = %identity.terminal_id,
                "ISO 8583 message speaks for another terminal than the certificate's; refused.");
        let answer = reply(listener, &message, Vec::new());
        return pack(
            listener,
            &envelope,
            mti,
            answer,
            IsoRefusal::InvalidTransaction.response_code(listener.codes),
        )
        .map_or_else(
            || Read::Close("the refusal cannot be packed".into()),
            Read::Answer,
        );
    }
    let refuse = |refusal: IsoRefusal| {
        let answer = reply(listener, &message, Vec::new());
        pack(
            listener,
            &envelope,
            mti,
            answer,
            refusal.response_code(listener.codes),
        )
        .map_or_else(
            || Read::Close("the refusal cannot be packed".into()),
            Read::Answer,
        )
    };
    let identity = match identity_of(caller, &message) {
        Ok(identity) => identity,
        Err(refusal) => return refuse(refusal),
    };
    // Admitted before anything is forwarded, gathered or answered, as a
    // gRPC call is.
    match listener
        .api
        .guard()
        .admit_terminal(&identity, super::LISTENER_NAME, bounded_mti(mti))
    {
        Ok(()) => {}
        Err(NotAdmitted::Refused(refusal)) => {
            // The certificate was revoked or the terminal suspended since
            // the connection opened: nothing it sends is answered.
            return Read::Refused(refusal);
        }
        Err(NotAdmitted::OverRate(limited)) => {
            listener.metrics.rate_limited(mti);
            tracing::info!(%mti, terminal_id = %identity.terminal_id,
                retry_after_ms = limited.retry_after_ms, "ISO 8583 terminal over its request rate; refused.");
            return refuse(IsoRefusal::OverRate);
        }
    }
    let mut upload = None;
    if (mti.class(), mti.function()) == (3, 2) {
        match uploads.take(listener, &identity, &message) {
            Ok(Gathered::Transaction) => {
                return accepted_into_upload(listener, &envelope, &message);
            }
            Ok(Gathered::End(complete)) => upload = Some(complete),
            Err(refusal) => return refuse(refusal),
        }
    }
    Read::Request(Box::new(Request {
        envelope,
        message: message.into_owned(),
        identity,
        upload,
        received,
    }))
}

/// The 0330 of a transaction gathered into an upload.
fn accepted_into_upload(listener: &Listener, envelope: &Envelope, message: &Message<'_>) -> Read {
    let answer = reply(listener, message, Vec::new());
    pack(listener, envelope, message.mti(), answer, upload_accepted()).map_or_else(
        || Read::Close("the answer cannot be packed".into()),
        Read::Answer,
    )
}

/// A request MTI as a metrics attribute (bounded).
fn bounded_mti(mti: Mti) -> &'static str {
    super::metrics::bounded_mti(mti)
}

/// Handles a request through the terminal API and packs its answer.
pub(super) async fn answer(listener: &Listener, request: Box<Request>) -> Option<Vec<u8>> {
    let Request {
        envelope,
        message,
        identity,
        upload,
        received,
    } = *request;
    let mti = message.mti();
    let span = tracing::info_span!(
        "gateway.iso",
        %mti,
        terminal_id = message.terminal_id().unwrap_or(""),
        stan = message.stan().unwrap_or("")
    );
    let outcome = match upload {
        Some(upload) => {
            upload_batch(listener, &identity, upload)
                .instrument(span)
                .await
        }
        None => handle(listener, &identity, &message).instrument(span).await,
    };
    let (code, extra) = match outcome {
        Ok(answered) => answered,
        Err(refusal) => (refusal.response_code(listener.codes), Vec::new()),
    };
    let packed = pack(
        listener,
        &envelope,
        mti,
        reply(listener, &message, extra),
        code,
    );
    // Requests answered at once while reading (a format error, another
    // terminal's field 41, over the rate, one transaction of an upload)
    // are not timed: they never wait for the switch.
    listener.api.guard().metrics.request_answered(
        super::LISTENER_NAME,
        bounded_mti(mti),
        code.as_str(),
        received.elapsed(),
    );
    packed
}

type Answered = (ResponseCode, Vec<(u8, String)>);

async fn handle(
    listener: &Listener,
    identity: &TerminalIdentity,
    message: &Message<'static>,
) -> Result<Answered, IsoRefusal> {
    let mti = message.mti();
    match (mti.class(), mti.function()) {
        (8, 0) => Ok((network_management_accepted(), Vec::new())),
        (2, 0) => sale(listener, identity, message).await,
        (2, 2) => advice(listener, identity, message).await,
        (4, 0) | (4, 2) => reversal(listener, identity, message).await,
        (5, 0) => close_batch(listener, identity, message).await,
        _ => Err(IsoRefusal::InvalidTransaction),
    }
}

fn identity_of(caller: &Caller, message: &Message<'_>) -> Result<TerminalIdentity, IsoRefusal> {
    match caller {
        Caller::Certified(identity) => Ok(identity.clone()),
        Caller::Lab => Ok(TerminalIdentity {
            terminal_id: message
                .terminal_id()
                .ok_or(IsoRefusal::Malformed)?
                .trim_end()
                .to_owned(),
            merchant_id: message
                .text(42)
                .ok_or(IsoRefusal::Malformed)?
                .trim_end()
                .to_owned(),
            // A lab listener has no certificate, so nothing a CRL could name.
            certificate_serial: Vec::new(),
        }),
    }
}

/// 0200: a purchase (processing code `00xxxx`), forwarded as `Authorize`.
async fn sale(
    listener: &Listener,
    identity: &TerminalIdentity,
    message: &Message<'_>,
) -> Result<Answered, IsoRefusal> {
    if !message.text(3).is_some_and(|code| code.starts_with("00")) {
        return Err(IsoRefusal::InvalidTransaction);
    }
    let required = |field: u8, name: &'static str| {
        message
            .text(field)
            .ok_or_else(|| IsoRefusal::for_field(&InvalidField::new(name, "missing")))
    };
    let pan = required(2, "pan")?;
    Pan::parse(pan).map_err(|e| IsoRefusal::for_field(&e))?;
    let expiry = required(14, "expiry")?;
    CardExpiry::parse(expiry).map_err(|e| IsoRefusal::for_field(&e))?;
    let currency =
        Currency::from_numeric(required(49, "currency")?).map_err(|e| IsoRefusal::for_field(&e))?;
    let minor_units: i64 = required(4, "amount")?
        .parse()
        .map_err(|_| IsoRefusal::InvalidAmount)?;
    let amount = Money::positive(minor_units, currency).map_err(|e| IsoRefusal::for_field(&e))?;
    let local_date =
        LocalDate::from_month_day(required(13, "local_date")?, listener.clock.now().date())
            .map_err(|e| IsoRefusal::for_field(&e))?;
    let sale = pb::SaleRequest {
        terminal_id: identity.terminal_id.clone(),
        stan: required(11, "stan")?.to_owned(),
        local_date: local_date.to_string(),
        pan: pan.to_owned(),
        expiry: expiry.to_owned(),
        amount: Some(pb::Money {
            minor_units: amount.minor_units(),
            currency: amount.currency().code().to_owned(),
        }),
        last_completed_stan: String::new(),
        channel: String::new(),
    };
    let answer = listener
        .api
        .forward_sale(identity, sale)
        .await
        .map_err(|status| refusal_of(&status))?;
    let record = answer.authorization.ok_or(IsoRefusal::SystemMalfunction)?;
    let code =
        ResponseCode::parse(&record.response_code).map_err(|_| IsoRefusal::SystemMalfunction)?;
    let mut extra = vec![(37, record.rrn)];
    if !record.approval_code.is_empty() {
        extra.push((38, record.approval_code));
    }
    Ok((code, extra))
}

/// The transaction a completion advice or reversal is about: its
/// terminal, STAN (field 11, the original's) and local date (field 13, or
/// the switch's date when the terminal leaves it out).
fn original_key(
    listener: &Listener,
    identity: &TerminalIdentity,
    message: &Message<'_>,
) -> Result<(String, String, String), IsoRefusal> {
    let stan = message.stan().ok_or(IsoRefusal::Malformed)?.to_owned();
    let today = listener.clock.now().date();
    let local_date = match message.text(13) {
        Some(mmdd) => {
            LocalDate::from_month_day(mmdd, today).map_err(|e| IsoRefusal::for_field(&e))?
        }
        None => LocalDate::from_date(today),
    };
    Ok((identity.terminal_id.clone(), stan, local_date.to_string()))
}

/// 0220: the terminal completed the sale (printed, displayed): the same
/// evidence as gRPC `Acknowledge`.
async fn advice(
    listener: &Listener,
    identity: &TerminalIdentity,
    message: &Message<'_>,
) -> Result<Answered, IsoRefusal> {
    let (terminal_id, stan, local_date) = original_key(listener, identity, message)?;
    let answer = listener
        .api
        .forward_acknowledge(
            identity,
            pb::AcknowledgeRequest {
                terminal_id,
                stan,
                local_date,
            },
        )
        .await
        .map_err(|status| refusal_of(&status))?;
    let rrn = answer.authorization.map(|record| record.rrn);
    Ok((
        advice_accepted(),
        rrn.into_iter().map(|rrn| (37, rrn)).collect(),
    ))
}

/// 0400/0420 and their repeats: a terminal-requested reversal. The journal
/// makes it durable before answering and answers a repeat as the original.
async fn reversal(
    listener: &Listener,
    identity: &TerminalIdentity,
    message: &Message<'_>,
) -> Result<Answered, IsoRefusal> {
    let (terminal_id, stan, local_date) = original_key(listener, identity, message)?;
    let answer = listener
        .api
        .forward_reverse(
            identity,
            pb::TerminalReverseRequest {
                terminal_id,
                stan,
                local_date,
            },
        )
        .await
        .map_err(|status| refusal_of(&status))?;
    let rrn = answer
        .authorization
        .map(|record| record.rrn)
        .filter(|rrn| !rrn.is_empty());
    Ok((
        reversal_accepted(),
        rrn.into_iter().map(|rrn| (37, rrn)).collect(),
    ))
}

/// Totals of a 0500 on `ascii_1987`, by field: sales are debits, the
/// terminal's reversals debit reversals (ISO 8583:1987 fields 74-89).
const SALES_COUNT: u8 = 76;
const SALES_AMOUNT: u8 = 88;
const REVERSALS_COUNT: u8 = 77;
const REVERSALS_AMOUNT: u8 = 89;

/// 60.3 of the end of a UnionPay batch upload.
const UPLOAD_END: &str = "202";

/// The batch number of a 0500 or 0320: field 60 as six digits on
/// `ascii_1987`, sub-field 60.2 on `cup_pos`.
fn batch_number(listener: &Listener, message: &Message<'_>) -> Result<String, IsoRefusal> {
    let six_digits = |batch: &str| batch.len() == 6 && batch.bytes().all(|b| b.is_ascii_digit());
    match listener.kind {
        IsoProfile::Ascii1987 => message
            .text(60)
            .filter(|batch| six_digits(batch))
            .map(str::to_owned)
            .ok_or(IsoRefusal::Malformed),
        IsoProfile::CupPos => Field60::of(message)
            .and_then(Result::ok)
            .and_then(|field_60| field_60.batch_number)
            .ok_or(IsoRefusal::Malformed),
    }
}

/// The currency of a batch message: field 50 (settlement), or 49.
fn batch_currency(message: &Message<'_>) -> Result<Currency, IsoRefusal> {
    message
        .text(50)
        .or_else(|| message.text(49))
        .ok_or(IsoRefusal::Malformed)
        .and_then(|code| Currency::from_numeric(code).map_err(|e| IsoRefusal::for_field(&e)))
}

/// 0500: the terminal closes its batch with its totals, forwarded as
/// `CloseBatch`; the batch number is [`batch_number`]'s. On `ascii_1987`
/// the totals are fields 76/88 (sales) and 77/89 (reversals) and the
/// answer carries the host's totals in the same fields; on `cup_pos` they
/// are field 48 ([`CupTotals`]) and so is the answer's.
async fn close_batch(
    listener: &Listener,
    identity: &TerminalIdentity,
    message: &Message<'_>,
) -> Result<Answered, IsoRefusal> {
    let batch_number = batch_number(listener, message)?;
    let currency = batch_currency(message)?;
    let totals = match listener.kind {
        IsoProfile::Ascii1987 => {
            let number = |field: u8| -> Result<i64, IsoRefusal> {
                message.text(field).map_or(Ok(0), |digits| {
                    digits.parse().map_err(|_| IsoRefusal::InvalidAmount)
                })
            };
            pb::CurrencyTotals {
                currency: currency.code().to_owned(),
                sales_count: number(SALES_COUNT)?,
                sales_minor_units: number(SALES_AMOUNT)?,
                reversals_count: number(REVERSALS_COUNT)?,
                reversals_minor_units: number(REVERSALS_AMOUNT)?,
            }
        }
        IsoProfile::CupPos => {
            CupTotals::parse(message.text(48).ok_or(IsoRefusal::Malformed)?)?.totals(currency)
        }
    };
    let empty = totals.sales_count == 0 && totals.reversals_count == 0;
    let answer = listener
        .api
        .forward_close_batch(
            identity,
            pb::CloseBatchRequest {
                terminal_id: identity.terminal_id.clone(),
                merchant_id: identity.merchant_id.clone(),
                batch_number,
                totals: if empty { Vec::new() } else { vec![totals] },
            },
        )
        .await
        .map_err(|status| refusal_of(&status))?;
    let code =
        ResponseCode::parse(&answer.response_code).map_err(|_| IsoRefusal::SystemMalfunction)?;
    let host = answer
        .host_totals
        .iter()
        .find(|host| host.currency == currency.code());
    let profile = &listener.profile;
    let field = |n: u8, value: i64| {
        profile
            .pad_value(n, &value.max(0).to_string())
            .map(|padded| (n, padded))
            .map_err(|_| IsoRefusal::SystemMalfunction)
    };
    let extra = match (listener.kind, host) {
        (IsoProfile::Ascii1987, Some(host)) => vec![
            field(SALES_COUNT, host.sales_count)?,
            field(SALES_AMOUNT, host.sales_minor_units)?,
            field(REVERSALS_COUNT, host.reversals_count)?,
            field(REVERSALS_AMOUNT, host.reversals_minor_units)?,
        ],
        (IsoProfile::Ascii1987, None) => Vec::new(),
        (IsoProfile::CupPos, host) => {
            let balanced = pb::BatchResult::try_from(answer.result)
                .is_ok_and(|result| result != pb::BatchResult::OutOfBalance);
            vec![(48, CupTotals::answer(host, balanced)?)]
        }
    };
    Ok((code, extra))
}

/// Field 48 of a UnionPay 0500 and 0510: domestic cards' debit amount
/// (n12) and count (n3), credit amount (n12) and count (n3) and a
/// settlement flag (n1), then the same 31 digits for foreign cards. Debits
/// are the sales, credits the terminal's reversals (its voids), as fields
/// 76-89 are read on `ascii_1987`. The switch keeps no domestic/foreign
/// split, so a request's two parts are added, and an answer puts the
/// host's totals in the domestic part and zeros in the foreign one. The
/// flag is "1" balanced, "2" out of balance.
struct CupTotals {
    sales_count: i64,
    sales_minor_units: i64,
    reversals_count: i64,
    reversals_minor_units: i64,
}

/// Digits of one part (domestic or foreign) of CUP field 48.
const CUP_PART: usize = 31;

impl CupTotals {
    fn parse(digits: &str) -> Result<CupTotals, IsoRefusal> {
        if !(digits.len() == CUP_PART || digits.len() == 2 * CUP_PART)
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(IsoRefusal::Malformed);
        }
        let number = |from: usize, len: usize| -> Result<i64, IsoRefusal> {
            digits
                .get(from..from + len)
                .and_then(|part| part.parse().ok())
                .ok_or(IsoRefusal::Malformed)
        };
        let mut totals = CupTotals {
            sales_count: 0,
            sales_minor_units: 0,
            reversals_count: 0,
            reversals_minor_units: 0,
        };
        for part in (0..digits.len()).step_by(CUP_PART) {
            totals.sales_minor_units += number(part, 12)?;
            totals.sales_count += number(part + 12, 3)?;
            totals.reversals_minor_units += number(part + 15, 12)?;
            totals.reversals_count += number(part + 27, 3)?;
        }
        Ok(totals)
    }

    fn totals(&self, currency: Currency) -> pb::CurrencyTotals {
        pb::CurrencyTotals {
            currency: currency.code().to_owned(),
            sales_count: self.sales_count,
            sales_minor_units: self.sales_minor_units,
            reversals_count: self.reversals_count,
            reversals_minor_units: self.reversals_minor_units,
        }
    }

    /// The 0510's field 48: the host's totals (none: an empty batch), and
    /// the flag.
    fn answer(host: Option<&pb::CurrencyTotals>, balanced: bool) -> Result<String, IsoRefusal> {
        let flag = if balanced { '1' } else { '2' };
        let (sales_minor_units, sales_count, reversals_minor_units, reversals_count) =
            host.map_or((0, 0, 0, 0), |host| {
                (
                    host.sales_minor_units,
                    host.sales_count,
                    host.reversals_minor_units,
                    host.reversals_count,
                )
            });
        let fits = |value: i64, digits: u32| (0..10_i64.pow(digits)).contains(&value);
        if !(fits(sales_minor_units, 12)
            && fits(sales_count, 3)
            && fits(reversals_minor_units, 12)
            && fits(reversals_count, 3))
        {
            // More than the layout can say: the terminal cannot be told
            // the host's totals, so it is not told they balance either.
            return Err(IsoRefusal::SystemMalfunction);
        }
        Ok(format!(
            "{sales_minor_units:012}{sales_count:03}{reversals_minor_units:012}{reversals_count:03}{flag}{:030}{flag}",
            0
        ))
    }
}

/// What a 0320 was, once gathered.
pub(super) enum Gathered {
    /// A transaction of the upload: answered at once.
    Transaction,
    /// The end of the upload, with everything gathered: to forward.
    End(pb::UploadBatchRequest),
}

/// The batch upload a connection is sending, one 0320 per transaction
/// (fields 11 and 13 the sale's STAN and date, as for an advice; 4 and 49
/// its amount; 38 its approval code), then a 0320 that ends it: field 48
/// the number of transactions uploaded and no field 4 (on `cup_pos` also
/// 60.3 = 202). `UploadBatch` takes the whole list at once, so the
/// gateway gathers it here, for this connection only: an upload cut off by
/// a lost connection is never forwarded, and one whose end counts another
/// number of transactions than were gathered is refused, since
/// reconciling a partial upload would reverse the sales it left out.
#[derive(Default)]
pub(super) struct Uploads {
    batch_number: String,
    /// By (local date, STAN): a repeated 0320 replaces its first.
    transactions: BTreeMap<(String, String), pb::UploadedTransaction>,
}

impl Uploads {
    /// Gathers one 0320: a transaction, or the end of the upload (which
    /// empties the gathering).
    pub(super) fn take(
        &mut self,
        listener: &Listener,
        identity: &TerminalIdentity,
        message: &Message<'_>,
    ) -> Result<Gathered, IsoRefusal> {
        let batch_number = batch_number(listener, message)?;
        if batch_number != self.batch_number {
            // A terminal uploads one batch at a time: another batch starts
            // over.
            self.transactions.clear();
            self.batch_number = batch_number;
        }
        let end = message.get(4).is_none() && message.get(48).is_some();
        if end {
            if listener.kind == IsoProfile::CupPos
                && Field60::of(message)
                    .and_then(Result::ok)
                    .and_then(|field_60| field_60.network_management_code)
                    .is_some_and(|code| code != UPLOAD_END)
            {
                return Err(IsoRefusal::InvalidTransaction);
            }
            let announced: usize = message
                .text(48)
                .filter(|count| (1..=6).contains(&count.len()))
                .and_then(|count| count.parse().ok())
                .ok_or(IsoRefusal::Malformed)?;
            let gathered = std::mem::take(&mut self.transactions);
            if announced != gathered.len() {
                tracing::warn!(
                    announced,
                    gathered = gathered.len(),
                    "ISO 8583 batch upload ends with another count than was uploaded; refused, nothing forwarded."
                );
                return Err(IsoRefusal::Malformed);
            }
            return Ok(Gathered::End(pb::UploadBatchRequest {
                terminal_id: identity.terminal_id.clone(),
                merchant_id: identity.merchant_id.clone(),
                batch_number: self.batch_number.clone(),
                transactions: gathered.into_values().collect(),
            }));
        }
        let (_, stan, local_date) = original_key(listener, identity, message)?;
        let currency = Currency::from_numeric(message.text(49).ok_or(IsoRefusal::Malformed)?)
            .map_err(|e| IsoRefusal::for_field(&e))?;
        let minor_units: i64 = message
            .text(4)
            .ok_or(IsoRefusal::Malformed)?
            .parse()
            .map_err(|_| IsoRefusal::InvalidAmount)?;
        let amount =
            Money::positive(minor_units, currency).map_err(|e| IsoRefusal::for_field(&e))?;
        let key = (local_date.clone(), stan.clone());
        if !self.transactions.contains_key(&key)
            && self.transactions.len() >= listener.api.guard().max_upload_transactions
        {
            // As `UploadBatch` refuses a longer list: the end's count will
            // not match, so nothing of this upload is forwarded.
            return Err(IsoRefusal::Malformed);
        }
        self.transactions.insert(
            key,
            pb::UploadedTransaction {
                stan,
                local_date,
                amount: Some(pb::Money {
                    minor_units: amount.minor_units(),
                    currency: amount.currency().code().to_owned(),
                }),
                approval_code: message.text(38).unwrap_or("").trim_end().to_owned(),
            },
        );
        Ok(Gathered::Transaction)
    }
}

/// The end of a 0320 upload, forwarded as `UploadBatch`.
async fn upload_batch(
    listener: &Listener,
    identity: &TerminalIdentity,
    upload: pb::UploadBatchRequest,
) -> Result<Answered, IsoRefusal> {
    let answer = listener
        .api
        .forward_upload_batch(identity, upload)
        .await
        .map_err(|status| refusal_of(&status))?;
    tracing::info!(
        result = ?pb::BatchResult::try_from(answer.result),
        outcomes = answer.outcomes.len(),
        duplicate = answer.duplicate,
        "ISO 8583 batch upload reconciled."
    );
    Ok((upload_accepted(), Vec::new()))
}

/// What a failed call to the services behind the edge tells the terminal.
fn refusal_of(status: &Status) -> IsoRefusal {
    let refusal = match status.code() {
        Code::AlreadyExists => IsoRefusal::ModifiedRetry,
        Code::InvalidArgument => IsoRefusal::Malformed,
        Code::PermissionDenied | Code::NotFound | Code::FailedPrecondition => {
            IsoRefusal::InvalidTransaction
        }
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            IsoRefusal::SwitchUnavailable
        }
        _ => IsoRefusal::SystemMalfunction,
    };
    tracing::info!(code = ?status.code(), reason = status.message(), ?refusal,
        "ISO 8583 request refused by the switch.");
    refusal
}

/// The response's fields: what it echoes from the request, then `extra`.
fn reply(listener: &Listener, request: &Message<'_>, extra: Vec<(u8, String)>) -> Message<'static> {
    let mut answer = Message::new(request.mti().response().unwrap_or(request.mti()));
    for field in ECHOED {
        if listener.profile.field(field).is_some()
            && let Some(value) = request.get(field)
        {
            answer.set(field, value.clone().into_owned());
        }
    }
    for (field, value) in extra {
        if listener.profile.field(field).is_some() {
            answer.set(field, value);
        }
    }
    answer
}

/// Packs the answer with field 39, or, when it cannot be packed (a value
/// from the switch that does not fit the profile), a "96" with only what
/// matching needs.
fn pack(
    listener: &Listener,
    envelope: &Envelope,
    request: Mti,
    mut answer: Message<'static>,
    code: ResponseCode,
) -> Option<Vec<u8>> {
    answer.set(39, code.as_str().to_owned());
    let envelope = envelope.response();
    match listener.profile.pack_frame(&envelope, &answer) {
        Ok(frame) => {
            listener.metrics.answered(request, code);
            Some(frame)
        }
        Err(error) => {
            tracing::error!(%request, %error, "ISO 8583 answer cannot be packed; answering 96.");
            let malfunction = IsoRefusal::SystemMalfunction.response_code(listener.codes);
            let mut fallback = Message::new(answer.mti());
            for field in [11, 41] {
                if let Some(value) = answer.get(field) {
                    fallback.set(field, value.clone());
                }
            }
            fallback.set(39, malfunction.as_str().to_owned());
            let frame = listener.profile.pack_frame(&envelope, &fallback).ok()?;
            listener.metrics.answered(request, malfunction);
            Some(frame)
        }
    }
}
