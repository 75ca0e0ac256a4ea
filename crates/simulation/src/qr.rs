//! QR payments in the simulated world (issue 15): terminals that start QR
//! payments in both modes, shoppers who pay at once, late, never or not
//! at all, a QR platform with its own ledger and its signed notifications
//! (retried on the platform's schedule until answered), and the switch's
//! QR shell: the journal of [`QrPayment`] records, its query schedule, its
//! terminal-deadline sweep and its durable queue of owed cancels, closes
//! and refunds, every decision taken by [`switch_core::qr::decide`].
//!
//! The network is the same faulty one as the card world's (loss,
//! duplication, delay up to 30 s), so notifications are lost and
//! duplicated, queries time out, and a shopper's payment races the close
//! that the switch sends once the query limit passes. The platform goes
//! down for up to a minute (the card world's `issuer_outage` fault), also
//! while a cancel is owed; the switch restarts (its `crash_authorization_idle`
//! fault): calls in flight are lost with their connections, the journal and
//! the queue survive. Terminals fall silent (`terminal_silence`), so an
//! approval is never acknowledged and becomes an orphan.
//!
//! Invariants. After every step: at most one outcome (failed, closed,
//! refunded, confirmed) is announced per payment, a final state never
//! changes, and the platform's word never contradicts the switch (no
//! command the shell sends is refused). At quiescence: every payment is
//! final; the platform's ledger agrees with the switch (no charge left for
//! a payment the switch considers refunded, closed or failed; every charge
//! is confirmed or refunded, with the same platform transaction); a
//! confirmed payment was acknowledged by its terminal or confirmed by its
//! merchant's policy; the notifier is owed exactly one `payment.reversed`
//! with a `void_receipt` per refunded payment and one `payment.confirmed`
//! with a `reprint_receipt` per payment confirmed by policy, nothing for
//! the rest but the one conflict notice of a terminal that acknowledged a
//! payment being refunded.
//!
//! Assumptions: the platform refuses to create or pay an order it has
//! closed (`ORDERCLOSED`), answers a close of a paid order "paid" and a
//! cancel of a paid order by refunding it, and refunds once per request
//! id. Only merchant-presented orders are notified. The notifier's own
//! deliveries (webhook retries) of QR notices, the journal's write
//! failures and partial refunds are not modelled for QR; a terminal's
//! retry of its request is the network's duplicate of it (answered with
//! the original's [`qr::terminal_answer`]). The owed call's maximum age
//! (60 s) is shorter than an outage and its backoff, so some dead-letter;
//! an operator redrives each two minutes later if it is still listed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration as StdDuration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switch_core::lifecycle::RequestKey;
use switch_core::notify::{TerminalMessageKind, WebhookType};
use switch_core::qr::{
    self, CancelAnswer, CancelAttempt, CancelKind, OrderCreation, OrderId, PlatformCall,
    PlatformRequestId, PlatformTradeState, PlatformTxnId, QrCommand, QrDecision, QrEffect, QrEvent,
    QrIntent, QrMode, QrNotice, QrPayment, QrState, QrTerminalAnswer, QrWindows,
};
use switch_core::{
    Currency, Evidence, LocalDate, MerchantId, Money, OrphanPolicy, RetrySchedule, Stan,
    TerminalId, TransactionId,
};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::{Config, START, Violation};

/// Every payment ends failed, closed, refunded or confirmed.
pub const Q1_FINAL: &str = "Q1 every QR payment ends in exactly one final state";
/// The platform's ledger agrees with the switch.
pub const Q2_LEDGER: &str = "Q2 the platform's ledger agrees with the switch";
/// At most one outcome, and final states never change.
pub const Q3_ONE_OUTCOME: &str = "Q3 a QR payment has at most one outcome, never changed";
/// Confirmed only by the terminal's acknowledgement or by policy.
pub const Q4_CONFIRMED: &str = "Q4 a confirmed QR payment was printed or confirmed by policy";
/// Who is told.
pub const Q5_TOLD: &str = "Q5 merchant and terminal are owed one notice per orphan's outcome";
/// The shell never sends a command the core refuses.
pub const Q6_AGREED: &str = "Q6 the platform's word never contradicts the switch";

/// The terminal waits 30 s; the switch queries every 5 s for 45 s.
const WINDOWS: QrWindows = QrWindows::WECHAT;
/// The switch's HTTPS calls to the platform give up after this.
const CALL_TIMEOUT: Duration = Duration::seconds(5);
const CANCEL_SCHEDULE: RetrySchedule = RetrySchedule {
    initial_delay_ms: 1_000,
    max_delay_ms: 30_000,
    // Shorter than the longest outage plus its backoff, so some owed
    // calls dead-letter and an operator redrives them.
    max_age_ms: 60_000,
};
/// An operator redrives a dead-lettered call this long after it was
/// dead-lettered.
const OPERATOR_REACTS: Duration = Duration::minutes(2);
/// WeChat's notification retries, in seconds after the payment.
const NOTIFY_AFTER: [i64; 6] = [0, 15, 15, 30, 180, 600];
const TRACE_LEN: usize = 15;
const MAX_STEPS_PER_PAYMENT: usize = 1_500;

