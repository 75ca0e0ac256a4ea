//! Terminal push: messages from the notifier reach connected terminals.
//!
//! - The [`Inbox`] consumes `terminal-messages` (consumer group
//!   `terminal-gateway`, shared by the replicas) and stores each message in
//!   the gateway's schema, once, with a `pg_notify` of its terminal id in the
//!   same transaction.
//! - [`listen`] receives those notifications, whichever replica stored the
//!   message, and wakes the subscriptions of that terminal in this process
//!   through the [`Hub`].
//! - [`stream_messages`] serves one `Subscribe`: every unacknowledged
//!   message of the terminal in sequence order, then newer ones as they are
//!   stored, woken by the hub. An idle subscription costs no query: it reads
//!   only when woken, and notifications lost while the listener reconnected
//!   are made up by waking every subscription once it is back. Each
//!   subscription sends a message at most once; a message not
//!   acknowledged is sent again by the next subscription. A terminal has
//!   one subscription per gateway: a new one replaces the old, which ends
//!   with ABORTED.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use switch_platform::consumer::{EventHandler, HandlerError, HandlerFuture};
use switch_proto::v1::event_envelope::Payload;
use switch_proto::v1::{EventEnvelope, TerminalMessage, TerminalMessageRequested};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::edge::Edge;
use crate::identity::TerminalIdentity;
use crate::metrics::Metrics;
use crate::store;

/// Messages read per query while a subscription catches up.
const PAGE: i64 = 100;

/// How often the total backlog gauge is refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// The open subscription of each terminal in this process, and how to
/// wake it. A terminal has at most one: a new `Subscribe` replaces the
/// one before (a terminal that reconnected, or a second device with the
/// same certificate), which then ends with ABORTED, so a stream a
/// terminal abandoned without closing holds nothing for long.
#[derive(Clone, Default)]
pub struct Hub {
    terminals: Arc<Mutex<HashMap<String, Registered>>>,
}

struct Registered {
    wake: watch::Sender<()>,
    /// Cancelled when a newer subscription of the terminal replaces it.
    replaced: CancellationToken,
    /// Which subscription this is, so a replaced one dropping late does
    /// not unregister its successor.
    generation: u64,
}

impl Hub {
    /// Registers the subscription of `terminal_id`, replacing the one
    /// before it; it is woken by every [`Hub::notify`] of that terminal
    /// from now on. Returns whether a previous subscription was replaced.
    pub fn subscribe(&self, terminal_id: &str) -> (Subscription, bool) {
        let mut terminals = self.lock();
        let (generation, replaced_one) = match terminals.get(terminal_id) {
            Some(previous) => {
                previous.replaced.cancel();
                (previous.generation.wrapping_add(1), true)
            }
            None => (0, false),
        };
        let (wake, receiver) = watch::channel(());
        let replaced = CancellationToken::new();
        terminals.insert(
            terminal_id.to_owned(),
            Registered {
                wake,
                replaced: replaced.clone(),
                generation,
            },
        );
        (
            Subscription {
                hub: self.clone(),
                terminal_id: terminal_id.to_owned(),
                receiver,
                replaced,
                generation,
            },
            replaced_one,
        )
    }

    /// Wakes the subscription of `terminal_id` in this process.
    pub fn notify(&self, terminal_id: &str) {
        if let Some(registered) = self.lock().get(terminal_id) {
            registered.wake.send_modify(|()| {});
        }
    }

    /// Wakes every subscription (after notifications may have been lost).
    pub fn notify_all(&self) {
        for registered in self.lock().values() {
            registered.wake.send_modify(|()| {});
        }
    }

