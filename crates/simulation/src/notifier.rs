//! The notifier in the simulated world: it consumes the authorization and
//! settlement topics through its own offsets and owes, for each event,
//! what [`notify::webhook_for`] and [`notify::terminal_message_for`] say:
//! one delivery to the merchant's endpoint, one message to the terminal.
//!
//! As in `crates/notifier`: event ids are recorded in the consumer's
//! transaction with the deliveries and messages they cause, so a
//! redelivered event owes nothing new. A delivery is claimed with a lease
//! (its next attempt moved past the request timeout, with a fresh token),
//! POSTed over the faulty network, and its attempt recorded only by the
//! claim that holds the lease: delivered on a 2xx, else retried by
//! [`DeliveryRetry::after_failure`] with production's default schedule,
//! dead-lettered once the budget is spent. A crash loses the consumer's
//! uncommitted offsets and the requests in flight; their leases bring the
//! deliveries back. A merchant's endpoint may be down for a while (it
//! answers 500). The merchant deduplicates on `Switch-Event-Id`, as the
//! webhook contract asks, so a repeated delivery of one event is one
//! notification.
//!
//! A terminal message goes through the notifier's outbox, its relay and
//! the gateway's inbox, which stores it once by its id
//! ([`notify::terminal_message_id`]); those three hops are modelled as one
//! reliable step. The gateway pushes an unacknowledged message to its
//! terminal (again every [`PUSH_AGAIN_AFTER`], as a new subscription does)
//! until the terminal acknowledges it; the terminal recognises a message
//! it has seen by its id. A silent terminal never receives it: the
//! gateway keeps it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rand::Rng;
use switch_core::lifecycle::Announcement;
use switch_core::notify::{
    self, AfterFailure, DeliveryRetry, JITTER_PERMILLE, NotifiedEvent, TerminalMessageKind,
    WebhookType,
};
use switch_core::{Evidence, ReversalReason};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::settlement::MAX_BATCH;
use crate::{AuthorizationState, I5_TOLD, R, START, World};

/// Production's default retry settings (`notifier::RetryConfig`).
const RETRY: DeliveryRetry = DeliveryRetry {
    initial_delay_ms: 1_000,
    max_delay_ms: 300_000,
    max_attempts: 12,
};
const REQUEST_TIMEOUT: Duration = Duration::seconds(10);
const LEASE: Duration = Duration::seconds(60);
pub(crate) const PUSH_AGAIN_AFTER: Duration = Duration::seconds(5);
const MAX_OUTAGE_MS: i64 = 60_000;

/// An event's id: its topic and its offset there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum EventRef {
    Authorization(usize),
    Settlement(usize),
}

impl EventRef {
    /// The event's UUID, as the envelope would carry it.
    fn uuid(self) -> Uuid {
        match self {
            EventRef::Authorization(i) => Uuid::from_u128(i as u128 + 1),
            EventRef::Settlement(i) => Uuid::from_u128((1 << 64) + i as u128 + 1),
        }
    }
}

impl fmt::Display for EventRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventRef::Authorization(i) => write!(f, "auth event {i}"),
            EventRef::Settlement(i) => write!(f, "settlement event {i}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeliveryState {
    Pending { next_attempt_at: OffsetDateTime },
    Delivered,
    DeadLettered,
}

#[derive(Debug, Clone)]
struct Delivery {
    event: EventRef,
    kind: WebhookType,
    merchant: usize,
    /// The payment's RRN; `None` for a payout.
    rrn: Option<R>,
    state: DeliveryState,
    budget_used: u32,
    lease: u64,
}

/// A terminal message as the gateway stores it.
#[derive(Debug, Clone)]
struct Message {
    /// The event that caused it.
    event: EventRef,
    terminal: usize,
    rrn: R,
    kind: TerminalMessageKind,
    acknowledged: bool,
    pushed_at: Option<OffsetDateTime>,
}