/// What happened in the QR runs: which paths they exercised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QrStats {
    pub payments: u64,
    pub consumer_presented: u64,
    pub merchant_presented: u64,
    pub confirmed_by_terminal: u64,
    /// S3: paid after the terminal stopped waiting (or never acknowledged).
    pub orphans_confirmed: u64,
    pub orphans_refunded: u64,
    /// A close or cancel that met a payment and became a refund.
    pub races_refunded: u64,
    pub closed: u64,
    pub failed: u64,
    /// A charge the switch first learnt of from its own query.
    pub paid_found_by_query: u64,
    pub notifications_applied: u64,
    /// Duplicate or repeated notifications: recorded no-ops.
    pub notifications_ignored: u64,
    pub query_timeouts: u64,
    pub cancel_retries: u64,
    pub platform_outages: u64,
    pub platform_refusals: u64,
    pub switch_crashes: u64,
    pub acknowledgement_conflicts: u64,
    pub cancels_dead_lettered: u64,
    pub redrives: u64,
}

impl QrStats {
    pub fn add(&mut self, o: &QrStats) {
        self.payments += o.payments;
        self.consumer_presented += o.consumer_presented;
        self.merchant_presented += o.merchant_presented;
        self.confirmed_by_terminal += o.confirmed_by_terminal;
        self.orphans_confirmed += o.orphans_confirmed;
        self.orphans_refunded += o.orphans_refunded;
        self.races_refunded += o.races_refunded;
        self.closed += o.closed;
        self.failed += o.failed;
        self.paid_found_by_query += o.paid_found_by_query;
        self.notifications_applied += o.notifications_applied;
        self.notifications_ignored += o.notifications_ignored;
        self.query_timeouts += o.query_timeouts;
        self.cancel_retries += o.cancel_retries;
        self.platform_outages += o.platform_outages;
        self.platform_refusals += o.platform_refusals;
        self.switch_crashes += o.switch_crashes;
        self.acknowledgement_conflicts += o.acknowledgement_conflicts;
        self.cancels_dead_lettered += o.cancels_dead_lettered;
        self.redrives += o.redrives;
    }
}

/// A payment's number in the run; its order id is derived from it.
type P = usize;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Pay,
    CreateOrder,
    Query,
    Cancel(CancelKind, PlatformRequestId),
}

#[derive(Debug, Clone)]
enum Answer {
    Trade(PlatformTradeState),
    Created(OrderCreation),
    Cancel(CancelAnswer),
    /// The platform is down: UNAVAILABLE.
    Refused,
}

#[derive(Debug, Clone)]
enum Msg {
    /// The terminal's QR request.
    Start {
        p: P,
    },
    ToTerminal {
        p: P,
        answer: QrTerminalAnswer,
    },
    Ack {
        p: P,
    },
    Call {
        p: P,
        id: u64,
        incarnation: u32,
        call: Call,
    },
    CallAnswer {
        p: P,
        id: u64,
        incarnation: u32,
        answer: Answer,
    },
    Notification {
        p: P,
        txn: PlatformTxnId,
    },
    NotificationAnswered {
        p: P,
    },
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Start { p } => write!(f, "qr request #{p}"),
            Msg::ToTerminal { p, answer } => write!(f, "to terminal #{p}: {}", answer.as_str()),
            Msg::Ack { p } => write!(f, "terminal ack #{p}"),
            Msg::Call { p, id, call, .. } => write!(f, "call {id} {call:?} #{p}"),
            Msg::CallAnswer { p, id, answer, .. } => write!(f, "answer {id} #{p}: {answer:?}"),
            Msg::Notification { p, txn } => write!(f, "notification #{p} paid {txn}"),
            Msg::NotificationAnswered { p } => write!(f, "notification #{p} answered"),
        }
    }
}

#[derive(Debug, Clone)]
struct Envelope {
    not_before: OffsetDateTime,
    msg: Msg,
}

/// What the shopper does once the platform knows the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shopper {
    /// Consumer-presented: paid before pay answers.
    AtOnce,
    /// Confirms on the phone (or scans and pays) after this long.
    After(i64),
    Never,
    /// Consumer-presented: the wallet refuses (no balance).
    Declines,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    NotPaid,
    Paid,
    Failed,
    Closed,
    Refunded,
}

#[derive(Debug, Clone)]
struct Order {
    status: Status,
    pays_at: Option<OffsetDateTime>,
    /// The next notification attempt (merchant-presented, once paid).
    notify: Option<(usize, OffsetDateTime)>,
}

#[derive(Debug, Clone)]
struct Plan {
    mode: QrMode,
    shopper: Shopper,
}

#[derive(Debug, Clone, Copy)]
struct Terminal {
    policy: OrphanPolicy,
    silent: bool,
    /// The payment it waits for, until when.
    waiting: Option<(P, OffsetDateTime)>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    attempts: u32,
    due_at: OffsetDateTime,
    in_flight: Option<u64>,
}

#[derive(Debug, Clone)]
struct InFlight {
    p: P,
    call: Call,
    deadline: OffsetDateTime,
}

#[derive(Debug, Clone)]
enum Action {
    Deliver(usize),
    Lose(usize),
    Duplicate(usize),
    Delay(usize, i64),
    Tick(i64),
    Start(usize),
    TerminalGivesUp(usize),
    Silence(usize),
    ShopperPays(P),
    Notify(P),
    QueryDue(P),
    TerminalSweep(P),
    SendCancel(P),
    CallTimeout(u64),
    PlatformDown(i64),
    CrashSwitch,
    Redrive(P),
}

