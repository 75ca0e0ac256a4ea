//! `posctl webhooks listen`: a merchant's webhook endpoint on this machine.
//! It prints each webhook it receives after verifying its
//! `Switch-Signature` with the endpoint's secret, answers 200 when the
//! signature is valid and 400 when not, and exits after `--count`
//! deliveries.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use switch_core::{Clock, SystemClock};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use webhook_signature::{DEFAULT_TOLERANCE_S, EVENT_ID_HEADER, SIGNATURE_HEADER, verify};

use crate::output::format_money;

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    #[command(subcommand)]
    pub command: WebhooksCommand,
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Receive webhooks like a merchant's endpoint: verify and print each.
    Listen(ListenArgs),
}

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Address to listen on (plain HTTP); register http://ADDRESS/ as the
    /// merchant's endpoint.
    #[arg(long, default_value = "127.0.0.1:18085")]
    pub address: SocketAddr,
    /// The endpoint's signing secret (`whsec_…`).
    #[arg(long, env = "POSCTL_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Exit after this many deliveries (valid or not).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

/// One webhook request as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The `Switch-Event-Id` header.
    pub event_id: String,
    pub body: Bytes,
    /// `Ok` when the signature verified, else why not.
    pub verdict: Result<(), String>,
}

/// The body as a JSON object, if it is one.
fn body_object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn text_field(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn amount_text(value: &Value) -> Option<String> {
    let amount = value.get("amount")?;
    let minor = amount.get("minor_units")?.as_i64()?;
    let currency = amount.get("currency")?.as_str()?;
    Some(format_money(minor, currency))
}

/// The fields of `data` worth a glance, per webhook type.
fn key_fields(kind: &str, data: &Value) -> Vec<String> {
    let field = |label: &str, key: &str| text_field(data, key).map(|v| format!("{label} {v}"));
    let fields = if kind == "settlement.paid" {
        let net = match (
            data.get("net_minor_units").and_then(Value::as_i64),
            data.get("currency").and_then(Value::as_str),
        ) {
            (Some(net), Some(currency)) => Some(format!("net {}", format_money(net, currency))),
            _ => None,
        };
        vec![
            field("window", "window_id"),
            net,
            field("transactions", "transaction_count"),
            field("ref", "payout_reference"),
        ]
    } else {
        vec![
            field("terminal", "terminal_id"),
            field("STAN", "stan"),
            field("RRN", "rrn"),
            amount_text(data),
            field("evidence", "evidence"),
            field("reason", "reason"),
            field("outcome", "outcome"),
            field("reversal reason", "reversal_reason"),
        ]
    };
    fields.into_iter().flatten().collect()
}

/// One line per delivery: type, merchant, key fields, signature verdict.
pub fn delivery_text(delivery: &Delivery, repeat: bool) -> String {
    let signature = match &delivery.verdict {
        Ok(()) => "signature ok".to_owned(),
        Err(reason) => format!("signature INVALID ({reason})"),
    };
    let mut parts = Vec::new();
    match body_object(&delivery.body) {
        Some(body) => {
            let body = Value::Object(body);
            let kind = text_field(&body, "type").unwrap_or_else(|| "?".to_owned());
            parts.push(kind.clone());
            parts.push(text_field(&body, "merchant_id").unwrap_or_else(|| "-".to_owned()));
            if let Some(data) = body.get("data") {
                parts.extend(key_fields(&kind, data));
            }
        }
        None => parts.push(format!(
            "(not a JSON object, {} bytes)",
            delivery.body.len()
        )),
    }
    parts.push(signature);
    if repeat {
        parts.push(format!("(repeat of {})", delivery.event_id));
    }
    parts.join("  ")
}

/// One JSON object per delivery: the webhook body with `signature_valid`
/// (and `signature_error` when it is not, `repeat` for an event id seen
/// before).
pub fn delivery_json(delivery: &Delivery, repeat: bool) -> Value {
    let mut object = body_object(&delivery.body).unwrap_or_else(|| {
        let mut map = Map::new();
        map.insert(
            "raw_body".to_owned(),
            Value::String(String::from_utf8_lossy(&delivery.body).into_owned()),
        );
        map
    });
    object.insert(
        "signature_valid".to_owned(),
        Value::Bool(delivery.verdict.is_ok()),
    );
    if let Err(reason) = &delivery.verdict {
        object.insert("signature_error".to_owned(), json!(reason));
    }
    if repeat {
        object.insert("repeat".to_owned(), Value::Bool(true));
    }
    Value::Object(object)
}

fn now_unix() -> i64 {
    SystemClock.now().unix_timestamp()
}

fn reply(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

/// Verifies one request and hands it to the printer.
async fn receive(
    request: Request<Incoming>,
    secret: Arc<str>,
    deliveries: mpsc::UnboundedSender<Delivery>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::POST {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "webhooks are POSTed\n",
        ));
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let signature = header(SIGNATURE_HEADER);
    let event_id = header(EVENT_ID_HEADER);
    let Ok(body) = request.into_body().collect().await.map(|b| b.to_bytes()) else {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            "the body could not be read\n",
        ));
    };
    let verdict = if signature.is_empty() {
        Err(format!("no {SIGNATURE_HEADER} header"))
    } else {
        verify(&secret, &signature, &body, now_unix(), DEFAULT_TOLERANCE_S)
            .map_err(|e| e.to_string())
    };
    let valid = verdict.is_ok();
    let _ = deliveries.send(Delivery {
        event_id,
        body,
        verdict,
    });
    Ok(if valid {
        reply(StatusCode::OK, "ok\n")
    } else {
        reply(StatusCode::BAD_REQUEST, "signature invalid\n")
    })
}