/// What crosses the network for the notifier.
#[derive(Debug, Clone)]
pub(crate) enum Net {
    Webhook {
        delivery: usize,
        lease: u64,
    },
    WebhookAnswer {
        delivery: usize,
        lease: u64,
        ok: bool,
    },
    Push {
        message: Uuid,
    },
    PushAck {
        message: Uuid,
    },
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Net::Webhook { delivery, lease } => {
                write!(f, "webhook delivery {delivery} lease {lease}")
            }
            Net::WebhookAnswer {
                delivery,
                lease,
                ok,
            } => write!(
                f,
                "webhook answer delivery {delivery} lease {lease}: {}",
                if *ok { "2xx" } else { "500" }
            ),
            Net::Push { message } => write!(f, "push message {message}"),
            Net::PushAck { message } => write!(f, "push ack {message}"),
        }
    }
}

/// What the notifier (or a merchant's endpoint) may do next.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    ConsumeAuthorization,
    ConsumeSettlement,
    CommitOffsets,
    Attempt(usize),
    RequestTimeout(usize),
    Push(Uuid),
    Crash,
    Outage(usize, i64),
}

/// The notifier: processed ids, deliveries and the gateway's messages are
/// committed; offsets' positions and requests in flight are memory. The
/// merchants' and terminals' own records of what they were told live here
/// too, as the other side of the wire.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    processed: BTreeSet<EventRef>,
    committed: (usize, usize),
    position: (usize, usize),
    deliveries: Vec<Delivery>,
    leases: u64,
    in_flight: BTreeMap<usize, (u64, OffsetDateTime)>,
    gateway: BTreeMap<Uuid, Message>,
    /// Per merchant, the event ids its endpoint received, and how often.
    received: BTreeMap<usize, BTreeMap<EventRef, u32>>,
    /// Per merchant, when its endpoint comes back.
    down_until: BTreeMap<usize, OffsetDateTime>,
    /// Message ids each terminal received, and how often.
    terminal_received: BTreeMap<usize, BTreeMap<Uuid, u32>>,
    /// The first delivery dead-lettered, if any.
    dead_lettered: Option<usize>,
}

/// What the notifier did in a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifierStats {
    pub webhooks_owed: u64,
    pub webhooks_delivered: u64,
    pub attempts_failed: u64,
    /// A merchant received an event id it had already received.
    pub webhooks_repeated: u64,
    pub payouts_told: u64,
    pub terminal_messages: u64,
    /// A terminal was pushed a message it had already received.
    pub pushes_repeated: u64,
    pub events_redelivered: u64,
    pub outages: u64,
    pub crashes: u64,
}

impl NotifierStats {
    pub fn add(&mut self, other: &NotifierStats) {
        self.webhooks_owed += other.webhooks_owed;
        self.webhooks_delivered += other.webhooks_delivered;
        self.attempts_failed += other.attempts_failed;
        self.webhooks_repeated += other.webhooks_repeated;
        self.payouts_told += other.payouts_told;
        self.terminal_messages += other.terminal_messages;
        self.pushes_repeated += other.pushes_repeated;
        self.events_redelivered += other.events_redelivered;
        self.outages += other.outages;
        self.crashes += other.crashes;
    }
}

/// What the merchant must have been told of an authorization that ended
/// in `state`, and what its terminal must have been told: problem.md's
/// fifth invariant, stated on its own terms (an orphan is an approval the
/// terminal did not complete; a reversal the terminal asked for is known
/// to it, as is one of an approval it was told was declined; a
/// confirmation by its acknowledgement is the sale it completed).
fn owed(
    state: AuthorizationState,
    evidence: Option<Evidence>,
    reason: Option<ReversalReason>,
) -> (Option<WebhookType>, Option<TerminalMessageKind>) {
    match state {
        AuthorizationState::Reversed => (
            Some(WebhookType::PaymentReversed),
            (!matches!(
                reason,
                Some(ReversalReason::TerminalRequested | ReversalReason::ApprovalNotAccepted)
            ))
            .then_some(TerminalMessageKind::VoidReceipt),
        ),
        AuthorizationState::Confirmed => match evidence {
            Some(Evidence::TerminalAcknowledgement) => (None, None),
            Some(Evidence::Policy) => (
                Some(WebhookType::PaymentConfirmed),
                Some(TerminalMessageKind::ReprintReceipt),
            ),
            _ => (Some(WebhookType::PaymentConfirmed), None),
        },
        _ => (None, None),
    }
}