struct World {
    config: Config,
    rng: StdRng,
    now: OffsetDateTime,
    bag: Vec<Envelope>,
    terminals: Vec<Terminal>,
    plans: Vec<Plan>,
    /// Which terminal started each payment.
    terminal_of: BTreeMap<P, usize>,
    // The switch: journal and queue are durable; calls are memory.
    journal: BTreeMap<P, QrPayment>,
    queue: BTreeMap<P, Entry>,
    calls: BTreeMap<u64, InFlight>,
    next_call: u64,
    incarnation: u32,
    topic: Vec<(P, QrEvent)>,
    /// Dead-lettered owed calls an operator will redrive, since when.
    dead_lettered: BTreeMap<P, OffsetDateTime>,
    notices: Vec<(P, QrNotice)>,
    // The platform.
    orders: BTreeMap<P, Order>,
    platform_down_until: Option<OffsetDateTime>,
    txn_sequence: u64,
    faults_on: bool,
    stats: QrStats,
    trace: Vec<String>,
    steps: usize,
    failure: Option<Violation>,
}

/// Runs the QR world of `config` (its seed, faults, terminals and
/// `qr_payments`); `Err` names the first invariant it broke.
pub fn run(config: &Config) -> Result<QrStats, Violation> {
    let mut world = World::new(*config);
    world.run()?;
    Ok(world.stats)
}

fn order_id(p: P) -> OrderId {
    OrderId::parse(&format!("QRSIM{p:06}")).expect("a valid order id")
}

fn amount_of(p: P) -> Money {
    let eur = Currency::parse("EUR").expect("EUR is known");
    Money::positive(100 + (p as i64 * 37) % 9_900, eur).expect("a positive amount")
}

impl World {
    fn new(config: Config) -> World {
        // Its own stream, so adding QR leaves the card world's schedules as
        // they were for every seed.
        let mut rng = StdRng::seed_from_u64(config.seed ^ 0x5152_5f50_4159_4d54);
        let terminals: Vec<Terminal> = (0..config.terminals.max(1))
            .map(|t| Terminal {
                policy: if t % 3 == 2 {
                    OrphanPolicy::Confirm
                } else {
                    OrphanPolicy::Reverse
                },
                silent: false,
                waiting: None,
            })
            .collect();
        let plans = (0..config.qr_payments)
            .map(|_| {
                let mode = if rng.random_bool(0.5) {
                    QrMode::ConsumerPresented
                } else {
                    QrMode::MerchantPresented
                };
                let roll = rng.random_range(0..10);
                let shopper = match (mode, roll) {
                    (QrMode::ConsumerPresented, 0..=3) => Shopper::AtOnce,
                    (_, 0..=7) => Shopper::After(rng.random_range(1_000..70_000)),
                    (QrMode::ConsumerPresented, 8) => Shopper::Declines,
                    _ => Shopper::Never,
                };
                Plan { mode, shopper }
            })
            .collect();
        World {
            config,
            rng,
            now: START,
            bag: Vec::new(),
            terminals,
            plans,
            terminal_of: BTreeMap::new(),
            journal: BTreeMap::new(),
            queue: BTreeMap::new(),
            calls: BTreeMap::new(),
            next_call: 0,
            incarnation: 0,
            topic: Vec::new(),
            dead_lettered: BTreeMap::new(),
            notices: Vec::new(),
            orders: BTreeMap::new(),
            platform_down_until: None,
            txn_sequence: 0,
            faults_on: true,
            stats: QrStats::default(),
            trace: Vec::new(),
            steps: 0,
            failure: None,
        }
    }

    fn run(&mut self) -> Result<(), Violation> {
        let max_steps = MAX_STEPS_PER_PAYMENT * (self.config.qr_payments + 1);
        loop {
            if self.steps > max_steps {
                return Err(self.violation(Q1_FINAL, format!("{} steps", self.steps), None));
            }
            if self.started() >= self.plans.len() || self.terminals.iter().all(|t| t.silent) {
                self.faults_on = false;
            }
            let actions = self.enabled();
            let action = if actions.is_empty() {
                if self.faults_on {
                    Action::Tick(1_000)
                } else {
                    match self.next_timer() {
                        Some(at) => {
                            Action::Tick((at - self.now).whole_milliseconds().max(1) as i64)
                        }
                        None => break,
                    }
                }
            } else {
                actions[self.rng.random_range(0..actions.len())].clone()
            };
            self.step(action);
            if let Some(violation) = self.failure.take() {
                return Err(violation);
            }
        }
        self.check_quiescent()
    }

    fn started(&self) -> usize {
        self.stats.payments as usize
    }

    fn send(&mut self, msg: Msg) {
        self.bag.push(Envelope {
            not_before: self.now,
            msg,
        });
    }