    /// Terminals with an open subscription in this process.
    pub fn terminals(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Registered>> {
        // A panic while holding the lock leaves the map consistent.
        self.terminals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One subscription's registration with the [`Hub`].
pub struct Subscription {
    hub: Hub,
    terminal_id: String,
    receiver: watch::Receiver<()>,
    replaced: CancellationToken,
    generation: u64,
}

impl Subscription {
    /// Resolves when the terminal may have a new message.
    pub async fn changed(&mut self) {
        if self.receiver.changed().await.is_err() {
            // The sender went with a replacement: wait for `replaced`
            // instead of spinning.
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once a newer subscription of the terminal replaced this
    /// one.
    pub fn replaced(&self) -> impl Future<Output = ()> + Send + 'static {
        self.replaced.clone().cancelled_owned()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut terminals = self.hub.lock();
        if terminals
            .get(&self.terminal_id)
            .is_some_and(|registered| registered.generation == self.generation)
        {
            terminals.remove(&self.terminal_id);
        }
    }
}

/// Stores the messages of `terminal-messages`, once each, and announces
/// them on `channel`.
pub struct Inbox {
    /// The `pg_notify` channel of this deployment's gateways.
    channel: String,
    metrics: Metrics,
}

impl Inbox {
    pub fn new(channel: impl Into<String>, metrics: Metrics) -> Self {
        Inbox {
            channel: channel.into(),
            metrics,
        }
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &EventEnvelope,
    ) -> Result<(), HandlerError> {
        let Some(Payload::TerminalMessageRequested(requested)) = &event.payload else {
            return Ok(());
        };
        let (message_id, message) = match to_terminal_message(event, requested) {
            Ok(converted) => converted,
            Err(reason) => {
                tracing::error!(
                    event_id = %event.event_id,
                    reason,
                    "Terminal message cannot be kept; skipped."
                );
                return Ok(());
            }
        };
        let terminal_id = requested.terminal_id.as_str();
        if store::insert(&mut *conn, message_id, terminal_id, &message).await? {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.channel)
                .bind(terminal_id)
                .execute(&mut *conn)
                .await?;
            self.metrics.received(&message.kind);
            tracing::debug!(%message_id, %terminal_id, kind = %message.kind, "Terminal message kept.");
        }
        Ok(())
    }
}

impl EventHandler for Inbox {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a EventEnvelope,
    ) -> HandlerFuture<'a> {
        Box::pin(self.apply(tx, event))
    }
}

/// The message a terminal receives for `requested` (sequence still 0), and
/// its id. Refuses a message without a terminal or a UUID id.
pub fn to_terminal_message(
    event: &EventEnvelope,
    requested: &TerminalMessageRequested,
) -> Result<(Uuid, TerminalMessage), &'static str> {
    let message_id =
        Uuid::parse_str(&requested.message_id).map_err(|_| "message id is not a UUID")?;
    if requested.terminal_id.trim().is_empty() {
        return Err("message names no terminal");
    }
    let facts = requested.facts.clone().unwrap_or_default();
    let created_at = event
        .occurred_at
        .as_ref()
        .and_then(|ts| {
            let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
            OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
        })
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_default();
    Ok((
        message_id,
        TerminalMessage {
            message_id: message_id.to_string(),
            sequence: 0,
            kind: requested.kind.clone(),
            transaction_id: event.transaction_id.clone(),
            stan: facts.stan,
            local_date: facts.local_date,
            rrn: facts.rrn,
            amount: facts.amount,
            masked_pan: facts.masked_pan,
            approval_code: requested.approval_code.clone(),
            reason: requested.reason,
            text: requested.text.clone(),
            created_at,
        },
    ))
}

/// Wakes the hub's subscriptions whenever any replica stores a message
/// (`pg_notify` on `channel`, payload the terminal id), until `stop`.
/// After each (re)connection it wakes every subscription, since
/// notifications sent meanwhile are lost.
pub async fn listen(pool: PgPool, channel: String, hub: Hub, stop: CancellationToken) {
    let on_notification = |terminal_id: &str| hub.notify(terminal_id);
    switch_platform::db::listen(pool, channel, stop, || hub.notify_all(), on_notification).await;
}

/// Refreshes the total backlog gauge until `stop`.
pub async fn report_backlog(pool: PgPool, metrics: Metrics, stop: CancellationToken) {
    loop {
        match store::total_backlog(&pool).await {
            Ok(total) => metrics.unacknowledged(total),
            Err(error) => tracing::debug!(%error, "Terminal backlog could not be counted."),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(GAUGE_INTERVAL) => {}
        }
    }
}

/// What a subscription needs from the gateway.
#[derive(Clone)]
pub struct Push {
    pub pool: PgPool,
    pub hub: Hub,
    pub metrics: Metrics,
    /// A stream whose certificate is revoked or terminal suspended by a
    /// reload ends with PERMISSION_DENIED.
    pub edge: Edge,
    /// Cancelled when the gateway shuts down: open streams end with
    /// UNAVAILABLE, so the server can stop and terminals subscribe again.
    pub stop: CancellationToken,
}

