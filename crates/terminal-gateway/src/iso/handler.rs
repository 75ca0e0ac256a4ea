//! From a frame to its answer: read the message, check who speaks, turn it
//! into the same forwarding call as its gRPC twin, and write field 39 from
//! the authorization's record or from the core's refusal table
//! (`switch_core::iso_response`). Nothing here decides a payment.

use iso8583::{Envelope, Frame, Message, Mti};
use switch_core::iso_response::{
    IsoRefusal, advice_accepted, network_management_accepted, reversal_accepted,
};
use switch_core::{CardExpiry, Currency, InvalidField, LocalDate, Money, Pan, ResponseCode};
use switch_proto::v1 as pb;
use tonic::{Code, Status};
use tracing::Instrument;

use super::Listener;
use crate::identity::TerminalIdentity;

/// Who is at the other end of a connection.
pub(super) enum Caller {
    /// The terminal of the verified client certificate.
    Certified(TerminalIdentity),
    /// Plain TCP in a lab: each message names its terminal (41) and
    /// merchant (42).
    Lab,
}

/// A request read whole, to be answered once its call returns.
pub(super) struct Request {
    envelope: Envelope,
    message: Message<'static>,
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
}

/// Fields a response repeats from its request, when the profile has them:
/// processing code, amount, STAN, local time and date, POS condition code,
/// terminal, merchant, currency, CUP field 60, network management code.
const ECHOED: [u8; 11] = [3, 4, 11, 12, 13, 25, 41, 42, 49, 60, 70];

pub(super) fn read(listener: &Listener, caller: &Caller, frame: &[u8]) -> Read {
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
                IsoRefusal::Malformed.response_code(),
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
            IsoRefusal::InvalidTransaction.response_code(),
        )
        .map_or_else(
            || Read::Close("the refusal cannot be packed".into()),
            Read::Answer,
        );
    }
    Read::Request(Box::new(Request {
        envelope,
        message: message.into_owned(),
    }))
}

/// Handles a request through the terminal API and packs its answer.
pub(super) async fn answer(
    listener: &Listener,
    caller: &Caller,
    request: Box<Request>,
) -> Option<Vec<u8>> {
    let Request { envelope, message } = *request;
    let mti = message.mti();
    let span = tracing::info_span!(
        "gateway.iso",
        %mti,
        terminal_id = message.terminal_id().unwrap_or(""),
        stan = message.stan().unwrap_or("")
    );
    let outcome = match identity_of(caller, &message) {
        Ok(identity) => handle(listener, &identity, &message).instrument(span).await,
        Err(refusal) => Err(refusal),
    };
    let (code, extra) = match outcome {
        Ok(answered) => answered,
        Err(refusal) => (refusal.response_code(), Vec::new()),
    };
    pack(
        listener,
        &envelope,
        mti,
        reply(listener, &message, extra),
        code,
    )
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

/// Totals of a 0500, by field: sales are debits, the terminal's
/// reversals debit reversals (ISO 8583:1987 fields 74-89).
const SALES_COUNT: u8 = 76;
const SALES_AMOUNT: u8 = 88;
const REVERSALS_COUNT: u8 = 77;
const REVERSALS_AMOUNT: u8 = 89;

/// 0500: the terminal closes its batch with its totals, forwarded as
/// `CloseBatch`. The batch number is field 60 (six digits, where UnionPay
/// terminals put it as 60.2), the currency field 50 (or 49), the totals
/// fields 76/88 (sales) and 77/89 (reversals); the answer carries the
/// host's totals in the same fields. Only profiles that define those
/// fields can close a batch over ISO.
async fn close_batch(
    listener: &Listener,
    identity: &TerminalIdentity,
    message: &Message<'_>,
) -> Result<Answered, IsoRefusal> {
    let profile = &listener.profile;
    if [SALES_COUNT, SALES_AMOUNT, REVERSALS_COUNT, REVERSALS_AMOUNT]
        .into_iter()
        .any(|field| profile.field(field).is_none())
    {
        return Err(IsoRefusal::InvalidTransaction);
    }
    let batch_number = message
        .text(60)
        .filter(|batch| batch.len() == 6 && batch.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(IsoRefusal::Malformed)?;
    let currency = message
        .text(50)
        .or_else(|| message.text(49))
        .ok_or(IsoRefusal::Malformed)
        .and_then(|code| Currency::from_numeric(code).map_err(|e| IsoRefusal::for_field(&e)))?;
    let number = |field: u8| -> Result<i64, IsoRefusal> {
        message.text(field).map_or(Ok(0), |digits| {
            digits.parse().map_err(|_| IsoRefusal::InvalidAmount)
        })
    };
    let totals = pb::CurrencyTotals {
        currency: currency.code().to_owned(),
        sales_count: number(SALES_COUNT)?,
        sales_minor_units: number(SALES_AMOUNT)?,
        reversals_count: number(REVERSALS_COUNT)?,
        reversals_minor_units: number(REVERSALS_AMOUNT)?,
    };
    let empty = totals.sales_count == 0 && totals.reversals_count == 0;
    let answer = listener
        .api
        .forward_close_batch(
            identity,
            pb::CloseBatchRequest {
                terminal_id: identity.terminal_id.clone(),
                merchant_id: identity.merchant_id.clone(),
                batch_number: batch_number.to_owned(),
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
    let field = |n: u8, value: i64| {
        profile
            .pad_value(n, &value.max(0).to_string())
            .map(|padded| (n, padded))
            .map_err(|_| IsoRefusal::SystemMalfunction)
    };
    let extra = match host {
        Some(host) => vec![
            field(SALES_COUNT, host.sales_count)?,
            field(SALES_AMOUNT, host.sales_minor_units)?,
            field(REVERSALS_COUNT, host.reversals_count)?,
            field(REVERSALS_AMOUNT, host.reversals_minor_units)?,
        ],
        None => Vec::new(),
    };
    Ok((code, extra))
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
            let malfunction = IsoRefusal::SystemMalfunction.response_code();
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