    fn enabled(&mut self) -> Vec<Action> {
        let now = self.now;
        let mut actions = Vec::with_capacity(self.bag.len() + 16);
        for (i, envelope) in self.bag.iter().enumerate() {
            if envelope.not_before <= now {
                actions.push(Action::Deliver(i));
            }
        }
        let next = self.started();
        for (t, terminal) in self.terminals.iter().enumerate() {
            match terminal.waiting {
                Some((_, until)) if now >= until => actions.push(Action::TerminalGivesUp(t)),
                Some(_) => {}
                None if !terminal.silent && self.faults_on && next < self.plans.len() => {
                    actions.push(Action::Start(t))
                }
                None => {}
            }
        }
        for (p, order) in &self.orders {
            if order.status == Status::NotPaid && order.pays_at.is_some_and(|at| now >= at) {
                actions.push(Action::ShopperPays(*p));
            }
            if order.notify.is_some_and(|(_, at)| now >= at) {
                actions.push(Action::Notify(*p));
            }
        }
        for (p, record) in &self.journal {
            if record.state.awaits_payment() && record.next_query_at.is_some_and(|at| now >= at) {
                actions.push(Action::QueryDue(*p));
            }
            if !record.state.is_final()
                && !record.terminal_gave_up
                && now >= record.terminal_deadline
            {
                actions.push(Action::TerminalSweep(*p));
            }
        }
        for (p, at) in &self.dead_lettered {
            if now >= *at + OPERATOR_REACTS {
                actions.push(Action::Redrive(*p));
            }
        }
        for (p, entry) in &self.queue {
            if entry.in_flight.is_none() && now >= entry.due_at {
                actions.push(Action::SendCancel(*p));
            }
        }
        for (id, call) in &self.calls {
            if now >= call.deadline {
                actions.push(Action::CallTimeout(*id));
            }
        }
        if self.faults_on {
            actions.push(Action::Tick(self.rng.random_range(50..3_000)));
            if self.rng.random_ratio(1, self.config.fault_one_in) {
                let faults = self.config.faults;
                let mut chosen = Vec::new();
                if !self.bag.is_empty() {
                    let i = self.rng.random_range(0..self.bag.len());
                    if faults.loss {
                        chosen.push(Action::Lose(i));
                    }
                    if faults.duplicate {
                        chosen.push(Action::Duplicate(i));
                    }
                    if faults.delay {
                        chosen.push(Action::Delay(i, self.rng.random_range(1_000..30_000)));
                    }
                }
                if faults.terminal_silence && self.rng.random_ratio(1, 8) {
                    chosen.push(Action::Silence(
                        self.rng.random_range(0..self.terminals.len()),
                    ));
                }
                if faults.issuer_outage && self.rng.random_ratio(1, 4) {
                    chosen.push(Action::PlatformDown(self.rng.random_range(1_000..60_000)));
                }
                if faults.crash_authorization_idle && self.rng.random_ratio(1, 4) {
                    chosen.push(Action::CrashSwitch);
                }
                if !chosen.is_empty() {
                    let i = self.rng.random_range(0..chosen.len());
                    return vec![chosen.swap_remove(i)];
                }
            }
        }
        actions
    }

    fn next_timer(&self) -> Option<OffsetDateTime> {
        let terminals = self
            .terminals
            .iter()
            .filter_map(|t| t.waiting.map(|(_, at)| at));
        let orders = self.orders.values().flat_map(|o| {
            let pays = o.pays_at.filter(|_| o.status == Status::NotPaid);
            pays.into_iter().chain(o.notify.map(|(_, at)| at))
        });
        let records = self.journal.values().flat_map(|r| {
            let query = r.next_query_at.filter(|_| r.state.awaits_payment());
            let sweep =
                Some(r.terminal_deadline).filter(|_| !r.state.is_final() && !r.terminal_gave_up);
            query.into_iter().chain(sweep)
        });
        terminals
            .chain(orders)
            .chain(records)
            .chain(
                self.queue
                    .values()
                    .filter(|e| e.in_flight.is_none())
                    .map(|e| e.due_at),
            )
            .chain(self.calls.values().map(|c| c.deadline))
            .chain(self.dead_lettered.values().map(|at| *at + OPERATOR_REACTS))
            .chain(self.bag.iter().map(|e| e.not_before))
            .filter(|at| *at > self.now)
            .min()
    }

    fn record(&mut self, line: String) {
        let at = (self.now - START).whole_milliseconds();
        self.trace.push(format!("{at}ms {line}"));
    }