/// Serves one subscription of `terminal_id` into `tx` until the terminal
/// hangs up, the gateway stops, or the database fails (the stream then
/// ends with UNAVAILABLE and the terminal subscribes again).
///
/// `subscription` is registered before the call is answered, so of two
/// `Subscribe` calls of a terminal the later one is the one that stays,
/// and before the first read, so a message stored meanwhile wakes it.
pub async fn stream_messages(
    push: Push,
    mut subscription: Subscription,
    identity: TerminalIdentity,
    tx: mpsc::Sender<Result<TerminalMessage, Status>>,
) {
    let terminal_id = identity.terminal_id.clone();
    // Watched from before the check, so a reload between the call's own
    // check and this one is not missed.
    let mut reloads = push.edge.reloads();
    if refused_by_edge(&push, &identity, &tx) {
        return;
    }
    let _counted = push.metrics.subscriber();
    match store::backlog(&push.pool, &terminal_id).await {
        Ok(size) => {
            push.metrics
                .backlog_at_subscribe(u64::try_from(size).unwrap_or_default());
            tracing::info!(%terminal_id, backlog = size, "Terminal subscribed.");
        }
        Err(error) => return fail(&tx, &terminal_id, &error),
    }
    let mut last_sent = 0_i64;
    loop {
        let page = match store::unacknowledged(&push.pool, &terminal_id, last_sent, PAGE).await {
            Ok(page) => page,
            Err(error) => return fail(&tx, &terminal_id, &error),
        };
        let more = i64::try_from(page.len()).unwrap_or(PAGE) >= PAGE;
        for message in page {
            last_sent = i64::try_from(message.sequence).unwrap_or(last_sent);
            let kind = message.kind.clone();
            tokio::select! {
                sent = tx.send(Ok(message)) => if sent.is_err() {
                    tracing::info!(%terminal_id, "Terminal unsubscribed.");
                    return;
                },
                () = push.stop.cancelled() => return stopping(&tx),
                () = subscription.replaced() => return replaced(&tx, &terminal_id),
            }
            push.metrics.pushed(&kind);
        }
        if more {
            continue;
        }
        tokio::select! {
            () = push.stop.cancelled() => return stopping(&tx),
            () = tx.closed() => {
                tracing::info!(%terminal_id, "Terminal unsubscribed.");
                return;
            }
            () = subscription.replaced() => return replaced(&tx, &terminal_id),
            () = subscription.changed() => {}
            () = reloaded(&mut reloads) => if refused_by_edge(&push, &identity, &tx) {
                return;
            },
        }
    }
}

fn fail(
    tx: &mpsc::Sender<Result<TerminalMessage, Status>>,
    terminal_id: &str,
    error: &sqlx::Error,
) {
    tracing::warn!(%error, %terminal_id, "Terminal messages cannot be read; the subscription ends.");
    let _ = tx.try_send(Err(Status::unavailable(
        "terminal messages are unavailable; subscribe again",
    )));
}

/// Ends the stream with PERMISSION_DENIED when the edge's files now
/// revoke the certificate or suspend the terminal.
fn refused_by_edge(
    push: &Push,
    identity: &TerminalIdentity,
    tx: &mpsc::Sender<Result<TerminalMessage, Status>>,
) -> bool {
    let Some(refusal) = push.edge.refusal(identity) else {
        return false;
    };
    push.metrics.request_refused(refusal.reason());
    tracing::info!(terminal_id = %identity.terminal_id, %refusal, "Subscription ended by the terminal edge.");
    let _ = tx.try_send(Err(Status::permission_denied(refusal.to_string())));
    true
}