impl World {
    pub(crate) fn notifier_enabled(&self, actions: &mut Vec<crate::Action>) {
        use crate::Action::Notifier as N;
        let n = &self.notifier;
        if n.position.0 < self.topic.len() {
            actions.push(N(Step::ConsumeAuthorization));
        }
        if n.position.1 < self.settlement.published.len() {
            actions.push(N(Step::ConsumeSettlement));
        }
        if n.committed != n.position {
            actions.push(N(Step::CommitOffsets));
        }
        for (i, delivery) in n.deliveries.iter().enumerate() {
            if let DeliveryState::Pending { next_attempt_at } = delivery.state
                && self.now >= next_attempt_at
            {
                actions.push(N(Step::Attempt(i)));
            }
        }
        for (i, (_, deadline)) in &n.in_flight {
            if self.now >= *deadline {
                actions.push(N(Step::RequestTimeout(*i)));
            }
        }
        for (id, message) in &n.gateway {
            if self.push_due(message).is_some_and(|due| self.now >= due) {
                actions.push(N(Step::Push(*id)));
            }
        }
    }

    /// When the gateway pushes `message` (again), if it does.
    fn push_due(&self, message: &Message) -> Option<OffsetDateTime> {
        if message.acknowledged || self.terminals[message.terminal].silent {
            return None;
        }
        Some(
            message
                .pushed_at
                .map_or(self.now, |at| at + PUSH_AGAIN_AFTER),
        )
    }

    pub(crate) fn notifier_faults(&mut self, chosen: &mut Vec<crate::Action>) {
        let faults = self.config.faults;
        if faults.crash_notifier {
            chosen.push(crate::Action::Notifier(Step::Crash));
        }
        // Rarer than a crash: each outage costs a run several failed
        // attempts per delivery.
        if faults.webhook_outage && self.rng.random_ratio(1, 4) {
            let merchant = self.rng.random_range(0..self.terminals.len());
            let ms = self.rng.random_range(1_000..MAX_OUTAGE_MS);
            chosen.push(crate::Action::Notifier(Step::Outage(merchant, ms)));
        }
    }

    pub(crate) fn notifier_timers(&self) -> Vec<OffsetDateTime> {
        let n = &self.notifier;
        let deliveries = n.deliveries.iter().filter_map(|d| match d.state {
            DeliveryState::Pending { next_attempt_at } => Some(next_attempt_at),
            _ => None,
        });
        let requests = n.in_flight.values().map(|(_, deadline)| *deadline);
        let pushes = n.gateway.values().filter_map(|m| self.push_due(m));
        deliveries.chain(requests).chain(pushes).collect()
    }