    fn step(&mut self, action: Action) {
        self.steps += 1;
        match action {
            Action::Deliver(i) => {
                let envelope = self.bag.swap_remove(i);
                self.record(format!("deliver {}", envelope.msg));
                self.deliver(envelope.msg);
            }
            Action::Lose(i) => {
                let envelope = self.bag.swap_remove(i);
                self.record(format!("LOSE {}", envelope.msg));
            }
            Action::Duplicate(i) => {
                let copy = self.bag[i].clone();
                self.record(format!("DUPLICATE {}", copy.msg));
                self.bag.push(copy);
            }
            Action::Delay(i, ms) => {
                self.bag[i].not_before = self.now + Duration::milliseconds(ms);
                let line = format!("DELAY {ms}ms {}", self.bag[i].msg);
                self.record(line);
            }
            Action::Tick(ms) => self.now += Duration::milliseconds(ms),
            Action::Start(t) => {
                let p = self.started();
                self.stats.payments += 1;
                self.terminal_of.insert(p, t);
                match self.plans[p].mode {
                    QrMode::ConsumerPresented => self.stats.consumer_presented += 1,
                    QrMode::MerchantPresented => self.stats.merchant_presented += 1,
                }
                self.terminals[t].waiting = Some((p, self.now + time_of(WINDOWS.terminal_wait)));
                let plan = self.plans[p].clone();
                self.record(format!(
                    "terminal {t} starts #{p} {} shopper {:?}",
                    plan.mode.as_str(),
                    plan.shopper
                ));
                self.send(Msg::Start { p });
            }
            Action::TerminalGivesUp(t) => {
                if let Some((p, _)) = self.terminals[t].waiting.take() {
                    self.record(format!("terminal {t} stops waiting for #{p}"));
                }
            }
            Action::Silence(t) => {
                self.record(format!("TERMINAL {t} SILENT"));
                self.terminals[t].silent = true;
            }
            Action::ShopperPays(p) => {
                let txn = self.charge(p);
                self.record(format!("shopper pays #{p}: {txn}"));
            }
            Action::Notify(p) => {
                let Some(order) = self.orders.get_mut(&p) else {
                    return;
                };
                let Some((attempt, _)) = order.notify else {
                    return;
                };
                order.notify = NOTIFY_AFTER
                    .get(attempt + 1)
                    .map(|after| (attempt + 1, self.now + Duration::seconds(*after)));
                let txn = self.txn_of(p);
                self.record(format!("platform notifies #{p} (attempt {})", attempt + 1));
                self.send(Msg::Notification { p, txn });
            }
            Action::QueryDue(p) => self.execute(p, QrCommand::QueryDue),
            Action::TerminalSweep(p) => self.execute(p, QrCommand::TerminalGaveUp),
            Action::SendCancel(p) => {
                let Some(owed) = self.journal.get(&p).and_then(|r| r.owed.clone()) else {
                    return;
                };
                let id = self.call(p, Call::Cancel(owed.kind, owed.request_id));
                if let Some(entry) = self.queue.get_mut(&p) {
                    entry.attempts += 1;
                    entry.in_flight = Some(id);
                }
            }
            Action::CallTimeout(id) => {
                let Some(call) = self.calls.remove(&id) else {
                    return;
                };
                self.record(format!("call {id} {:?} #{} times out", call.call, call.p));
                let p = call.p;
                match call.call {
                    Call::Pay => {
                        self.execute(p, QrCommand::PayAnswered(PlatformTradeState::Unknown))
                    }
                    Call::CreateOrder => {
                        self.execute(p, QrCommand::OrderCreateAnswered(OrderCreation::Unknown))
                    }
                    Call::Query => {
                        self.stats.query_timeouts += 1;
                        self.execute(p, QrCommand::QueryAnswered(PlatformTradeState::Unknown))
                    }
                    Call::Cancel(_, request_id) => self.cancel_answered(
                        p,
                        id,
                        request_id,
                        CancelAnswer::NotDone("timeout".into()),
                    ),
                }
            }
            Action::PlatformDown(ms) => {
                self.stats.platform_outages += 1;
                self.record(format!("PLATFORM DOWN for {ms}ms"));
                self.platform_down_until = Some(self.now + Duration::milliseconds(ms));
            }
            Action::Redrive(p) => {
                self.dead_lettered.remove(&p);
                // The operator redrives what the list of dead letters still
                // shows: a late answer may have ended it meanwhile.
                if self.journal.get(&p).map(|r| r.state) != Some(QrState::CancelDeadLettered) {
                    return;
                }
                self.stats.redrives += 1;
                self.record(format!("operator redrives #{p}"));
                self.execute(p, QrCommand::Redrive);
            }
            Action::CrashSwitch => {
                self.stats.switch_crashes += 1;
                self.record("SWITCH CRASHES".to_owned());
                self.incarnation += 1;
                self.calls.clear();
                for entry in self.queue.values_mut() {
                    entry.in_flight = None;
                    entry.due_at = entry.due_at.min(self.now);
                }
            }
        }
    }

    fn call(&mut self, p: P, call: Call) -> u64 {
        self.next_call += 1;
        let id = self.next_call;
        self.calls.insert(
            id,
            InFlight {
                p,
                call: call.clone(),
                deadline: self.now + CALL_TIMEOUT,
            },
        );
        let incarnation = self.incarnation;
        self.send(Msg::Call {
            p,
            id,
            incarnation,
            call,
        });
        id
    }

    fn deliver(&mut self, msg: Msg) {
        match msg {
            Msg::Start { p } => {
                if let Some(record) = self.journal.get(&p) {
                    // A repeat of the request gets the original's answer.
                    let answer = qr::terminal_answer(record);
                    self.send(Msg::ToTerminal { p, answer });
                    return;
                }
                let plan = self.plans[p].clone();
                let terminal = self.terminal_of[&p];
                let intent = QrIntent {
                    transaction_id: TransactionId::from_uuid(Uuid::from_u128(p as u128 + 1)),
                    key: RequestKey {
                        terminal_id: TerminalId::parse(&format!("QRTERM{terminal:02}"))
                            .expect("a valid terminal id"),
                        stan: Stan::parse(&format!("{:06}", p % 1_000_000)).expect("a STAN"),
                        local_date: LocalDate::from_date(START.date()),
                    },
                    merchant_id: MerchantId::parse(&format!("QRMERCHANT{terminal:05}"))
                        .expect("a valid merchant id"),
                    mode: plan.mode,
                    order_id: order_id(p),
                    amount: amount_of(p),
                    orphan_policy: self.terminals[terminal].policy,
                };
                let opened = QrPayment::open(intent, WINDOWS, self.now);
                self.journal.insert(p, opened.next.clone());
                self.apply(p, &opened);
            }
            Msg::ToTerminal { p, answer } => {
                let t = self.terminal_of[&p];
                let terminal = self.terminals[t];
                if terminal.silent || terminal.waiting.map(|(w, _)| w) != Some(p) {
                    return;
                }
                match answer {
                    QrTerminalAnswer::Approved => {
                        self.terminals[t].waiting = None;
                        self.send(Msg::Ack { p });
                    }
                    QrTerminalAnswer::Declined
                    | QrTerminalAnswer::NotPaid
                    | QrTerminalAnswer::Void => self.terminals[t].waiting = None,
                    QrTerminalAnswer::InProgress | QrTerminalAnswer::ShowCode => {}
                }
            }
            Msg::Ack { p } => self.execute(p, QrCommand::TerminalAcknowledged),
            Msg::Call {
                p,
                id,
                incarnation,
                call,
            } => {
                let answer = self.platform(p, &call);
                self.send(Msg::CallAnswer {
                    p,
                    id,
                    incarnation,
                    answer,
                });
            }
            Msg::CallAnswer {
                p,
                id,
                incarnation,
                answer,
            } => {
                if incarnation != self.incarnation {
                    // Its connection died with the process that made it.
                    return;
                }
                let Some(call) = self.calls.remove(&id) else {
                    // The client had given up on it.
                    return;
                };
                let command = match (call.call, answer) {
                    (Call::Pay, Answer::Refused) => {
                        QrCommand::PayAnswered(PlatformTradeState::Unknown)
                    }
                    (Call::CreateOrder, Answer::Refused) => {
                        QrCommand::OrderCreateAnswered(OrderCreation::Unknown)
                    }
                    (Call::Query, Answer::Refused) => {
                        QrCommand::QueryAnswered(PlatformTradeState::Unknown)
                    }
                    (Call::Cancel(_, request_id), Answer::Refused) => {
                        return self.cancel_answered(
                            p,
                            id,
                            request_id,
                            CancelAnswer::NotDone("platform unavailable".into()),
                        );
                    }
                    (Call::Cancel(_, request_id), Answer::Cancel(answer)) => {
                        return self.cancel_answered(p, id, request_id, answer);
                    }
                    (Call::Pay, Answer::Trade(word)) => QrCommand::PayAnswered(word),
                    (Call::Query, Answer::Trade(word)) => {
                        let was_unpaid = self.journal.get(&p).is_some_and(|r| !r.money_moved());
                        if was_unpaid && matches!(word, PlatformTradeState::Paid { .. }) {
                            self.stats.paid_found_by_query += 1;
                        }
                        QrCommand::QueryAnswered(word)
                    }
                    (Call::CreateOrder, Answer::Created(creation)) => {
                        QrCommand::OrderCreateAnswered(creation)
                    }
                    (call, answer) => unreachable!("{call:?} answered {answer:?}"),
                };
                self.execute(p, command);
            }
            Msg::Notification { p, txn } => {
                let command = QrCommand::NotificationReceived {
                    order_id: order_id(p),
                    platform_txn: txn,
                    amount: amount_of(p),
                };
                if let Some(decision) = self.execute_decision(p, command) {
                    if decision.is_noop() {
                        self.stats.notifications_ignored += 1;
                    } else {
                        self.stats.notifications_applied += 1;
                    }
                    // Answered "success" so the platform stops retrying.
                    self.send(Msg::NotificationAnswered { p });
                }
            }
            Msg::NotificationAnswered { p } => {
                if let Some(order) = self.orders.get_mut(&p) {
                    order.notify = None;
                }
            }
        }
    }