/// Resolves at the edge's next reload (never, should its sender go).
async fn reloaded(reloads: &mut watch::Receiver<u64>) {
    if reloads.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn replaced(tx: &mpsc::Sender<Result<TerminalMessage, Status>>, terminal_id: &str) {
    tracing::info!(%terminal_id, "Terminal subscribed again; the older subscription ends.");
    let _ = tx.try_send(Err(Status::aborted(format!(
        "a newer Subscribe stream of terminal {terminal_id} replaced this one"
    ))));
}

fn stopping(tx: &mpsc::Sender<Result<TerminalMessage, Status>>) {
    let _ = tx.try_send(Err(Status::unavailable(
        "the gateway is shutting down; subscribe again",
    )));
}

#[cfg(test)]
mod tests {
    use super::*;
    use switch_proto::v1::{AuthorizationFacts, Money};

    fn no_terminal_acknowledgement() -> switch_proto::v1::OutcomeReason {
        use switch_proto::v1::{OutcomeReason, ReversalReason, outcome_reason::Reason};
        OutcomeReason {
            reason: Some(Reason::ReversalReason(
                ReversalReason::NoTerminalAcknowledgement.into(),
            )),
        }
    }

    #[tokio::test]
    async fn the_hub_wakes_only_the_terminal_named_and_forgets_it_with_its_subscription() {
        let hub = Hub::default();
        let (mut first, replaced) = hub.subscribe("TERM0001");
        assert!(!replaced);
        let (mut other, _) = hub.subscribe("TERM0003");
        assert_eq!(hub.terminals(), 2);

        hub.notify("TERM0001");
        tokio::time::timeout(Duration::from_secs(1), first.changed())
            .await
            .expect("the subscription is woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other.changed())
                .await
                .is_err(),
            "another terminal is not woken"
        );
        // A wake-up before the wait is not lost.
        hub.notify_all();
        tokio::time::timeout(Duration::from_secs(1), other.changed())
            .await
            .expect("notify_all wakes every terminal");

        drop(first);
        assert_eq!(hub.terminals(), 1);
        drop(other);
        assert_eq!(hub.terminals(), 0);
        hub.notify("TERM0001");
    }

    #[tokio::test]
    async fn a_new_subscription_replaces_the_old_one_of_the_same_terminal() {
        let hub = Hub::default();
        let (old, _) = hub.subscribe("TERM0001");
        let (mut new, replaced) = hub.subscribe("TERM0001");
        assert!(replaced);
        tokio::time::timeout(Duration::from_secs(1), old.replaced())
            .await
            .expect("the old subscription learns it was replaced");
        assert_eq!(hub.terminals(), 1);
        // The replaced one going away late leaves its successor registered.
        drop(old);
        assert_eq!(hub.terminals(), 1);
        hub.notify("TERM0001");
        tokio::time::timeout(Duration::from_secs(1), new.changed())
            .await
            .expect("the new subscription is the one woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), new.replaced())
                .await
                .is_err(),
            "the new subscription is not replaced"
        );
        drop(new);
        assert_eq!(hub.terminals(), 0);
    }

    #[test]
    fn a_requested_message_becomes_what_the_terminal_receives() {
        let event = EventEnvelope {
            event_id: "0193a5d4-7e1f-7c3a-9d5e-000000000001".into(),
            transaction_id: "0193a5d4-7e1f-7c3a-9d5e-0000000000aa".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_764_000_000,
                nanos: 0,
            }),
            ..EventEnvelope::default()
        };
        let requested = TerminalMessageRequested {
            message_id: "6b1c29d4-8f0e-5a57-9c1b-7e52d3a0f6e1".into(),
            terminal_id: "TERM0001".into(),
            merchant_id: "MERCHANT0000001".into(),
            kind: "void_receipt".into(),
            facts: Some(AuthorizationFacts {
                terminal_id: "TERM0001".into(),
                merchant_id: "MERCHANT0000001".into(),
                stan: "100008".into(),
                local_date: "2026-11-24".into(),
                rrn: "633000000042".into(),
                masked_pan: "411111******1111".into(),
                amount: Some(Money {
                    minor_units: 4200,
                    currency: "EUR".into(),
                }),
                channel: "card".into(),
            }),
            approval_code: String::new(),
            reason: Some(no_terminal_acknowledgement()),
            text: "Payment of EUR 42.00 (STAN 100008) was reversed: void the receipt".into(),
        };
        let (id, message) = to_terminal_message(&event, &requested).unwrap();
        assert_eq!(id.to_string(), requested.message_id);
        assert_eq!(message.sequence, 0);
        assert_eq!(message.kind, "void_receipt");
        assert_eq!(message.transaction_id, event.transaction_id);
        assert_eq!(message.stan, "100008");
        assert_eq!(message.local_date, "2026-11-24");
        assert_eq!(message.rrn, "633000000042");
        assert_eq!(message.masked_pan, "411111******1111");
        assert_eq!(message.amount.as_ref().unwrap().minor_units, 4200);
        assert_eq!(message.reason, Some(no_terminal_acknowledgement()));
        assert_eq!(message.text, requested.text);
        assert_eq!(message.created_at, "2025-11-24T16:00:00Z");

        let mut no_terminal = requested.clone();
        no_terminal.terminal_id.clear();
        assert!(to_terminal_message(&event, &no_terminal).is_err());
        let mut bad_id = requested;
        bad_id.message_id = "x".into();
        assert!(to_terminal_message(&event, &bad_id).is_err());
    }
}