    pub(crate) fn notifier_step(&mut self, step: Step) {
        let at = crate::millis_between(START, self.now);
        match step {
            // Whatever has arrived, up to a batch, in one transaction.
            Step::ConsumeAuthorization => {
                let end = self.topic.len().min(self.notifier.position.0 + MAX_BATCH);
                while self.notifier.position.0 < end {
                    let index = self.notifier.position.0;
                    self.notifier.position.0 += 1;
                    self.notifier_consume(EventRef::Authorization(index));
                }
            }
            Step::ConsumeSettlement => {
                let published = self.settlement.published.len();
                let end = published.min(self.notifier.position.1 + MAX_BATCH);
                while self.notifier.position.1 < end {
                    let index = self.notifier.position.1;
                    self.notifier.position.1 += 1;
                    self.notifier_consume(EventRef::Settlement(index));
                }
            }
            Step::CommitOffsets => self.notifier.committed = self.notifier.position,
            Step::Attempt(i) => {
                let n = &mut self.notifier;
                n.leases += 1;
                let lease = n.leases;
                let delivery = &mut n.deliveries[i];
                delivery.lease = lease;
                delivery.state = DeliveryState::Pending {
                    next_attempt_at: self.now + LEASE,
                };
                n.in_flight.insert(i, (lease, self.now + REQUEST_TIMEOUT));
                self.send(crate::Msg::Notifier(Net::Webhook { delivery: i, lease }));
            }
            Step::RequestTimeout(i) => {
                if let Some((lease, _)) = self.notifier.in_flight.remove(&i) {
                    self.record(format!(
                        "{at}ms webhook delivery {i} lease {lease} timed out"
                    ));
                    self.record_attempt(i, lease, false);
                }
            }
            Step::Push(id) => {
                if let Some(message) = self.notifier.gateway.get_mut(&id) {
                    message.pushed_at = Some(self.now);
                    self.send(crate::Msg::Notifier(Net::Push { message: id }));
                }
            }
            Step::Crash => {
                self.stats.notifier.crashes += 1;
                let n = &mut self.notifier;
                self.trace.push(format!(
                    "{at}ms NOTIFIER CRASHES (positions {:?} committed {:?}, {} requests in flight)",
                    n.position,
                    n.committed,
                    n.in_flight.len()
                ));
                n.position = n.committed;
                n.in_flight.clear();
            }
            Step::Outage(merchant, ms) => {
                self.stats.notifier.outages += 1;
                self.record(format!(
                    "{at}ms MERCHANT {merchant} ENDPOINT DOWN for {ms}ms"
                ));
                self.notifier
                    .down_until
                    .insert(merchant, self.now + Duration::milliseconds(ms));
            }
        }
    }

    /// The consumer's adapter: a processed event owes nothing new; another
    /// owes what core's rule says, recorded with its id in one step.
    fn notifier_consume(&mut self, event: EventRef) {
        if !self.notifier.processed.insert(event) {
            self.stats.notifier.events_redelivered += 1;
            return;
        }
        let (outcome, merchant, rrn) = match event {
            EventRef::Authorization(i) => {
                let e = &self.topic[i];
                let outcome = match (&e.announcement, e.evidence, e.reason) {
                    (Announcement::Confirmed, Some(evidence), _) => {
                        NotifiedEvent::Confirmed { evidence }
                    }
                    (Announcement::Reversed { .. }, _, Some(reason)) => {
                        NotifiedEvent::Reversed { reason }
                    }
                    (Announcement::AcknowledgementConflict, _, Some(reversal_reason)) => {
                        NotifiedEvent::AcknowledgementConflict { reversal_reason }
                    }
                    _ => return,
                };
                let Some(key) = self.authorization.by_rrn.get(&e.rrn) else {
                    return;
                };
                (outcome, key.0, Some(e.rrn.clone()))
            }
            EventRef::Settlement(i) => (
                NotifiedEvent::MerchantPaid,
                self.settlement.published[i].merchant,
                None,
            ),
        };
        if let Some(kind) = notify::webhook_for(outcome) {
            self.stats.notifier.webhooks_owed += 1;
            self.notifier.deliveries.push(Delivery {
                event,
                kind,
                merchant,
                rrn: rrn.clone(),
                state: DeliveryState::Pending {
                    next_attempt_at: self.now,
                },
                budget_used: 0,
                lease: 0,
            });
        }
        if let (Some(kind), Some(rrn)) = (notify::terminal_message_for(outcome), rrn) {
            let id = notify::terminal_message_id(event.uuid(), kind);
            let terminal = merchant;
            self.notifier.gateway.entry(id).or_insert_with(|| {
                self.stats.notifier.terminal_messages += 1;
                Message {
                    event,
                    terminal,
                    rrn,
                    kind,
                    acknowledged: false,
                    pushed_at: None,
                }
            });
        }
    }