    fn cancel_answered(
        &mut self,
        p: P,
        id: u64,
        request_id: PlatformRequestId,
        answer: CancelAnswer,
    ) {
        let Some(entry) = self.queue.get_mut(&p) else {
            return self.execute(
                p,
                QrCommand::CancelAnswered {
                    request_id,
                    answer,
                    attempt: CancelAttempt {
                        attempts: 1,
                        jitter: 0,
                    },
                    schedule: CANCEL_SCHEDULE,
                },
            );
        };
        if entry.in_flight == Some(id) {
            entry.in_flight = None;
        }
        let attempts = entry.attempts.max(1);
        if matches!(answer, CancelAnswer::NotDone(_)) {
            self.stats.cancel_retries += 1;
        }
        let jitter = self.rng.random();
        self.execute(
            p,
            QrCommand::CancelAnswered {
                request_id,
                answer,
                attempt: CancelAttempt { attempts, jitter },
                schedule: CANCEL_SCHEDULE,
            },
        );
    }

    /// The platform's side of one call.
    fn platform(&mut self, p: P, call: &Call) -> Answer {
        if self
            .platform_down_until
            .is_some_and(|until| self.now < until)
        {
            self.stats.platform_refusals += 1;
            return Answer::Refused;
        }
        let shopper = self.plans[p].shopper;
        let amount = amount_of(p);
        match call {
            Call::Pay | Call::CreateOrder => {
                if !self.orders.contains_key(&p) {
                    let pays_at = match shopper {
                        Shopper::After(ms) => Some(self.now + Duration::milliseconds(ms)),
                        Shopper::AtOnce | Shopper::Never | Shopper::Declines => None,
                    };
                    let status = match (call, shopper) {
                        (Call::Pay, Shopper::Declines) => Status::Failed,
                        _ => Status::NotPaid,
                    };
                    self.orders.insert(
                        p,
                        Order {
                            status,
                            pays_at,
                            notify: None,
                        },
                    );
                    if *call == Call::Pay && shopper == Shopper::AtOnce {
                        self.charge(p);
                    }
                }
                let status = self.orders[&p].status;
                match (call, status) {
                    (Call::CreateOrder, Status::Closed) => {
                        Answer::Created(OrderCreation::Refused {
                            reason: "ORDERCLOSED".into(),
                        })
                    }
                    (Call::CreateOrder, _) => Answer::Created(OrderCreation::Created {
                        code: format!("weixin://wxpay/bizpayurl?pr={p}"),
                    }),
                    (_, Status::Closed) => Answer::Trade(PlatformTradeState::Failed {
                        reason: "ORDERCLOSED".into(),
                    }),
                    _ => Answer::Trade(self.trade_state(p)),
                }
            }
            Call::Query => Answer::Trade(self.trade_state(p)),
            Call::Cancel(kind, _) => {
                let status = self.orders.get(&p).map(|o| o.status);
                let answer = match (kind, status) {
                    (CancelKind::Refund, Some(Status::Paid)) => {
                        self.set_status(p, Status::Refunded);
                        CancelAnswer::Done
                    }
                    // Once per request id: a repeat is the same refund.
                    (CancelKind::Refund, Some(Status::Refunded)) => CancelAnswer::Done,
                    (CancelKind::Refund, _) => CancelAnswer::NotDone("no payment to refund".into()),
                    (CancelKind::Close, Some(Status::Paid)) => CancelAnswer::OrderPaid {
                        platform_txn: self.txn_of(p),
                        amount,
                    },
                    (CancelKind::Cancel, Some(Status::Paid)) => {
                        self.set_status(p, Status::Refunded);
                        CancelAnswer::Refunded {
                            platform_txn: self.txn_of(p),
                            amount,
                        }
                    }
                    (CancelKind::Cancel, Some(Status::Refunded)) => CancelAnswer::Refunded {
                        platform_txn: self.txn_of(p),
                        amount,
                    },
                    (CancelKind::Close, Some(Status::Refunded)) => {
                        CancelAnswer::NotDone("order refunded".into())
                    }
                    (_, Some(Status::NotPaid | Status::Closed | Status::Failed)) | (_, None) => {
                        if status != Some(Status::Failed) {
                            // An order it never saw is closed too: a late
                            // create or pay for it is refused.
                            self.orders.insert(
                                p,
                                Order {
                                    status: Status::Closed,
                                    pays_at: None,
                                    notify: None,
                                },
                            );
                        }
                        CancelAnswer::Done
                    }
                };
                Answer::Cancel(answer)
            }
        }
    }

