//! `posctl watch`: what a terminal receives on its `Subscribe` stream
//! ("reprint the receipt", "void the receipt"), acknowledged like a
//! terminal that has shown each message, unless `--no-ack`.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde_json::{Value, json};
use switch_core::TerminalId;
use switch_proto::v1::{AcknowledgeMessageRequest, SubscribeRequest, TerminalMessage};

use crate::connect::{GatewayOptions, connect};
use crate::output::{
    code_name, format_amount, mask_pan, money_json, or_dash, outcome_reason_text, status_line,
};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Do not acknowledge the messages: they come again on the next watch.
    #[arg(long)]
    pub no_ack: bool,
    /// Stop after this many messages.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop when no message arrived for this long (0s: wait until Ctrl-C).
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub idle_timeout: Duration,
}

/// What became of a message's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckState {
    /// `--no-ack`: the message stays in the terminal's backlog.
    NotSent,
    /// Acknowledged; `already` when it had been acknowledged before.
    Acknowledged { already: bool },
    /// The acknowledgement failed (`CODE: message`); the message comes again.
    Failed { code: &'static str, message: String },
}

/// Display name of a message kind, e.g. `VOID RECEIPT`.
pub fn kind_text(kind: &str) -> String {
    match kind {
        "" => "MESSAGE".to_owned(),
        other => other.replace('_', " ").to_ascii_uppercase(),
    }
}

fn ack_text(ack: &AckState) -> String {
    match ack {
        AckState::NotSent => "not acknowledged".to_owned(),
        AckState::Acknowledged { already: false } => "acknowledged".to_owned(),
        AckState::Acknowledged { already: true } => "acknowledged before".to_owned(),
        AckState::Failed { code, message } => format!("acknowledgement failed: {code}: {message}"),
    }
}

/// Two lines per message: what it is about, then what to display.
pub fn message_text(message: &TerminalMessage, ack: &AckState) -> String {
    let mut head = format!(
        "{}  STAN {}  date {}  RRN {}  {}",
        kind_text(&message.kind),
        or_dash(&message.stan),
        or_dash(&message.local_date),
        or_dash(&message.rrn),
        format_amount(message.amount.as_ref()),
    );
    let reason = outcome_reason_text(message.reason.as_ref());
    if !reason.is_empty() {
        head.push_str(&format!("  ({reason})"));
    }
    head.push_str(&format!("  #{} {}", message.sequence, ack_text(ack)));
    format!("{head}\n  {}", or_dash(&message.text))
}

/// One JSON object per message.
pub fn message_json(message: &TerminalMessage, ack: &AckState) -> Value {
    let mut value = json!({
        "message_id": message.message_id,
        "sequence": message.sequence,
        "kind": message.kind,
        "transaction_id": message.transaction_id,
        "stan": message.stan,
        "local_date": message.local_date,
        "rrn": message.rrn,
        "amount": money_json(message.amount.as_ref()),
        "masked_pan": mask_pan(&message.masked_pan),
        "approval_code": message.approval_code,
        "reason": outcome_reason_text(message.reason.as_ref()),
        "text": message.text,
        "created_at": message.created_at,
        "acknowledged": matches!(ack, AckState::Acknowledged { .. }),
    });
    if let Some(obj) = value.as_object_mut() {
        match ack {
            AckState::Acknowledged { already } => {
                obj.insert("already_acknowledged".to_owned(), Value::Bool(*already));
            }
            AckState::Failed { code, message } => {
                obj.insert(
                    "ack_error".to_owned(),
                    json!({"code": code, "message": message}),
                );
            }
            AckState::NotSent => {}
        }
    }
    value
}

/// Why watching stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Count,
    Idle,
    Ended,
}