/// Serves the merchant's endpoint on `listener` until the task is
/// aborted, handing over every delivery, verified with `secret`, as it
/// arrives (`posctl bench --qr` times them).
pub fn serve(
    listener: TcpListener,
    secret: &str,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<Delivery>,
) {
    let secret: Arc<str> = Arc::from(secret);
    let (tx, rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors, say: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (secret, tx) = (secret.clone(), tx.clone());
            tokio::spawn(async move {
                let service =
                    service_fn(move |request| receive(request, secret.clone(), tx.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (server, rx)
}

/// Serves webhooks on `--address` and prints each until `--count`
/// deliveries (or Ctrl-C).
pub async fn run_webhooks(args: WebhooksArgs, json: bool) -> Result<()> {
    let WebhooksCommand::Listen(args) = args.command;
    let listener = TcpListener::bind(args.address)
        .await
        .with_context(|| format!("cannot listen on {}", args.address))?;
    let address = listener.local_addr()?;
    eprintln!("Listening for webhooks on http://{address}/");
    let (server, mut rx) = serve(listener, &args.secret);
    let mut seen = HashSet::new();
    let mut received = 0_u64;
    while let Some(delivery) = rx.recv().await {
        let repeat = !delivery.event_id.is_empty() && !seen.insert(delivery.event_id.clone());
        if json {
            println!("{}", delivery_json(&delivery, repeat));
        } else {
            println!("{}", delivery_text(&delivery, repeat));
        }
        received += 1;
        if args.count.is_some_and(|count| received >= count) {
            break;
        }
    }
    // Let the last answer reach the notifier before the sockets close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.abort();
    eprintln!("{received} webhook(s) received.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(body: &str, verdict: Result<(), String>) -> Delivery {
        Delivery {
            event_id: "0193a5d4-7e1f-7c3a-9d5e-000000000001".into(),
            body: Bytes::from(body.to_owned()),
            verdict,
        }
    }

    const REVERSED: &str = r#"{"id":"0193a5d4-7e1f-7c3a-9d5e-000000000001","type":"payment.reversed","created_at":"2026-11-24T16:00:00Z","merchant_id":"MERCHANT0000001","data":{"transaction_id":"t","terminal_id":"TERM0001","stan":"100008","local_date":"2026-11-24","rrn":"633000000042","masked_pan":"411111******1111","amount":{"minor_units":4200,"currency":"EUR"},"channel":"card","reason":"no_terminal_acknowledgement","reversal_reference":"633000000042","attempts":1,"funds_released_at":"2026-11-24T16:00:00Z"}}"#;

    #[test]
    fn a_payment_webhook_as_text() {
        assert_eq!(
            delivery_text(&delivery(REVERSED, Ok(())), false),
            "payment.reversed  MERCHANT0000001  terminal TERM0001  STAN 100008  \
             RRN 633000000042  EUR 42.00  reason no_terminal_acknowledgement  signature ok"
        );
        let text = delivery_text(
            &delivery(REVERSED, Err("no v1 signature matches the body".into())),
            true,
        );
        assert!(
            text.ends_with(
                "signature INVALID (no v1 signature matches the body)  \
                 (repeat of 0193a5d4-7e1f-7c3a-9d5e-000000000001)"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_payout_webhook_as_text() {
        let body = r#"{"id":"x","type":"settlement.paid","created_at":"2026-11-24T22:00:00Z","merchant_id":"MERCHANT0000002","data":{"window_id":"W-1","currency":"EUR","transaction_count":3,"gross_minor_units":3000,"fee_minor_units":18,"net_minor_units":2982,"payout_reference":"PAY-1","payout_file":"p.xml","paid_at":"2026-11-24T22:00:00Z"}}"#;
        assert_eq!(
            delivery_text(&delivery(body, Ok(())), false),
            "settlement.paid  MERCHANT0000002  window W-1  net EUR 29.82  transactions 3  \
             ref PAY-1  signature ok"
        );
    }

    #[test]
    fn a_body_that_is_not_json_is_still_shown() {
        assert_eq!(
            delivery_text(&delivery("oops", Err("no timestamp".into())), false),
            "(not a JSON object, 4 bytes)  signature INVALID (no timestamp)"
        );
        let value = delivery_json(&delivery("oops", Err("no timestamp".into())), false);
        assert_eq!(
            value,
            json!({"raw_body": "oops", "signature_valid": false, "signature_error": "no timestamp"})
        );
    }

    #[test]
    fn json_is_the_body_with_the_verdict() {
        let value = delivery_json(&delivery(REVERSED, Ok(())), false);
        let mut expected: Value = serde_json::from_str(REVERSED).unwrap();
        expected["signature_valid"] = json!(true);
        assert_eq!(value, expected);
        let value = delivery_json(&delivery(REVERSED, Err("bad".into())), true);
        assert_eq!(value["signature_valid"], false);
        assert_eq!(value["signature_error"], "bad");
        assert_eq!(value["repeat"], true);
        assert_eq!(value["type"], "payment.reversed");
    }

    #[tokio::test]
    async fn the_listener_verifies_answers_and_stops_after_count() {
        let secret = "whsec_posctl_test_secret";
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let server = tokio::spawn(run_webhooks(
            WebhooksArgs {
                command: WebhooksCommand::Listen(ListenArgs {
                    address,
                    secret: secret.to_owned(),
                    count: Some(2),
                }),
            },
            true,
        ));
        let post = |body: &'static str, signature: String| async move {
            for _ in 0..50 {
                if let Ok(stream) = tokio::net::TcpStream::connect(address).await {
                    let (mut sender, connection) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream))
                            .await
                            .unwrap();
                    tokio::spawn(connection);
                    let request = Request::post("/")
                        .header(SIGNATURE_HEADER, signature)
                        .header(EVENT_ID_HEADER, "e1")
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                        .unwrap();
                    return sender.send_request(request).await.unwrap().status();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("the listener never accepted a connection");
        };
        let good = webhook_signature::sign(secret, now_unix(), REVERSED.as_bytes());
        assert_eq!(post(REVERSED, good).await, StatusCode::OK);
        let forged = webhook_signature::sign("whsec_someone_else", now_unix(), REVERSED.as_bytes());
        assert_eq!(post(REVERSED, forged).await, StatusCode::BAD_REQUEST);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("it exits after --count deliveries")
            .unwrap()
            .unwrap();
    }
}