    fn set_status(&mut self, p: P, status: Status) {
        if let Some(order) = self.orders.get_mut(&p) {
            order.status = status;
        }
    }

    fn txn_of(&self, p: P) -> PlatformTxnId {
        PlatformTxnId::parse(&format!("4200{p:012}")).expect("a valid platform transaction id")
    }

    /// The shopper's money moves.
    fn charge(&mut self, p: P) -> PlatformTxnId {
        self.txn_sequence += 1;
        let notify = self.plans[p].mode == QrMode::MerchantPresented;
        let now = self.now;
        if let Some(order) = self.orders.get_mut(&p) {
            order.status = Status::Paid;
            order.pays_at = None;
            if notify {
                order.notify = Some((0, now));
            }
        }
        self.txn_of(p)
    }

    fn trade_state(&self, p: P) -> PlatformTradeState {
        match self.orders.get(&p).map(|o| o.status) {
            None => PlatformTradeState::NotPaid,
            Some(Status::NotPaid) => match self.plans[p].mode {
                QrMode::ConsumerPresented => PlatformTradeState::InProgress,
                QrMode::MerchantPresented => PlatformTradeState::NotPaid,
            },
            Some(Status::Paid) => PlatformTradeState::Paid {
                platform_txn: self.txn_of(p),
                amount: amount_of(p),
            },
            Some(Status::Failed) => PlatformTradeState::Failed {
                reason: "NOTENOUGH".into(),
            },
            Some(Status::Closed) => PlatformTradeState::Closed,
            Some(Status::Refunded) => PlatformTradeState::Refunded {
                platform_txn: self.txn_of(p),
                amount: amount_of(p),
            },
        }
    }

    fn execute(&mut self, p: P, command: QrCommand) {
        self.execute_decision(p, command);
    }

    /// The shell: load, decide, persist the next record and apply the
    /// effects, as one step.
    fn execute_decision(&mut self, p: P, command: QrCommand) -> Option<QrDecision> {
        let current = self.journal.get(&p)?.clone();
        let name = command.name();
        match qr::decide(&current, command, WINDOWS, self.now) {
            Err(refusal) => {
                self.record(format!("#{p} {name} REFUSED: {refusal}"));
                let violation = self.violation(
                    Q6_AGREED,
                    format!(
                        "#{p} is {} and {name} was refused: {refusal}",
                        current.state
                    ),
                    Some(p),
                );
                self.failure.get_or_insert(violation);
                None
            }
            Ok(decision) => {
                if current.state.is_final() && decision.next.state != current.state {
                    let violation = self.violation(
                        Q3_ONE_OUTCOME,
                        format!(
                            "#{p} left final {} for {}",
                            current.state, decision.next.state
                        ),
                        Some(p),
                    );
                    self.failure.get_or_insert(violation);
                }
                if let Some(t) = decision.transition {
                    self.record(format!("#{p} {name}: {} -> {}", t.from, t.to));
                }
                self.journal.insert(p, decision.next.clone());
                self.apply(p, &decision);
                Some(decision)
            }
        }
    }

    fn apply(&mut self, p: P, decision: &QrDecision) {
        for effect in &decision.effects {
            match effect {
                QrEffect::Call(PlatformCall::Pay { .. }) => {
                    self.call(p, Call::Pay);
                }
                QrEffect::Call(PlatformCall::CreateOrder { .. }) => {
                    self.call(p, Call::CreateOrder);
                }
                QrEffect::Call(PlatformCall::Query { .. }) => {
                    self.call(p, Call::Query);
                }
                QrEffect::EnqueueCancel { .. } => {
                    self.queue.insert(
                        p,
                        Entry {
                            attempts: 0,
                            due_at: self.now,
                            in_flight: None,
                        },
                    );
                }
                QrEffect::RetryCancel { delay_ms, .. } => {
                    if let Some(entry) = self.queue.get_mut(&p) {
                        entry.due_at = self.now + Duration::milliseconds(*delay_ms as i64);
                    }
                }
                QrEffect::CloseCancel(_) => {
                    self.queue.remove(&p);
                }
                // The record's `next_query_at` is the schedule.
                QrEffect::ScheduleQuery { .. } => {}
                QrEffect::Announce(event) => {
                    if event.is_outcome()
                        && self.topic.iter().any(|(q, e)| *q == p && e.is_outcome())
                    {
                        let violation = self.violation(
                            Q3_ONE_OUTCOME,
                            format!("#{p} announced {} after an outcome", event.name()),
                            Some(p),
                        );
                        self.failure.get_or_insert(violation);
                    }
                    if let QrEvent::CancelDeadLettered { .. } = event {
                        self.stats.cancels_dead_lettered += 1;
                        self.dead_lettered.insert(p, self.now);
                    }
                    self.count(event);
                    self.topic.push((p, event.clone()));
                }
                QrEffect::Notify(notice) => self.notices.push((p, *notice)),
                QrEffect::AnswerTerminal(answer) => {
                    self.send(Msg::ToTerminal { p, answer: *answer })
                }
            }
        }
    }