    /// Records an attempt's result, if the claim still holds the lease.
    fn record_attempt(&mut self, i: usize, lease: u64, ok: bool) {
        let jitter = self.rng.random_range(JITTER_PERMILLE);
        let delivery = &mut self.notifier.deliveries[i];
        if delivery.lease != lease || !matches!(delivery.state, DeliveryState::Pending { .. }) {
            return;
        }
        if ok {
            delivery.state = DeliveryState::Delivered;
            self.stats.notifier.webhooks_delivered += 1;
            return;
        }
        self.stats.notifier.attempts_failed += 1;
        delivery.state = match RETRY.after_failure(delivery.budget_used, jitter) {
            AfterFailure::Retry(delay) => DeliveryState::Pending {
                next_attempt_at: self.now + delay,
            },
            AfterFailure::DeadLettered => {
                self.notifier.dead_lettered.get_or_insert(i);
                DeliveryState::DeadLettered
            }
        };
        delivery.budget_used += 1;
    }

    pub(crate) fn notifier_deliver(&mut self, net: Net) {
        match net {
            Net::Webhook { delivery, lease } => {
                let d = &self.notifier.deliveries[delivery];
                let (merchant, event) = (d.merchant, d.event);
                let down = self
                    .notifier
                    .down_until
                    .get(&merchant)
                    .is_some_and(|until| self.now < *until);
                if !down {
                    let seen = self
                        .notifier
                        .received
                        .entry(merchant)
                        .or_default()
                        .entry(event)
                        .or_default();
                    *seen += 1;
                    if *seen > 1 {
                        self.stats.notifier.webhooks_repeated += 1;
                    } else if matches!(event, EventRef::Settlement(_)) {
                        self.stats.notifier.payouts_told += 1;
                    }
                }
                self.send(crate::Msg::Notifier(Net::WebhookAnswer {
                    delivery,
                    lease,
                    ok: !down,
                }));
            }
            Net::WebhookAnswer {
                delivery,
                lease,
                ok,
            } => {
                // The answer of a request made before a crash has lost its
                // connection; a request that timed out was recorded.
                if self.notifier.in_flight.get(&delivery).map(|(l, _)| *l) == Some(lease) {
                    self.notifier.in_flight.remove(&delivery);
                    self.record_attempt(delivery, lease, ok);
                }
            }
            Net::Push { message } => {
                let Some(m) = self.notifier.gateway.get(&message) else {
                    return;
                };
                let terminal = m.terminal;
                if self.terminals[terminal].silent {
                    return;
                }
                let seen = self
                    .notifier
                    .terminal_received
                    .entry(terminal)
                    .or_default()
                    .entry(message)
                    .or_default();
                *seen += 1;
                if *seen > 1 {
                    self.stats.notifier.pushes_repeated += 1;
                }
                self.send(crate::Msg::Notifier(Net::PushAck { message }));
            }
            Net::PushAck { message } => {
                if let Some(m) = self.notifier.gateway.get_mut(&message) {
                    m.acknowledged = true;
                }
            }
        }
    }

    fn is_conflict(&self, event: EventRef) -> bool {
        matches!(event, EventRef::Authorization(i)
            if self.topic[i].announcement == Announcement::AcknowledgementConflict)
    }

    /// After every step: nothing the merchant received contradicts the
    /// journal (confirmed and reversed are final, so an announced outcome
    /// stays true).
    pub(crate) fn check_notifier_always(&self) -> Result<(), crate::Violation> {
        if let Some(i) = self.notifier.dead_lettered {
            let delivery = &self.notifier.deliveries[i];
            return Err(self.violation(
                I5_TOLD,
                format!(
                    "{} {} to merchant {} dead-lettered: announced but lost",
                    delivery.kind, delivery.event, delivery.merchant
                ),
                delivery.rrn.as_ref(),
            ));
        }
        Ok(())
    }