/// Subscribes as the terminal and prints each message, acknowledging it
/// unless `--no-ack`, until `--count` messages, `--idle-timeout` without
/// one, or the end of the stream.
pub async fn run_watch(
    options: &GatewayOptions,
    certificate: &TerminalId,
    terminal_id: TerminalId,
    args: WatchArgs,
    json: bool,
) -> Result<()> {
    let terminal_id = terminal_id.to_string();
    let mut client = connect(options, certificate).await?;
    let mut stream = client
        .subscribe(SubscribeRequest {
            terminal_id: terminal_id.clone(),
        })
        .await?
        .into_inner();
    eprintln!("Watching messages for {terminal_id}.");
    let mut received = 0_u64;
    let stop = loop {
        if args.count.is_some_and(|count| received >= count) {
            break Stop::Count;
        }
        let next = if args.idle_timeout.is_zero() {
            stream.message().await
        } else {
            match tokio::time::timeout(args.idle_timeout, stream.message()).await {
                Ok(next) => next,
                Err(_) => break Stop::Idle,
            }
        };
        let Some(message) = next? else {
            break Stop::Ended;
        };
        received += 1;
        let ack = if args.no_ack {
            AckState::NotSent
        } else {
            match client
                .acknowledge_message(AcknowledgeMessageRequest {
                    terminal_id: terminal_id.clone(),
                    message_id: message.message_id.clone(),
                })
                .await
            {
                Ok(answer) => AckState::Acknowledged {
                    already: answer.into_inner().already_acknowledged,
                },
                Err(status) => {
                    eprintln!(
                        "error: acknowledgement of message {} failed: gRPC {}",
                        message.message_id,
                        status_line(&status)
                    );
                    AckState::Failed {
                        code: code_name(status.code()),
                        message: status.message().to_owned(),
                    }
                }
            }
        };
        if json {
            println!("{}", message_json(&message, &ack));
        } else {
            println!("{}", message_text(&message, &ack));
        }
    };
    match stop {
        Stop::Count => eprintln!("{received} message(s) received."),
        Stop::Idle => eprintln!(
            "{received} message(s) received; none for {:?}.",
            args.idle_timeout
        ),
        Stop::Ended => eprintln!("{received} message(s) received; the gateway ended the stream."),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use switch_proto::v1::{self as pb, Money};

    fn message() -> TerminalMessage {
        TerminalMessage {
            message_id: "6b1c29d4-8f0e-5a57-9c1b-7e52d3a0f6e1".into(),
            sequence: 7,
            kind: "void_receipt".into(),
            transaction_id: "0193a5d4-7e1f-7c3a-9d5e-0000000000aa".into(),
            stan: "100008".into(),
            local_date: "2026-11-24".into(),
            rrn: "633000000042".into(),
            amount: Some(Money {
                minor_units: 4200,
                currency: "EUR".into(),
            }),
            masked_pan: "411111******1111".into(),
            approval_code: String::new(),
            reason: Some(pb::OutcomeReason {
                reason: Some(pb::outcome_reason::Reason::ReversalReason(
                    pb::ReversalReason::NoTerminalAcknowledgement.into(),
                )),
            }),
            text: "Payment of EUR 42.00 (STAN 100008) was reversed: void the receipt".into(),
            created_at: "2026-11-24T16:00:00Z".into(),
        }
    }

    #[test]
    fn a_message_as_text() {
        assert_eq!(
            message_text(&message(), &AckState::Acknowledged { already: false }),
            "VOID RECEIPT  STAN 100008  date 2026-11-24  RRN 633000000042  EUR 42.00  \
             (no_terminal_acknowledgement)  #7 acknowledged\n  \
             Payment of EUR 42.00 (STAN 100008) was reversed: void the receipt"
        );
        let mut bare = message();
        bare.kind = "reprint_receipt".into();
        bare.reason = None;
        bare.rrn.clear();
        bare.amount = None;
        bare.text.clear();
        assert_eq!(
            message_text(&bare, &AckState::NotSent),
            "REPRINT RECEIPT  STAN 100008  date 2026-11-24  RRN -  -  #7 not acknowledged\n  -"
        );
        let failed = AckState::Failed {
            code: "UNAVAILABLE",
            message: "retry".into(),
        };
        assert!(
            message_text(&message(), &failed)
                .contains("#7 acknowledgement failed: UNAVAILABLE: retry")
        );
        assert!(
            message_text(&message(), &AckState::Acknowledged { already: true })
                .contains("#7 acknowledged before")
        );
    }

    #[test]
    fn a_message_as_json() {
        let value = message_json(&message(), &AckState::Acknowledged { already: false });
        assert_eq!(
            value,
            json!({
                "message_id": "6b1c29d4-8f0e-5a57-9c1b-7e52d3a0f6e1",
                "sequence": 7,
                "kind": "void_receipt",
                "transaction_id": "0193a5d4-7e1f-7c3a-9d5e-0000000000aa",
                "stan": "100008",
                "local_date": "2026-11-24",
                "rrn": "633000000042",
                "amount": {"minor_units": 4200, "currency": "EUR", "display": "EUR 42.00"},
                "masked_pan": "411111******1111",
                "approval_code": "",
                "reason": "no_terminal_acknowledgement",
                "text": "Payment of EUR 42.00 (STAN 100008) was reversed: void the receipt",
                "created_at": "2026-11-24T16:00:00Z",
                "acknowledged": true,
                "already_acknowledged": false,
            })
        );
        let value = message_json(&message(), &AckState::NotSent);
        assert_eq!(value["acknowledged"], false);
        assert!(value.get("already_acknowledged").is_none());
        let value = message_json(
            &message(),
            &AckState::Failed {
                code: "NOT_FOUND",
                message: "no such message".into(),
            },
        );
        assert_eq!(value["acknowledged"], false);
        assert_eq!(value["ack_error"]["code"], "NOT_FOUND");
    }

    #[test]
    fn a_full_pan_from_the_server_is_masked() {
        let mut leaky = message();
        leaky.masked_pan = "4111111111111111".into();
        let value = message_json(&leaky, &AckState::NotSent);
        assert_eq!(value["masked_pan"], "411111******1111");
    }

    #[test]
    fn kinds_read_as_words() {
        assert_eq!(kind_text("void_receipt"), "VOID RECEIPT");
        assert_eq!(kind_text("reprint_receipt"), "REPRINT RECEIPT");
        assert_eq!(kind_text(""), "MESSAGE");
    }
}