    fn count(&mut self, event: &QrEvent) {
        match event {
            QrEvent::Confirmed {
                evidence: Evidence::Policy,
            } => self.stats.orphans_confirmed += 1,
            QrEvent::Confirmed { .. } => self.stats.confirmed_by_terminal += 1,
            QrEvent::Refunded { reason } => match reason {
                Some(switch_core::ReversalReason::NoTerminalAcknowledgement) => {
                    self.stats.orphans_refunded += 1
                }
                _ => self.stats.races_refunded += 1,
            },
            QrEvent::Closed => self.stats.closed += 1,
            QrEvent::Failed => self.stats.failed += 1,
            QrEvent::AcknowledgementConflict => self.stats.acknowledgement_conflicts += 1,
            QrEvent::Paid
            | QrEvent::CancelRequested { .. }
            | QrEvent::CancelDeadLettered { .. } => {}
        }
    }

    fn violation(&self, invariant: &'static str, detail: String, about: Option<P>) -> Violation {
        let mut trace = Vec::new();
        if let Some(p) = about {
            let needle = format!("#{p}");
            trace.extend(
                self.trace
                    .iter()
                    .filter(|l| l.contains(&needle) && !l.contains(&format!("{needle}0")))
                    .cloned(),
            );
            trace.push("  ... last steps:".to_owned());
        }
        let tail = self.trace.len().saturating_sub(TRACE_LEN);
        trace.extend(self.trace[tail..].iter().cloned());
        Violation {
            invariant,
            detail,
            seed: self.config.seed,
            transactions: self.started(),
            trace,
        }
    }

    fn check_quiescent(&self) -> Result<(), Violation> {
        for (p, record) in &self.journal {
            let p = *p;
            if !record.state.is_final() {
                return Err(self.violation(
                    Q1_FINAL,
                    format!("#{p} ends {}", record.state),
                    Some(p),
                ));
            }
            let platform = self.orders.get(&p).map(|o| o.status);
            let agrees = match record.state {
                QrState::Confirmed => platform == Some(Status::Paid),
                QrState::Refunded => platform == Some(Status::Refunded),
                QrState::Closed | QrState::Failed => {
                    !matches!(platform, Some(Status::Paid | Status::Refunded))
                }
                _ => false,
            };
            let same_txn = !record.money_moved() || record.platform_txn == Some(self.txn_of(p));
            if !agrees || !same_txn {
                return Err(self.violation(
                    Q2_LEDGER,
                    format!(
                        "#{p}: switch {} ({:?}), platform {platform:?}",
                        record.state, record.platform_txn
                    ),
                    Some(p),
                ));
            }
            if record.state == QrState::Confirmed {
                let by_terminal = record.confirmation_evidence
                    == Some(Evidence::TerminalAcknowledgement)
                    && record.acknowledged_at.is_some();
                let by_policy = record.confirmation_evidence == Some(Evidence::Policy)
                    && record.orphan_policy == OrphanPolicy::Confirm;
                if !(by_terminal || by_policy) {
                    return Err(self.violation(
                        Q4_CONFIRMED,
                        format!("#{p} confirmed by {:?}", record.confirmation_evidence),
                        Some(p),
                    ));
                }
            }
            let owed: Vec<QrNotice> = self
                .notices
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, n)| *n)
                .collect();
            let conflicts = owed
                .iter()
                .filter(|n| n.webhook == WebhookType::PaymentConflict)
                .count();
            let outcome_notices: Vec<QrNotice> = owed
                .iter()
                .copied()
                .filter(|n| n.webhook != WebhookType::PaymentConflict)
                .collect();
            let wanted: Vec<QrNotice> = match (record.state, record.confirmation_evidence) {
                (QrState::Refunded, _) => vec![QrNotice {
                    webhook: WebhookType::PaymentReversed,
                    push: Some(TerminalMessageKind::VoidReceipt),
                }],
                (QrState::Confirmed, Some(Evidence::Policy)) => vec![QrNotice {
                    webhook: WebhookType::PaymentConfirmed,
                    push: Some(TerminalMessageKind::ReprintReceipt),
                }],
                _ => Vec::new(),
            };
            let conflict_allowed = usize::from(record.state == QrState::Refunded);
            if outcome_notices != wanted || conflicts > conflict_allowed {
                return Err(self.violation(
                    Q5_TOLD,
                    format!("#{p} {}: owed {owed:?}, wanted {wanted:?}", record.state),
                    Some(p),
                ));
            }
        }
        // A charge the switch never journaled would be money nobody owns.
        for (p, order) in &self.orders {
            if order.status == Status::Paid && !self.journal.contains_key(p) {
                return Err(self.violation(
                    Q2_LEDGER,
                    format!("#{p} charged, not journaled"),
                    Some(*p),
                ));
            }
        }
        Ok(())
    }
}

fn time_of(d: StdDuration) -> Duration {
    Duration::milliseconds(d.as_millis() as i64)
}