    /// At quiescence: each merchant received, once after deduplication on
    /// the event id, the outcome of each of its payments it is owed and
    /// nothing else, and every payout; each terminal that still speaks
    /// received and acknowledged each message it is owed, and a silent
    /// terminal's are kept at the gateway; nothing owed is left undelivered.
    pub(crate) fn check_notifier_quiescent(&self) -> Result<(), crate::Violation> {
        let n = &self.notifier;
        let received_by = |merchant: usize, rrn: &R, kind: WebhookType| {
            n.deliveries
                .iter()
                .filter(|d| d.merchant == merchant && d.rrn.as_ref() == Some(rrn) && d.kind == kind)
                .filter(|d| {
                    n.received
                        .get(&merchant)
                        .is_some_and(|events| events.contains_key(&d.event))
                })
                .map(|d| d.event)
                .collect::<BTreeSet<_>>()
        };
        for (key, record) in &self.authorization.journal {
            let rrn = R(record.rrn.clone());
            let (webhook, message) = owed(
                record.state,
                record.confirmation_evidence,
                record.reversal_reason,
            );
            for kind in [WebhookType::PaymentConfirmed, WebhookType::PaymentReversed] {
                let told = received_by(key.0, &rrn, kind).len();
                let expected = usize::from(webhook == Some(kind));
                if told != expected {
                    return Err(self.violation(
                        I5_TOLD,
                        format!(
                            "{rrn} ends {}: merchant {} received {told} distinct {kind} \
                             events, owed {expected}",
                            record.state, key.0
                        ),
                        Some(&rrn),
                    ));
                }
            }
            // A conflict (acknowledged after the reversal) owes a message
            // of its own, checked below with the conflicts.
            let kept: Vec<&Message> = n
                .gateway
                .values()
                .filter(|m| m.rrn == rrn && !self.is_conflict(m.event))
                .collect();
            let expected = usize::from(message.is_some());
            let right_kind = kept.iter().all(|m| Some(m.kind) == message);
            if kept.len() != expected || !right_kind {
                return Err(self.violation(
                    I5_TOLD,
                    format!(
                        "{rrn} ends {}: the gateway keeps {:?} for terminal {}, owed {message:?}",
                        record.state,
                        kept.iter().map(|m| m.kind).collect::<Vec<_>>(),
                        key.0
                    ),
                    Some(&rrn),
                ));
            }
            let silent = self.terminals[key.0].silent;
            for (id, m) in n.gateway.iter().filter(|(_, m)| m.rrn == rrn) {
                let received = n
                    .terminal_received
                    .get(&m.terminal)
                    .is_some_and(|ids| ids.contains_key(id));
                let told = m.acknowledged && received;
                if !silent && !told {
                    return Err(self.violation(
                        I5_TOLD,
                        format!(
                            "{rrn}: terminal {} never acknowledged its {} message",
                            m.terminal, m.kind
                        ),
                        Some(&rrn),
                    ));
                }
            }
        }
        for (i, event) in self.topic.iter().enumerate() {
            if event.announcement != Announcement::AcknowledgementConflict {
                continue;
            }
            let cause = EventRef::Authorization(i);
            let voided = n
                .gateway
                .values()
                .any(|m| m.event == cause && m.kind == TerminalMessageKind::VoidReceipt);
            let flagged = n
                .deliveries
                .iter()
                .any(|d| d.event == cause && d.kind == WebhookType::PaymentConflict);
            if !voided || !flagged {
                return Err(self.violation(
                    I5_TOLD,
                    format!(
                        "{}: acknowledged after its reversal, void message {voided}, \
                         conflict webhook {flagged}",
                        event.rrn
                    ),
                    Some(&event.rrn),
                ));
            }
        }
        for delivery in &n.deliveries {
            let received = n
                .received
                .get(&delivery.merchant)
                .is_some_and(|events| events.contains_key(&delivery.event));
            if delivery.state != DeliveryState::Delivered || !received {
                return Err(self.violation(
                    I5_TOLD,
                    format!(
                        "{} {} to merchant {} ends {:?}",
                        delivery.kind, delivery.event, delivery.merchant, delivery.state
                    ),
                    delivery.rrn.as_ref(),
                ));
            }
        }
        for (i, paid) in self.settlement.published.iter().enumerate() {
            let told = n
                .received
                .get(&paid.merchant)
                .is_some_and(|events| events.contains_key(&EventRef::Settlement(i)));
            if !told {
                return Err(self.violation(
                    I5_TOLD,
                    format!(
                        "merchant {} never told of its payout of window {} at {}ms",
                        paid.merchant,
                        paid.window,
                        crate::millis_between(START, paid.at)
                    ),
                    None,
                ));
            }
        }
        Ok(())
    }
}
