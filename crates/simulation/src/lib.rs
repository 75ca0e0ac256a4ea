//! A deterministic simulation of the money path (issue 12), and in
//! [`model`] an exhaustive model check of its heart.
//!
//! # What it owns
//!
//! A simulated world of terminals, the authorization service (its journal of
//! [`Authorization`] records, its reversal queue and its outbox), the issuer
//! (with its own ledger of funds held per RRN), the authorization topic, the
//! reversal handler (its watches and its consumer offset), the settlement
//! batcher (its ledger, its consumer offset, its windows and the settlement
//! topic; `settlement.rs`), the notifier (its consumer offsets, its webhook
//! deliveries, the gateway's terminal messages, and the merchants' endpoints
//! and terminals that receive them; `notifier.rs`) and the network between
//! them. Every rule is the one production uses: authorization calls
//! [`switch_core::lifecycle::decide`], the reversal handler calls
//! [`switch_core::watch::decide`], transitions are `AuthorizationState::on`,
//! settlement calls [`switch_core::settlement::ledger::decide`],
//! [`switch_core::due_cutoff`] and [`switch_core::payouts`], the notifier
//! [`switch_core::notify`]'s `webhook_for`, `terminal_message_for`,
//! `terminal_message_id` and `DeliveryRetry::after_failure`.
//! Once the card world is quiescent, every run also plays a QR world
//! ([`qr`], issue 15): `Config::qr_payments` QR payments between terminals,
//! shoppers, a QR platform with its own ledger and the switch's QR shell,
//! every decision taken by [`switch_core::qr::decide`], under the same
//! seed and faults, with its own invariants (Q1 to Q6, the module doc).
//! This crate only carries messages, keeps the records, and plays the
//! adapters' part (load, decide, persist next and effects); it needs no
//! locks because one step runs at a time. Every map is ordered, so a run
//! is the same in every process.
//!
//! A seeded [`StdRng`] chooses at each step one enabled action: deliver any
//! message in flight (so messages are reordered), hold one back for up to
//! 30 s, lose or duplicate one, advance the clock, let a terminal start,
//! retry, time out and reverse, or go silent forever, let authorization
//! time out an issuer call, work its reversal queue or run its recovery
//! sweep for abandoned calls, let the issuer approve partially or receive
//! a reversal before its original, let the reversal
//! handler consume an event,
//! commit its offset or sweep a due watch, let settlement consume events,
//! close a due window or settle a closed one, let the notifier consume
//! events, attempt a due delivery or time its request out, let the gateway
//! push a message, take a merchant's endpoint down for up to a minute, and
//! crash a process (authorization, the handler, settlement, the notifier). Once every
//! sale is started the faults stop and the world runs to quiescence: the
//! clock jumps to the next deadline until nothing is left to do. Invariants
//! are checked after every step and at quiescence; a violation names the
//! invariant, the seed, every step that names the offending RRN and the
//! last steps of the run.
//!
//! Invariants (problem.md): I1 at quiescence every authorization is
//! declined, confirmed or reversed, and at most one of confirmed/reversed
//! was announced; I2 the issuer releases an RRN at most once and the switch
//! announces it reversed at most once; I3 the issuer sees at most one RRN per
//! terminal and STAN, however often the sale is retried; I7 no confirmed
//! authorization is released (every step), and at quiescence a reversed or
//! declined one holds no funds and a confirmed one does. I2 for
//! settlement: a window pays only approvals confirmed and held at the
//! issuer when it closes (checked at every close; confirmed is final and I7
//! holds after every step). I4 at quiescence: settlement's ledger agrees
//! with the journal, every window is settled, each window's payouts add up
//! to the amounts it paid (gross = fee + net, 0 <= fee <= gross), and per
//! merchant the settled gross is the sum of its confirmed approvals, each
//! difference explained by a conflict flag (no refunds are modelled). I5:
//! no delivery is dead-lettered (every step); at quiescence every delivery
//! owed was delivered, each merchant received, counted once per event id,
//! exactly one `payment.reversed` for each reversed payment and one
//! `payment.confirmed` for each confirmed without the terminal's own
//! acknowledgement, and nothing else about its payments, and every payout;
//! the gateway keeps exactly one `void_receipt` for each payment reversed
//! for a reason other than the terminal's request, one `reprint_receipt`
//! for each confirmed by policy, and a void one for each acknowledgement
//! after a reversal; a terminal that still speaks received and
//! acknowledged each. Duplicates are allowed only where production
//! deduplicates: a merchant may receive one event's webhook more than once
//! (same `Switch-Event-Id`, which the webhook contract tells it to
//! deduplicate on), and a terminal one message more than once (same message
//! id, acknowledged by id).
//!
//! [`Faults::SOUND`] is every fault; the rules survive all of them.
//! [`Faults::HOLE_1`], [`Faults::HOLE_2`] and [`Faults::HOLE_3`] are the
//! faults behind issue 12's holes 1, 2 and 3 on top of [`Faults::BASIC`];
//! with an [`Ablation`] (the hole's fix taken out) the tests find each hole
//! again, and [`shrink`] cuts the failing run down.
//!
//! # Replaying a seed
//!
//! A run is a pure function of its [`Config`]: `SIM_SEED=<n> cargo test -p
//! simulation` runs only seed `n` in the randomized test, and a failure
//! prints the seed. `make simulate` (`SIM_SECONDS`, default 10) runs the
//! `simulate` binary over consecutive seeds and reports simulated
//! transactions per second of wall time.
//!
//! # Assumptions where the real adapters could differ
//!
//! The chaos run on the real stack (issue 12's companion) must check these:
//!
//! - **Outbox**: an announcement is on the topic as soon as its decision is
//!   committed (the relay is reliable and keeps the journal's order per
//!   authorization). The relay's own delay and crashes are not modelled.
//! - **Topic**: one partition, totally ordered, never loses a committed
//!   record; the handler sees events in journal order and is redelivered
//!   everything after its committed offset when it restarts.
//! - **Transactions**: a decision, its record, its queue change and its
//!   outbox rows commit atomically; a crash falls between two steps, never
//!   inside one. A crash "between journaling the intent and recording the
//!   decision" is a crash while the issuer call is in flight.
//! - **Connections**: an issuer answer to a call made before a restart is
//!   lost with the connection. Calls to the issuer for one RRN arrive in the
//!   order they were sent (one connection, FIFO), a duplicate keeps its
//!   original's place, unless [`Faults::reversal_overtakes`] is on.
//! - **Restart**: the reversal queue survives; entries whose call was in
//!   flight are due again at once. Pending issuer calls and the late-answer
//!   waits are memory and vanish: a crash is `kill -9` (a graceful stop
//!   waits for late answers, issue 12's hole 4, and is not modelled; after
//!   a crash the record of a late answer is lost, the money is not, and no
//!   invariant here checks the record). The recovery sweep runs at once after a restart, then every
//!   5 s.
//! - **Issuer deadline**: every authorization call carries its deadline
//!   (30 s after the intent was journaled, production's
//!   `issuer_late_window_ms`); the issuer drops a call that reaches it
//!   later, unanswered. The rules of holes 1 and 2 rest on this (ADR 14).
//! - **Refused verdicts**: an issuer verdict that `decide` refuses (the row
//!   was reversed meanwhile) is dropped, as `authorization::service` does.
//! - **Issuer**: approves unless the amount is a multiple of 5 (declines
//!   "51"), holds the amount per RRN, answers a repeated authorization with
//!   its first answer, releases on a reversal ("00", idempotently) and
//!   answers "25" to a reversal of an RRN it has not seen; with
//!   [`Faults::partial_approvals`] it answers "10" to amounts that are
//!   multiples of 7 and holds them all the same.
//! - **Terminals**: reverse once on timeout (a lost terminal reversal is not
//!   repeated); retries reuse the STAN; a silent terminal never speaks again.
//! - **Dead letters**: the reversal queue's maximum age is long enough that
//!   nothing dead-letters in a run; operators' redrives are not modelled.
//! - **Handler to authorization**: the handler's request (reverse/confirm)
//!   and its answer travel the faulty network; a lost one is asked again
//!   when the sweep's lease runs out. Authorization answers with the
//!   outcome its record shows (`CallSucceeded`), or `CallRefused` when
//!   `decide` refuses or the record shows no outcome (declined); the
//!   `CallFailed` path (authorization unreachable) is not modelled.
//! - **Merchants**: each terminal has its own merchant; every third
//!   merchant confirms orphans at the deadline, the others reverse; the
//!   acknowledgement window is 60 s, the issuer timeout 10 s with the
//!   call's deadline at 30 s, the terminal's timeout 30 s.
//! - **Settlement**: one currency (EUR), the default fee rate (60 bp) for
//!   every merchant, a daily cut-off per merchant, the first 40 s + 25 s per
//!   merchant after the run starts (so windows close while approvals are
//!   still unconfirmed or being reversed), the next a day later. Its
//!   consumer applies whatever has arrived in one transaction with the
//!   processed event ids (production's batch); a window is closed in one
//!   transaction and settled in another, the payout files are not
//!   modelled, and the settlement topic's outbox and relay are reliable.
//!   Batch close and upload reconciliation (terminal batches), refunds and
//!   the operator's conflict resolution are not modelled. Once faults
//!   stopped, the clock jumps to a cut-off only while a merchant has a
//!   payable approval (production closes a window each day regardless).
//! - **Notifier**: one endpoint per merchant, production's default retry
//!   schedule (1 s doubling to 300 s, 12 attempts), request timeout 10 s,
//!   lease 60 s. An endpoint outage lasts less than the retry budget, so a
//!   dead letter is a violation here (in production an operator would
//!   redeliver it). The notifier's outbox, its relay and the gateway's
//!   inbox of terminal messages are one reliable step; the gateway pushes
//!   an unacknowledged message again every 5 s while its terminal speaks;
//!   a crash of the gateway is not modelled.
//!
//! - **Journal down**: for up to 10 s every write is rejected and commits
//!   nothing of its decision; the caller gets an error: a sale's terminal
//!   gets no answer (its intent is left to the recovery sweep), a reversal
//!   attempt is repeated once the worker's lease (11 s) runs out, the
//!   handler's call fails and is retried with backoff, a late answer is
//!   lost (as production logs it). Reads keep working.
//! - **Issuer outage**: the issuer refuses every call while down; a refused
//!   sale is as unknown as a silent one, a refused reversal is repeated.
//!
//! Not yet modelled: several partitions, the outbox relay's own delay and
//! crashes, terminal batches, dead letters and operators' redrives.

mod notifier;
pub mod qr;
mod settlement;

pub use notifier::NotifierStats;
pub use qr::QrStats;
pub use settlement::SettlementStats;

pub mod model;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration as StdDuration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switch_core::lifecycle::{
    self, Authorization, Command, Effect, IssuerVerdict, IssuerWindows, RequestKey, ReversalAnswer,
    ReversalAttempt, SaleIntent,
};
use switch_core::watch::{self, millis_between};
use switch_core::{
    AuthorizationState, Channel, Currency, Evidence, LocalDate, MaskedPan, MerchantId, Money,
    OrphanDecision, OrphanPolicy, Pan, PanFingerprint, PanHasher, ResponseCode, RetrySchedule,
    ReversalReason, Rrn, Stan, TerminalId, TransactionId, Watch, WatchCommand, WatchEffect,
    WatchOutcome,
};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

/// An RRN, ordered so that every map iterates the same way in every run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct R(Rrn);

impl Ord for R {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_str().cmp(other.0.as_str())
    }
}

impl PartialOrd for R {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Ordered as its text, so a map keyed by RRN is searched by `&str`
/// without building an `R` (the checks after every step do).
impl std::borrow::Borrow<str> for R {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for R {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where every run's clock starts.
pub const START: OffsetDateTime = datetime!(2026-12-01 10:00 UTC);

const ISSUER_TIMEOUT: Duration = Duration::seconds(10);
/// The issuer call's deadline, from when it was sent (production's
/// `issuer_late_window_ms`).
const CALL_DEADLINE: Duration = Duration::seconds(30);
const WINDOWS: IssuerWindows = IssuerWindows {
    call_timeout: StdDuration::from_secs(10),
    late_window: StdDuration::from_secs(30),
};
/// How often authorization's recovery sweep runs (production's
/// `recovery_interval_ms`).
const RECOVERY_INTERVAL: Duration = Duration::seconds(5);
const REVERSAL_CALL_TIMEOUT: Duration = Duration::seconds(5);
/// How long the reversal worker's claim on a queue entry lasts
/// (production: twice the call timeout and a second).
const REVERSAL_LEASE: Duration = Duration::seconds(11);
const TERMINAL_TIMEOUT: Duration = Duration::seconds(30);
const TERMINAL_RETRY_AFTER: Duration = Duration::seconds(5);
const ACK_WINDOW: StdDuration = StdDuration::from_secs(60);
const SWEEP_LEASE: StdDuration = StdDuration::from_secs(5);
const REVERSAL_SCHEDULE: RetrySchedule = RetrySchedule {
    initial_delay_ms: 500,
    max_delay_ms: 10_000,
    max_age_ms: 24 * 3_600_000,
};
/// The reversal handler's backoff when a call to authorization fails
/// (production's test configuration: 50 ms doubling to 500 ms).
const HANDLER_RETRY: watch::WatchRetry = watch::WatchRetry {
    initial_delay_ms: 50,
    max_delay_ms: 500,
};
const TRACE_LEN: usize = 15;
const MAX_STEPS_PER_SALE: usize = 2_000;

/// Which faults the scheduler may inject while sales are being started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// A message in flight is lost.
    pub loss: bool,
    /// A message in flight is delivered twice.
    pub duplicate: bool,
    /// A message in flight is held back for up to 30 s.
    pub delay: bool,
    /// A terminal loses power and never speaks again.
    pub terminal_silence: bool,
    /// The reversal handler restarts: its uncommitted offset is lost.
    pub crash_handler: bool,
    /// Authorization restarts while no sale's issuer call is in flight.
    pub crash_authorization_idle: bool,
    /// Authorization restarts while a sale's issuer call is in flight:
    /// between journaling the intent and recording the decision (the fault
    /// behind issue 12's hole 1).
    pub crash_during_issuer_call: bool,
    /// A reversal to the issuer may overtake its original, which the
    /// issuer answers "25" and approves afterwards (hole 2).
    pub reversal_overtakes: bool,
    /// The issuer approves some sales partially ("10") and holds the
    /// funds (hole 3).
    pub partial_approvals: bool,
    /// The settlement batcher restarts: its uncommitted offset is lost.
    pub crash_settlement: bool,
    /// The notifier restarts: its uncommitted offsets and its requests in
    /// flight are lost.
    pub crash_notifier: bool,
    /// A merchant's webhook endpoint answers 500 for up to a minute.
    pub webhook_outage: bool,
    /// The issuer is down for up to a minute: every call reaching it
    /// meanwhile is refused at once (UNAVAILABLE).
    pub issuer_outage: bool,
    /// The journal rejects every write for up to 10 s (PostgreSQL
    /// restarting, or unreachable): nothing of a decision is committed,
    /// the caller gets an error.
    pub journal_write_fails: bool,
}

impl Faults {
    /// No fault: every message is delivered once, nothing crashes.
    pub const NONE: Faults = Faults {
        loss: false,
        duplicate: false,
        delay: false,
        terminal_silence: false,
        crash_handler: false,
        crash_authorization_idle: false,
        crash_during_issuer_call: false,
        reversal_overtakes: false,
        partial_approvals: false,
        crash_settlement: false,
        crash_notifier: false,
        webhook_outage: false,
        issuer_outage: false,
        journal_write_fails: false,
    };

    /// The faults the rules survived before issue 12's fixes (a journal
    /// write failure during the issuer's decision is hole 1 too).
    pub const BASIC: Faults = Faults {
        loss: true,
        duplicate: true,
        delay: true,
        terminal_silence: true,
        crash_handler: true,
        crash_authorization_idle: true,
        crash_during_issuer_call: false,
        reversal_overtakes: false,
        partial_approvals: false,
        crash_settlement: true,
        crash_notifier: true,
        webhook_outage: true,
        issuer_outage: true,
        journal_write_fails: false,
    };

    /// The basic faults, and a crash during the issuer call (hole 1's).
    pub const HOLE_1: Faults = Faults {
        crash_during_issuer_call: true,
        ..Faults::BASIC
    };

    /// The basic faults, and reversals that overtake (hole 2's).
    pub const HOLE_2: Faults = Faults {
        reversal_overtakes: true,
        ..Faults::BASIC
    };

    /// The basic faults, and partial approvals (hole 3's).
    pub const HOLE_3: Faults = Faults {
        partial_approvals: true,
        ..Faults::BASIC
    };

    /// Every fault: the rules are sound under all of them.
    pub const SOUND: Faults = Faults {
        loss: true,
        duplicate: true,
        delay: true,
        terminal_silence: true,
        crash_handler: true,
        crash_authorization_idle: true,
        crash_during_issuer_call: true,
        reversal_overtakes: true,
        partial_approvals: true,
        crash_settlement: true,
        crash_notifier: true,
        webhook_outage: true,
        issuer_outage: true,
        journal_write_fails: true,
    };
}

/// Fixes of issue 12's holes taken back out, one by one: a run with an
/// ablation must find its hole again, which shows the simulation would
/// catch the rule's regression (mutation testing of the fixes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ablation {
    /// Hole 1: authorization runs no recovery sweep for abandoned calls.
    pub no_recovery_sweep: bool,
    /// Hole 2: a reversal answered "25" ends at once, however early (the
    /// windows `decide` is given say the original can no longer land).
    pub reversal_ends_on_first_25: bool,
    /// Hole 3: an approval the switch does not accept is read as a plain
    /// decline, as before the fix.
    pub partial_approval_read_as_decline: bool,
}

impl Ablation {
    pub const NONE: Ablation = Ablation {
        no_recovery_sweep: false,
        reversal_ends_on_first_25: false,
        partial_approval_read_as_decline: false,
    };
}

/// One run.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub seed: u64,
    pub terminals: usize,
    /// Sales started in the run (each a simulated transaction).
    pub sales: usize,
    pub faults: Faults,
    /// A fault is injected at a step with probability `1 / fault_one_in`.
    pub fault_one_in: u32,
    pub ablation: Ablation,
    /// QR payments started in the run's QR world ([`qr`]), after the card
    /// world reached quiescence.
    pub qr_payments: usize,
}

impl Config {
    pub fn new(seed: u64, faults: Faults) -> Config {
        Config {
            seed,
            terminals: 4,
            sales: 24,
            faults,
            fault_one_in: 12,
            ablation: Ablation::NONE,
            qr_payments: 6,
        }
    }

    /// The same run with one of the fixes taken out.
    pub fn ablated(self, ablation: Ablation) -> Config {
        Config { ablation, ..self }
    }
}

/// What a run that broke no invariant did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub transactions: usize,
    pub steps: usize,
    pub stats: Stats,
}

/// What happened in a run: shows which paths a set of runs exercised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub approved: u64,
    pub declined: u64,
    pub issuer_timed_out: u64,
    pub late_answers: u64,
    pub confirmed: u64,
    pub reversed: u64,
    /// Reversals the issuer answered "25" (no original).
    pub reversals_unmatched: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub delayed: u64,
    pub terminals_silenced: u64,
    pub authorization_crashes: u64,
    pub handler_crashes: u64,
    pub issuer_outages: u64,
    /// Calls the issuer refused while down.
    pub issuer_refusals: u64,
    pub journal_write_failures: u64,
    pub settlement: SettlementStats,
    pub notifier: NotifierStats,
    pub qr: QrStats,
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.approved += other.approved;
        self.declined += other.declined;
        self.issuer_timed_out += other.issuer_timed_out;
        self.late_answers += other.late_answers;
        self.confirmed += other.confirmed;
        self.reversed += other.reversed;
        self.reversals_unmatched += other.reversals_unmatched;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.delayed += other.delayed;
        self.terminals_silenced += other.terminals_silenced;
        self.authorization_crashes += other.authorization_crashes;
        self.handler_crashes += other.handler_crashes;
        self.issuer_outages += other.issuer_outages;
        self.issuer_refusals += other.issuer_refusals;
        self.journal_write_failures += other.journal_write_failures;
        self.settlement.add(&other.settlement);
        self.notifier.add(&other.notifier);
        self.qr.add(&other.qr);
    }
}

/// An invariant broke.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which invariant (problem.md's number and words).
    pub invariant: &'static str,
    pub detail: String,
    pub seed: u64,
    /// Sales started before it broke.
    pub transactions: usize,
    /// The last steps, oldest first.
    pub trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invariant broken: {} ({}); replay with SIM_SEED={} ({} transactions)",
            self.invariant, self.detail, self.seed, self.transactions
        )?;
        for step in &self.trace {
            writeln!(f, "  {step}")?;
        }
        Ok(())
    }
}

/// Problem.md invariant 1.
pub const I1_FINAL: &str = "I1 every approval ends in exactly one final state";
/// Problem.md invariant 2.
pub const I2_REVERSED_ONCE: &str = "I2 no authorization reversed twice";
/// Problem.md invariant 2, for settlement.
pub const I2_SETTLED_OR_REVERSED: &str = "I2 none is both settled and reversed";
/// Problem.md invariant 3.
pub const I3_ONE_AUTHORIZATION: &str = "I3 a retry never creates a second authorization";
/// Problem.md invariant 4.
pub const I4_SETTLED: &str = "I4 per merchant, settled = confirmed - refunds - fees";
/// Problem.md invariant 5, and nothing announced is lost.
pub const I5_TOLD: &str = "I5 merchant and terminal told every orphan's outcome";
/// Problem.md invariant 7.
pub const I7_FUNDS: &str = "I7 the issuer's funds match the switch's outcome";
/// The run did not reach quiescence.
pub const LIVENESS: &str = "liveness: the run reaches quiescence";

type Key = (usize, u32);

#[derive(Debug, Clone)]
enum Msg {
    Sale {
        terminal: usize,
        stan: u32,
    },
    TerminalReversal {
        terminal: usize,
        stan: u32,
    },
    Ack {
        terminal: usize,
        stan: u32,
    },
    Answer {
        terminal: usize,
        stan: u32,
        approved: bool,
    },
    IssuerAuth {
        rrn: R,
        key: Key,
        amount: i64,
        incarnation: u32,
        /// The call's deadline: the issuer does not act on it later.
        deadline: OffsetDateTime,
    },
    IssuerReversal {
        rrn: R,
        incarnation: u32,
        attempt: u32,
    },
    IssuerAuthAnswer {
        rrn: R,
        code: ResponseCode,
        approval: String,
        incarnation: u32,
    },
    IssuerReversalAnswer {
        rrn: R,
        code: ResponseCode,
        incarnation: u32,
        attempt: u32,
    },
    Ask {
        rrn: R,
        decision: OrphanDecision,
    },
    AskAnswer {
        rrn: R,
        command: WatchCommand,
    },
    /// The issuer refused a call (it is down): UNAVAILABLE.
    IssuerRefused {
        rrn: R,
        incarnation: u32,
        /// The reversal attempt refused; `None` for the authorization.
        reversal_attempt: Option<u32>,
    },
    Notifier(notifier::Net),
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Sale { terminal, stan } => write!(f, "sale terminal {terminal} STAN {stan}"),
            Msg::TerminalReversal { terminal, stan } => {
                write!(f, "terminal reversal terminal {terminal} STAN {stan}")
            }
            Msg::Ack { terminal, stan } => write!(f, "ack terminal {terminal} STAN {stan}"),
            Msg::Answer {
                terminal,
                stan,
                approved,
            } => write!(
                f,
                "answer to terminal {terminal} STAN {stan}: {}",
                if *approved {
                    "approved"
                } else {
                    "not approved"
                }
            ),
            Msg::IssuerAuth {
                rrn,
                amount,
                incarnation,
                ..
            } => write!(f, "issuer auth {rrn} amount {amount} (conn {incarnation})"),
            Msg::IssuerReversal {
                rrn,
                incarnation,
                attempt,
            } => write!(
                f,
                "issuer reversal {rrn} attempt {attempt} (conn {incarnation})"
            ),
            Msg::IssuerAuthAnswer {
                rrn,
                code,
                incarnation,
                ..
            } => write!(
                f,
                "issuer auth answer {rrn} code {} (conn {incarnation})",
                code.as_str()
            ),
            Msg::IssuerReversalAnswer {
                rrn,
                code,
                incarnation,
                attempt,
            } => write!(
                f,
                "issuer reversal answer {rrn} attempt {attempt} code {} (conn {incarnation})",
                code.as_str()
            ),
            Msg::Ask { rrn, decision } => write!(f, "ask authorization {decision:?} for {rrn}"),
            Msg::AskAnswer { rrn, command } => {
                write!(f, "answer to handler for {rrn}: {command:?}")
            }
            Msg::IssuerRefused {
                rrn,
                incarnation,
                reversal_attempt,
            } => write!(
                f,
                "issuer refuses {} {rrn} (conn {incarnation})",
                reversal_attempt.map_or("authorization".to_owned(), |a| format!(
                    "reversal attempt {a}"
                ))
            ),
            Msg::Notifier(net) => net.fmt(f),
        }
    }
}

#[derive(Debug, Clone)]
struct Envelope {
    /// Send order; a duplicate keeps its original's.
    seq: u64,
    /// A delayed message is not delivered before this.
    not_before: OffsetDateTime,
    msg: Msg,
}

impl Envelope {
    /// The RRN of a call to the issuer, which arrives in send order.
    fn issuer_rrn(&self) -> Option<&R> {
        match &self.msg {
            Msg::IssuerAuth { rrn, .. } | Msg::IssuerReversal { rrn, .. } => Some(rrn),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    stan: u32,
    sent_at: OffsetDateTime,
    retries: u32,
}

#[derive(Debug, Clone)]
struct Terminal {
    next_stan: u32,
    waiting: Option<Waiting>,
    silent: bool,
    policy: OrphanPolicy,
}

#[derive(Debug, Clone, Copy)]
struct QueueEntry {
    attempts: u32,
    requested_at: OffsetDateTime,
    due_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy)]
struct ReversalCall {
    attempt: u32,
    sent_at: OffsetDateTime,
    deadline: OffsetDateTime,
}

/// The authorization service: the journal, its reversal queue and sequence
/// are committed; the rest is memory, gone on a restart.
#[derive(Debug)]
struct AuthorizationService {
    journal: BTreeMap<Key, Authorization>,
    by_rrn: BTreeMap<R, Key>,
    queue: BTreeMap<R, QueueEntry>,
    rrn_sequence: u64,
    incarnation: u32,
    pending_sales: BTreeMap<R, OffsetDateTime>,
    late_waits: BTreeMap<R, OffsetDateTime>,
    reversal_calls: BTreeMap<R, ReversalCall>,
    /// When the recovery sweep runs next (at once after a restart).
    recovery_due_at: OffsetDateTime,
    /// The journal rejects every write until then.
    journal_down_until: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Funds {
    Held,
    Released,
    Declined,
}

#[derive(Debug, Default)]
struct Issuer {
    /// Calls reaching it before this are refused.
    down_until: Option<OffsetDateTime>,
    ledger: BTreeMap<R, (Funds, String)>,
    rrns_per_key: BTreeMap<Key, Vec<R>>,
    releases: BTreeMap<R, u32>,
    approvals: u64,
}

#[derive(Debug, Clone)]
struct Event {
    rrn: R,
    announcement: lifecycle::Announcement,
    outcome_detail: Option<WatchOutcome>,
    /// The record's evidence and reversal reason, as the event carries them.
    evidence: Option<Evidence>,
    reason: Option<ReversalReason>,
    at: OffsetDateTime,
}

#[derive(Debug, Default)]
struct Handler {
    watches: BTreeMap<R, Watch>,
    committed: usize,
    position: usize,
}

#[derive(Debug, Clone)]
enum Action {
    Deliver(usize),
    Lose(usize),
    Duplicate(usize),
    Delay(usize, i64),
    Tick(i64),
    StartSale(usize),
    RetrySale(usize),
    TerminalTimeout(usize),
    Silence(usize),
    IssuerTimeout(R),
    SendReversal(R),
    ReversalTimeout(R),
    Consume,
    CommitOffset,
    Sweep(R),
    RecoverySweep,
    IssuerDown(i64),
    JournalDown(i64),
    CrashAuthorization,
    CrashHandler,
    Settlement(settlement::Step),
    Notifier(notifier::Step),
}

/// The simulated world.
struct World {
    config: Config,
    rng: StdRng,
    now: OffsetDateTime,
    seq: u64,
    bag: Vec<Envelope>,
    terminals: Vec<Terminal>,
    authorization: AuthorizationService,
    issuer: Issuer,
    topic: Vec<Event>,
    handler: Handler,
    settlement: settlement::Settlement,
    notifier: notifier::Notifier,
    started: usize,
    amounts: BTreeMap<Key, i64>,
    /// Every step of the run, for the trace of a violation.
    trace: Vec<String>,
    steps: usize,
    faults_on: bool,
    stats: Stats,
    masked_pan: MaskedPan,
    fingerprint: PanFingerprint,
}

/// Runs one simulation; `Err` names the first invariant it broke.
pub fn run(config: &Config) -> Result<Report, Violation> {
    let mut world = World::new(*config);
    let mut report = world.run()?;
    report.stats.qr = qr::run(config)?;
    Ok(report)
}

impl World {
    fn new(config: Config) -> World {
        let pan = Pan::parse("4111111111111111").expect("a valid test PAN");
        let terminals = (0..config.terminals)
            .map(|t| Terminal {
                next_stan: 1,
                waiting: None,
                silent: false,
                policy: if t % 3 == 2 {
                    OrphanPolicy::Confirm
                } else {
                    OrphanPolicy::Reverse
                },
            })
            .collect();
        World {
            config,
            rng: StdRng::seed_from_u64(config.seed),
            now: START,
            seq: 0,
            bag: Vec::new(),
            terminals,
            authorization: AuthorizationService {
                journal: BTreeMap::new(),
                by_rrn: BTreeMap::new(),
                queue: BTreeMap::new(),
                rrn_sequence: 0,
                incarnation: 0,
                pending_sales: BTreeMap::new(),
                late_waits: BTreeMap::new(),
                reversal_calls: BTreeMap::new(),
                recovery_due_at: START,
                journal_down_until: None,
            },
            issuer: Issuer::default(),
            topic: Vec::new(),
            handler: Handler::default(),
            settlement: settlement::Settlement::new(config.terminals),
            notifier: notifier::Notifier::default(),
            started: 0,
            amounts: BTreeMap::new(),
            trace: Vec::new(),
            steps: 0,
            faults_on: true,
            stats: Stats::default(),
            masked_pan: pan.masked(),
            fingerprint: PanHasher::new(b"simulation").fingerprint(&pan),
        }
    }

    fn run(&mut self) -> Result<Report, Violation> {
        let max_steps = MAX_STEPS_PER_SALE * (self.config.sales + 1);
        loop {
            if self.steps > max_steps {
                return Err(self.violation(LIVENESS, format!("{} steps", self.steps), None));
            }
            // Faults stop once every sale is started, or no terminal can
            // start one.
            if self.started >= self.config.sales || self.terminals.iter().all(|t| t.silent) {
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
                let i = self.rng.random_range(0..actions.len());
                actions[i].clone()
            };
            self.step(action);
            self.check_always()?;
        }
        self.check_quiescent()?;
        let mut stats = self.stats;
        for event in &self.topic {
            use lifecycle::Announcement as A;
            match event.announcement {
                A::Approved => stats.approved += 1,
                A::Declined => stats.declined += 1,
                A::IssuerTimedOut => stats.issuer_timed_out += 1,
                A::LateIssuerResponse { .. } => stats.late_answers += 1,
                A::Confirmed => stats.confirmed += 1,
                A::Reversed { .. } => stats.reversed += 1,
                _ => {}
            }
        }
        Ok(Report {
            transactions: self.started,
            steps: self.steps,
            stats,
        })
    }

    fn send(&mut self, msg: Msg) {
        self.seq += 1;
        self.bag.push(Envelope {
            seq: self.seq,
            not_before: self.now,
            msg,
        });
    }

    fn deliverable(&self, i: usize) -> bool {
        if self.bag[i].not_before > self.now {
            return false;
        }
        if self.config.faults.reversal_overtakes {
            return true;
        }
        let envelope = &self.bag[i];
        match envelope.issuer_rrn() {
            None => true,
            Some(rrn) => !self
                .bag
                .iter()
                .any(|other| other.issuer_rrn() == Some(rrn) && other.seq < envelope.seq),
        }
    }

    /// Every action that may happen now.
    fn enabled(&mut self) -> Vec<Action> {
        let mut actions = Vec::with_capacity(self.bag.len() + 32);
        for i in 0..self.bag.len() {
            if self.deliverable(i) {
                actions.push(Action::Deliver(i));
            }
        }
        let now = self.now;
        for (t, terminal) in self.terminals.iter().enumerate() {
            if terminal.silent {
                continue;
            }
            match terminal.waiting {
                None if self.faults_on && self.started < self.config.sales => {
                    actions.push(Action::StartSale(t))
                }
                None => {}
                Some(w) => {
                    if w.retries < 2 && now >= w.sent_at + TERMINAL_RETRY_AFTER * (w.retries + 1) {
                        actions.push(Action::RetrySale(t));
                    }
                    if now >= w.sent_at + TERMINAL_TIMEOUT {
                        actions.push(Action::TerminalTimeout(t));
                    }
                }
            }
        }
        let auth = &self.authorization;
        for (rrn, deadline) in &auth.pending_sales {
            if now >= *deadline {
                actions.push(Action::IssuerTimeout(rrn.clone()));
            }
        }
        for (rrn, entry) in &auth.queue {
            if now >= entry.due_at && !auth.reversal_calls.contains_key(rrn) {
                actions.push(Action::SendReversal(rrn.clone()));
            }
        }
        if !self.config.ablation.no_recovery_sweep && now >= auth.recovery_due_at {
            actions.push(Action::RecoverySweep);
        }
        for (rrn, call) in &auth.reversal_calls {
            if now >= call.deadline {
                actions.push(Action::ReversalTimeout(rrn.clone()));
            }
        }
        if self.handler.position < self.topic.len() {
            actions.push(Action::Consume);
        }
        if self.handler.committed < self.handler.position {
            actions.push(Action::CommitOffset);
        }
        for (rrn, watch) in &self.handler.watches {
            if watch_due(watch).is_some_and(|due| now >= due) {
                actions.push(Action::Sweep(rrn.clone()));
            }
        }
        self.settlement_enabled(&mut actions);
        self.notifier_enabled(&mut actions);
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
                if faults.crash_handler {
                    chosen.push(Action::CrashHandler);
                }
                if faults.issuer_outage && self.rng.random_ratio(1, 4) {
                    chosen.push(Action::IssuerDown(self.rng.random_range(1_000..60_000)));
                }
                if faults.journal_write_fails && self.rng.random_ratio(1, 4) {
                    chosen.push(Action::JournalDown(self.rng.random_range(100..10_000)));
                }
                self.settlement_faults(&mut chosen);
                self.notifier_faults(&mut chosen);
                let calls = !self.authorization.pending_sales.is_empty();
                if (faults.crash_authorization_idle && !calls)
                    || (faults.crash_during_issuer_call && calls)
                {
                    chosen.push(Action::CrashAuthorization);
                }
                if !chosen.is_empty() {
                    let i = self.rng.random_range(0..chosen.len());
                    return vec![chosen.swap_remove(i)];
                }
            }
        }
        actions
    }

    /// The earliest moment something becomes due, once faults stopped.
    fn next_timer(&self) -> Option<OffsetDateTime> {
        let auth = &self.authorization;
        let terminals = self.terminals.iter().filter(|t| !t.silent).filter_map(|t| {
            t.waiting.map(|w| {
                if w.retries < 2 {
                    w.sent_at + TERMINAL_RETRY_AFTER * (w.retries + 1)
                } else {
                    w.sent_at + TERMINAL_TIMEOUT
                }
            })
        });
        auth.pending_sales
            .values()
            .copied()
            .chain(
                auth.queue
                    .iter()
                    .filter(|(rrn, _)| !auth.reversal_calls.contains_key(*rrn))
                    .map(|(_, e)| e.due_at),
            )
            .chain(auth.reversal_calls.values().map(|c| c.deadline))
            .chain(self.handler.watches.values().filter_map(watch_due))
            .chain(self.recovery_due())
            .chain(terminals)
            .chain(self.settlement_timers())
            .chain(self.notifier_timers())
            .chain(self.bag.iter().map(|e| e.not_before))
            .filter(|at| *at > self.now)
            .min()
    }

    /// When the recovery sweep will find an abandoned call, if it may.
    fn recovery_due(&self) -> Option<OffsetDateTime> {
        if self.config.ablation.no_recovery_sweep {
            return None;
        }
        let auth = &self.authorization;
        auth.journal
            .values()
            .filter(|record| record.state == AuthorizationState::SentToIssuer)
            .map(|record| {
                let abandoned = WINDOWS.call_deadline(record) + Duration::milliseconds(1);
                abandoned.max(auth.recovery_due_at)
            })
            .min()
    }

    /// The sale's call deadline at the issuer.
    fn call_deadline(&self, rrn: &R) -> OffsetDateTime {
        let auth = &self.authorization;
        auth.by_rrn
            .get(rrn)
            .and_then(|key| auth.journal.get(key))
            .map_or(self.now, |record| WINDOWS.call_deadline(record))
    }

    /// Authorization's recovery sweep: the adapter's query, then
    /// `decide` under the (simulated) lock for every candidate.
    fn recovery_sweep(&mut self) {
        let before = WINDOWS.abandoned_before(self.now);
        let abandoned: Vec<Key> = (self.authorization.journal.iter())
            .filter(|(_, r)| r.state == AuthorizationState::SentToIssuer && r.created_at < before)
            .map(|(key, _)| *key)
            .collect();
        for key in abandoned {
            self.execute(key, Command::RecoverAbandonedCall { windows: WINDOWS });
        }
        self.authorization.recovery_due_at = self.now + RECOVERY_INTERVAL;
    }

    /// The reversal call awaiting the answer to `attempt`, taken off the
    /// calls in flight; `None` for an answer to an attempt given up on.
    fn take_reversal_call(&mut self, rrn: &R, attempt: u32) -> Option<ReversalCall> {
        let calls = &mut self.authorization.reversal_calls;
        if calls.get(rrn).is_some_and(|call| call.attempt == attempt) {
            calls.remove(rrn)
        } else {
            None
        }
    }

    fn issuer_is_down(&mut self) -> bool {
        let down = self.issuer.down_until.is_some_and(|until| self.now < until);
        if down {
            self.stats.issuer_refusals += 1;
        }
        down
    }

    fn record(&mut self, line: String) {
        self.trace.push(line);
    }

    fn step(&mut self, action: Action) {
        self.steps += 1;
        let at = millis_between(START, self.now);
        match action {
            Action::Deliver(i) => {
                let envelope = self.bag.swap_remove(i);
                self.record(format!("{at}ms deliver {}", envelope.msg));
                self.deliver(envelope.msg);
            }
            Action::Lose(i) => {
                self.stats.lost += 1;
                let envelope = self.bag.swap_remove(i);
                self.record(format!("{at}ms LOSE {}", envelope.msg));
            }
            Action::Duplicate(i) => {
                self.stats.duplicated += 1;
                let copy = self.bag[i].clone();
                self.record(format!("{at}ms DUPLICATE {}", copy.msg));
                self.bag.push(copy);
            }
            Action::Delay(i, ms) => {
                self.stats.delayed += 1;
                let envelope = &mut self.bag[i];
                envelope.not_before = self.now + Duration::milliseconds(ms);
                let line = format!("{at}ms DELAY {ms}ms {}", envelope.msg);
                self.record(line);
            }
            Action::Tick(ms) => {
                self.now += Duration::milliseconds(ms);
            }
            Action::StartSale(t) => {
                let stan = self.terminals[t].next_stan;
                self.terminals[t].next_stan += 1;
                self.terminals[t].waiting = Some(Waiting {
                    stan,
                    sent_at: self.now,
                    retries: 0,
                });
                self.started += 1;
                let amount = self.rng.random_range(100..10_000);
                self.amounts.insert((t, stan), amount);
                self.record(format!(
                    "{at}ms terminal {t} sale STAN {stan} amount {amount}"
                ));
                self.send(Msg::Sale { terminal: t, stan });
            }
            Action::RetrySale(t) => {
                let Some(w) = self.terminals[t].waiting.as_mut() else {
                    return;
                };
                w.retries += 1;
                let stan = w.stan;
                self.record(format!("{at}ms terminal {t} retries STAN {stan}"));
                self.send(Msg::Sale { terminal: t, stan });
            }
            Action::TerminalTimeout(t) => {
                let Some(w) = self.terminals[t].waiting.take() else {
                    return;
                };
                self.record(format!(
                    "{at}ms terminal {t} times out, reverses STAN {}",
                    w.stan
                ));
                self.send(Msg::TerminalReversal {
                    terminal: t,
                    stan: w.stan,
                });
            }
            Action::Silence(t) => {
                self.stats.terminals_silenced += 1;
                self.record(format!("{at}ms TERMINAL {t} SILENT"));
                self.terminals[t].silent = true;
            }
            Action::IssuerTimeout(rrn) => {
                self.authorization.pending_sales.remove(&rrn);
                let deadline = self.call_deadline(&rrn);
                self.authorization.late_waits.insert(rrn.clone(), deadline);
                self.record(format!("{at}ms issuer call {rrn} times out"));
                self.issuer_decided(&rrn, IssuerVerdict::Unknown);
            }
            Action::SendReversal(rrn) => {
                let Some(entry) = self.authorization.queue.get(&rrn).copied() else {
                    return;
                };
                let attempt = entry.attempts + 1;
                self.authorization.reversal_calls.insert(
                    rrn.clone(),
                    ReversalCall {
                        attempt,
                        sent_at: self.now,
                        deadline: self.now + REVERSAL_CALL_TIMEOUT,
                    },
                );
                self.record(format!("{at}ms reversal {rrn} attempt {attempt} sent"));
                let incarnation = self.authorization.incarnation;
                self.send(Msg::IssuerReversal {
                    rrn,
                    incarnation,
                    attempt,
                });
            }
            Action::ReversalTimeout(rrn) => {
                let Some(call) = self.authorization.reversal_calls.remove(&rrn) else {
                    return;
                };
                self.record(format!(
                    "{at}ms reversal {rrn} attempt {} timed out",
                    call.attempt
                ));
                self.reversal_answered(
                    &rrn,
                    ReversalAnswer::NoAnswer("timeout".into()),
                    call.sent_at,
                );
            }
            Action::Consume => self.consume(),
            Action::RecoverySweep => self.recovery_sweep(),
            Action::IssuerDown(ms) => {
                self.stats.issuer_outages += 1;
                self.record(format!("{at}ms ISSUER DOWN for {ms}ms"));
                self.issuer.down_until = Some(self.now + Duration::milliseconds(ms));
            }
            Action::JournalDown(ms) => {
                self.record(format!("{at}ms JOURNAL DOWN for {ms}ms"));
                self.authorization.journal_down_until = Some(self.now + Duration::milliseconds(ms));
            }
            Action::CommitOffset => {
                self.handler.committed = self.handler.position;
            }
            Action::Sweep(rrn) => {
                let policy = self.policy_of(&rrn);
                self.watch_command(
                    &rrn,
                    WatchCommand::Sweep {
                        policy,
                        lease: SWEEP_LEASE,
                    },
                );
            }
            Action::CrashAuthorization => {
                self.stats.authorization_crashes += 1;
                let calls: Vec<String> = (self.authorization.pending_sales.keys())
                    .map(|rrn| rrn.to_string())
                    .collect();
                self.record(format!(
                    "{at}ms AUTHORIZATION CRASHES (issuer calls in flight: {calls:?})"
                ));
                let auth = &mut self.authorization;
                auth.incarnation += 1;
                auth.pending_sales.clear();
                auth.late_waits.clear();
                auth.reversal_calls.clear();
                auth.recovery_due_at = self.now;
            }
            Action::CrashHandler => {
                self.stats.handler_crashes += 1;
                self.record(format!(
                    "{at}ms HANDLER CRASHES (position {} committed {})",
                    self.handler.position, self.handler.committed
                ));
                self.handler.position = self.handler.committed;
            }
            Action::Settlement(step) => self.settlement_step(step),
            Action::Notifier(step) => self.notifier_step(step),
        }
    }

    fn deliver(&mut self, msg: Msg) {
        match msg {
            Msg::Sale { terminal, stan } => self.sale(terminal, stan),
            Msg::TerminalReversal { terminal, stan } => {
                if self.authorization.journal.contains_key(&(terminal, stan)) {
                    self.execute(
                        (terminal, stan),
                        Command::RequestReversal {
                            reason: ReversalReason::TerminalRequested,
                        },
                    );
                }
            }
            Msg::Ack { terminal, stan } => {
                if self.authorization.journal.contains_key(&(terminal, stan)) {
                    self.execute(
                        (terminal, stan),
                        Command::Acknowledge {
                            evidence: Evidence::TerminalAcknowledgement,
                        },
                    );
                }
            }
            Msg::Answer {
                terminal,
                stan,
                approved,
            } => {
                let t = &mut self.terminals[terminal];
                if t.silent || t.waiting.is_none_or(|w| w.stan != stan) {
                    return;
                }
                t.waiting = None;
                if approved {
                    self.send(Msg::Ack { terminal, stan });
                }
            }
            Msg::IssuerAuth {
                rrn,
                key,
                amount,
                incarnation,
                deadline,
            } => {
                if self.issuer_is_down() {
                    self.send(Msg::IssuerRefused {
                        rrn,
                        incarnation,
                        reversal_attempt: None,
                    });
                    return;
                }
                if self.now > deadline {
                    // Past its deadline the call is dropped unanswered.
                    let at = millis_between(START, self.now);
                    self.record(format!("{at}ms issuer drops {rrn}: past its deadline"));
                    return;
                }
                self.issuer_auth(rrn, key, amount, incarnation)
            }
            Msg::IssuerReversal {
                rrn,
                incarnation,
                attempt,
            } => {
                if self.issuer_is_down() {
                    self.send(Msg::IssuerRefused {
                        rrn,
                        incarnation,
                        reversal_attempt: Some(attempt),
                    });
                    return;
                }
                let code = match self.issuer.ledger.get_mut(&rrn) {
                    None => {
                        self.stats.reversals_unmatched += 1;
                        ResponseCode::UNABLE_TO_LOCATE_RECORD
                    }
                    Some((funds, _)) => {
                        if *funds == Funds::Held {
                            *funds = Funds::Released;
                            *self.issuer.releases.entry(rrn.clone()).or_default() += 1;
                        }
                        ResponseCode::APPROVED
                    }
                };
                self.send(Msg::IssuerReversalAnswer {
                    rrn,
                    code,
                    incarnation,
                    attempt,
                });
            }
            Msg::IssuerAuthAnswer {
                rrn,
                code,
                approval,
                incarnation,
            } => {
                if incarnation != self.authorization.incarnation {
                    return;
                }
                if self.authorization.pending_sales.remove(&rrn).is_some() {
                    let verdict = match IssuerVerdict::read(code.as_str(), &approval) {
                        Ok(IssuerVerdict::NotAccepted { response_code, .. })
                            if self.config.ablation.partial_approval_read_as_decline =>
                        {
                            IssuerVerdict::Declined(response_code)
                        }
                        Ok(verdict) => verdict,
                        Err(_) => IssuerVerdict::Unknown,
                    };
                    self.issuer_decided(&rrn, verdict);
                } else if let Some(until) = self.authorization.late_waits.remove(&rrn)
                    && self.now <= until
                    && let Some(key) = self.authorization.by_rrn.get(&rrn).cloned()
                {
                    self.execute(
                        key,
                        Command::LateIssuerAnswer {
                            response_code: code.as_str().to_owned(),
                            approval_code: approval,
                            latency_ms: 0,
                        },
                    );
                }
            }
            Msg::IssuerReversalAnswer {
                rrn,
                code,
                incarnation,
                attempt,
            } => {
                if incarnation != self.authorization.incarnation {
                    return;
                }
                let Some(call) = self.take_reversal_call(&rrn, attempt) else {
                    return;
                };
                self.reversal_answered(&rrn, ReversalAnswer::Answered(code), call.sent_at);
            }
            Msg::Ask { rrn, decision } => {
                let Some(key) = self.authorization.by_rrn.get(&rrn).cloned() else {
                    return;
                };
                let command = match decision {
                    OrphanDecision::Reverse(reason) => Command::RequestReversal { reason },
                    OrphanDecision::Confirm(evidence) => Command::Confirm { evidence },
                };
                let failures = self.stats.journal_write_failures;
                let answer = match self.execute(key, command) {
                    Some(record) => match outcome_of(&record) {
                        Some(outcome) => WatchCommand::CallSucceeded { outcome },
                        None => WatchCommand::CallRefused,
                    },
                    // An error, not a refusal: the handler tries again.
                    None if self.stats.journal_write_failures > failures => {
                        WatchCommand::CallFailed {
                            retry: HANDLER_RETRY,
                            jitter: self.rng.random(),
                        }
                    }
                    None => WatchCommand::CallRefused,
                };
                self.send(Msg::AskAnswer {
                    rrn,
                    command: answer,
                });
            }
            Msg::AskAnswer { rrn, command } => self.watch_command(&rrn, command),
            Msg::IssuerRefused {
                rrn,
                incarnation,
                reversal_attempt,
            } => {
                if incarnation != self.authorization.incarnation {
                    return;
                }
                match reversal_attempt {
                    // A refused call is no answer: whether money moved is
                    // unknown (a proxy may refuse after the issuer acted).
                    None => {
                        if self.authorization.pending_sales.remove(&rrn).is_some() {
                            self.issuer_decided(&rrn, IssuerVerdict::Unknown);
                        }
                    }
                    Some(attempt) => {
                        let Some(call) = self.take_reversal_call(&rrn, attempt) else {
                            return;
                        };
                        self.reversal_answered(
                            &rrn,
                            ReversalAnswer::NoAnswer("unavailable".into()),
                            call.sent_at,
                        );
                    }
                }
            }
            Msg::Notifier(net) => self.notifier_deliver(net),
        }
    }

    fn sale(&mut self, terminal: usize, stan: u32) {
        let key = (terminal, stan);
        if let Some(existing) = self.authorization.journal.get(&key) {
            // A retry: answer with the original's outcome once decided.
            if !existing.state.is_in_flight() {
                let approved = matches!(
                    existing.state,
                    AuthorizationState::Approved | AuthorizationState::Confirmed
                );
                self.send(Msg::Answer {
                    terminal,
                    stan,
                    approved,
                });
            }
            return;
        }
        let auth = &mut self.authorization;
        auth.rrn_sequence += 1;
        let rrn = R(Rrn::from_parts(self.now.date(), auth.rrn_sequence));
        let amount = self.amounts[&key];
        let intent = SaleIntent {
            transaction_id: TransactionId::from_uuid(uuid::Uuid::from_u128(u128::from(
                auth.rrn_sequence,
            ))),
            key: request_key(terminal, stan, self.now),
            merchant_id: MerchantId::parse(&format!("SIMMERCHANT{terminal:04}"))
                .expect("valid merchant id"),
            rrn: rrn.0.clone(),
            masked_pan: self.masked_pan.clone(),
            pan_fingerprint: self.fingerprint.clone(),
            amount: Money::new(amount, Currency::parse("EUR").expect("EUR")),
            channel: Channel::Card,
        };
        let (record, _history) = Authorization::open(intent, self.now);
        auth.journal.insert(key, record);
        auth.by_rrn.insert(rrn.clone(), key);
        auth.pending_sales
            .insert(rrn.clone(), self.now + ISSUER_TIMEOUT);
        let incarnation = auth.incarnation;
        let deadline = self.now + CALL_DEADLINE;
        self.send(Msg::IssuerAuth {
            rrn,
            key,
            amount,
            incarnation,
            deadline,
        });
    }

    fn issuer_auth(&mut self, rrn: R, key: Key, amount: i64, incarnation: u32) {
        let partial_approvals = self.config.faults.partial_approvals;
        let issuer = &mut self.issuer;
        let rrns = issuer.rrns_per_key.entry(key).or_default();
        if !rrns.contains(&rrn) {
            rrns.push(rrn.clone());
        }
        // A partial approval holds funds (less than asked) as an approval
        // does; only its code differs.
        let partial = partial_approvals && amount % 7 == 0;
        let (funds, approval) = issuer.ledger.entry(rrn.clone()).or_insert_with(|| {
            if amount % 5 == 0 {
                (Funds::Declined, String::new())
            } else {
                issuer.approvals += 1;
                (Funds::Held, format!("A{:05}", issuer.approvals % 100_000))
            }
        });
        let code = if *funds == Funds::Declined {
            ResponseCode::INSUFFICIENT_FUNDS
        } else if partial {
            ResponseCode::PARTIAL_APPROVAL
        } else {
            ResponseCode::APPROVED
        };
        let approval = approval.clone();
        // The answer goes back on the connection the call came on.
        self.send(Msg::IssuerAuthAnswer {
            rrn,
            code,
            approval,
            incarnation,
        });
    }

    fn issuer_decided(&mut self, rrn: &R, verdict: IssuerVerdict) {
        let Some(key) = self.authorization.by_rrn.get(rrn).cloned() else {
            return;
        };
        if let Some(record) = self.execute(key, Command::IssuerDecided(verdict)) {
            let approved = record.state == AuthorizationState::Approved;
            self.send(Msg::Answer {
                terminal: key.0,
                stan: key.1,
                approved,
            });
        }
    }

    fn reversal_answered(&mut self, rrn: &R, answer: ReversalAnswer, sent_at: OffsetDateTime) {
        let Some(key) = self.authorization.by_rrn.get(rrn).cloned() else {
            return;
        };
        let Some(entry) = self.authorization.queue.get(rrn).copied() else {
            return;
        };
        let attempt = ReversalAttempt {
            attempts: entry.attempts + 1,
            age_ms: millis_between(entry.requested_at, self.now),
            jitter: self.rng.random(),
            sent_at,
        };
        let windows = if self.config.ablation.reversal_ends_on_first_25 {
            IssuerWindows {
                call_timeout: StdDuration::ZERO,
                late_window: StdDuration::ZERO,
            }
        } else {
            WINDOWS
        };
        let failures = self.stats.journal_write_failures;
        self.execute(
            key,
            Command::ReversalAnswered {
                answer,
                attempt,
                schedule: REVERSAL_SCHEDULE,
                windows,
            },
        );
        if self.stats.journal_write_failures > failures
            && let Some(entry) = self.authorization.queue.get_mut(rrn)
        {
            // Unrecorded: the worker's claim on the entry is a lease, and
            // the next attempt waits for it to run out.
            entry.due_at = self.now + REVERSAL_LEASE;
        }
    }

    /// The journal's adapter: load, decide, commit the record and its
    /// effects in one step. Returns the committed record, `None` if refused.
    fn execute(&mut self, key: Key, command: Command) -> Option<Authorization> {
        let current = self.authorization.journal.get(&key)?;
        let name = command.name();
        let from = current.state;
        let decision = match lifecycle::decide(current, command, self.now) {
            Ok(decision) => decision,
            Err(refusal) => {
                let at = millis_between(START, self.now);
                self.record(format!("{at}ms {name} on {from} refused: {refusal}"));
                return None;
            }
        };
        let next = decision.next.clone();
        let rrn = R(next.rrn.clone());
        let at = millis_between(START, self.now);
        let journal_down =
            (self.authorization.journal_down_until).is_some_and(|until| self.now < until);
        if journal_down && !decision.is_noop() {
            // Nothing of the decision is committed.
            self.stats.journal_write_failures += 1;
            self.record(format!("{at}ms {rrn} {name}: JOURNAL WRITE FAILS"));
            return None;
        }
        self.record(format!("{at}ms {rrn} {name}: {from} -> {}", next.state));
        for effect in decision.effects {
            match effect {
                Effect::Announce(announcement) => {
                    let outcome_detail = outcome_of(&next);
                    self.topic.push(Event {
                        rrn: rrn.clone(),
                        announcement,
                        outcome_detail,
                        evidence: next.confirmation_evidence,
                        reason: next.reversal_reason,
                        at: self.now,
                    });
                }
                Effect::EnqueueReversal { .. } => {
                    self.authorization.queue.insert(
                        rrn.clone(),
                        QueueEntry {
                            attempts: 0,
                            requested_at: self.now,
                            due_at: self.now,
                        },
                    );
                }
                Effect::RetryReversal { delay_ms, .. } => {
                    if let Some(entry) = self.authorization.queue.get_mut(&rrn) {
                        entry.attempts += 1;
                        entry.due_at = self.now + StdDuration::from_millis(delay_ms);
                    }
                }
                Effect::CloseReversal(_) => {
                    self.authorization.queue.remove(&rrn);
                }
                Effect::RecordLateAnswer { .. } => {}
            }
        }
        self.authorization.journal.insert(key, next.clone());
        Some(next)
    }

    fn consume(&mut self) {
        let event = self.topic[self.handler.position].clone();
        self.handler.position += 1;
        use lifecycle::Announcement as A;
        let command = match event.announcement {
            A::Approved => WatchCommand::Approved {
                approved_at: event.at,
                window: ACK_WINDOW,
            },
            A::IssuerTimedOut => WatchCommand::IssuerTimedOut { at: event.at },
            A::Confirmed
            | A::ReversalRequested
            | A::Reversed { .. }
            | A::ReversalDeadLettered { .. } => {
                let outcome = match event.announcement {
                    A::Reversed { .. } => WatchOutcome::Reversed,
                    A::ReversalDeadLettered { .. } => WatchOutcome::ReversalDeadLettered,
                    _ => match event.outcome_detail {
                        Some(outcome) => outcome,
                        None => return,
                    },
                };
                WatchCommand::Announced {
                    outcome,
                    at: event.at,
                }
            }
            A::Declined
            | A::Acknowledged
            | A::AcknowledgementConflict
            | A::LateIssuerResponse { .. } => return,
        };
        self.watch_command(&event.rrn, command);
    }

    /// The handler's adapter: load the watch, decide, commit, act.
    fn watch_command(&mut self, rrn: &R, command: WatchCommand) {
        let current = self
            .handler
            .watches
            .get(rrn)
            .copied()
            .unwrap_or(Watch::Unseen);
        let Ok(decision) = watch::decide(&current, command, self.now) else {
            return;
        };
        self.handler.watches.insert(rrn.clone(), decision.next);
        for effect in decision.effects {
            if let WatchEffect::Ask { decision, .. } = effect {
                let at = millis_between(START, self.now);
                self.record(format!("{at}ms handler asks {decision:?} for {rrn}"));
                self.send(Msg::Ask {
                    rrn: rrn.clone(),
                    decision,
                });
            }
        }
    }

    fn policy_of(&self, rrn: &R) -> OrphanPolicy {
        self.authorization
            .by_rrn
            .get(rrn)
            .map_or(OrphanPolicy::Reverse, |key| self.terminals[key.0].policy)
    }

    /// The trace is every step that names `about`'s RRN, then the last
    /// steps of the run.
    fn violation(&self, invariant: &'static str, detail: String, about: Option<&R>) -> Violation {
        let mut trace = Vec::new();
        if let Some(rrn) = about {
            let needle = rrn.0.as_str();
            trace.extend(self.trace.iter().filter(|l| l.contains(needle)).cloned());
            trace.push("  ... last steps:".to_owned());
        }
        let tail = self.trace.len().saturating_sub(TRACE_LEN);
        trace.extend(self.trace[tail..].iter().cloned());
        Violation {
            invariant,
            detail,
            seed: self.config.seed,
            transactions: self.started,
            trace,
        }
    }

    /// Invariants that hold after every step.
    fn check_always(&self) -> Result<(), Violation> {
        for (key, rrns) in &self.issuer.rrns_per_key {
            if rrns.len() > 1 {
                return Err(self.violation(
                    I3_ONE_AUTHORIZATION,
                    format!(
                        "terminal {} STAN {}: issuer saw {}",
                        key.0,
                        key.1,
                        rrns.iter()
                            .map(|r| r.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    rrns.first(),
                ));
            }
        }
        for (rrn, n) in &self.issuer.releases {
            if *n > 1 {
                return Err(self.violation(
                    I2_REVERSED_ONCE,
                    format!("{rrn} released {n} times"),
                    Some(rrn),
                ));
            }
        }
        for record in self.authorization.journal.values() {
            if record.state == AuthorizationState::Confirmed
                && self
                    .issuer
                    .ledger
                    .get(record.rrn.as_str())
                    .is_some_and(|(funds, _)| *funds == Funds::Released)
            {
                return Err(self.violation(
                    I7_FUNDS,
                    format!("{} confirmed but released at the issuer", record.rrn),
                    Some(&R(record.rrn.clone())),
                ));
            }
        }
        self.check_settlement_always()?;
        self.check_notifier_always()
    }

    /// Invariants that hold once faults stopped and every deadline passed.
    fn check_quiescent(&self) -> Result<(), Violation> {
        let mut reversed: BTreeMap<&R, u32> = BTreeMap::new();
        let mut confirmed: BTreeMap<&R, u32> = BTreeMap::new();
        for event in &self.topic {
            match event.announcement {
                lifecycle::Announcement::Reversed { .. } => {
                    *reversed.entry(&event.rrn).or_default() += 1
                }
                lifecycle::Announcement::Confirmed => {
                    *confirmed.entry(&event.rrn).or_default() += 1
                }
                _ => {}
            }
        }
        for record in self.authorization.journal.values() {
            let rrn = &R(record.rrn.clone());
            let r = reversed.get(rrn).copied().unwrap_or(0);
            let c = confirmed.get(rrn).copied().unwrap_or(0);
            if r > 1 {
                return Err(self.violation(
                    I2_REVERSED_ONCE,
                    format!("{rrn} announced reversed {r} times"),
                    Some(rrn),
                ));
            }
            if !record.state.is_final() || r + c > 1 {
                return Err(self.violation(
                    I1_FINAL,
                    format!(
                        "{rrn} ends {} (reversed {r}, confirmed {c} times), issuer {:?}",
                        record.state,
                        self.issuer.ledger.get(rrn).map(|(funds, _)| *funds)
                    ),
                    Some(rrn),
                ));
            }
            let funds = self.issuer.ledger.get(rrn).map(|(funds, _)| *funds);
            let wrong = match record.state {
                AuthorizationState::Reversed | AuthorizationState::Declined => {
                    funds == Some(Funds::Held)
                }
                AuthorizationState::Confirmed => funds != Some(Funds::Held),
                _ => false,
            };
            if wrong {
                return Err(self.violation(
                    I7_FUNDS,
                    format!("{rrn} is {} but the issuer shows {funds:?}", record.state),
                    Some(rrn),
                ));
            }
        }
        self.check_settlement_quiescent()?;
        self.check_notifier_quiescent()
    }
}

/// When a watch asks to be swept.
fn watch_due(watch: &Watch) -> Option<OffsetDateTime> {
    match *watch {
        Watch::Open { deadline_at, .. } => Some(deadline_at),
        Watch::Decided {
            next_attempt_at, ..
        } => Some(next_attempt_at),
        Watch::Unseen | Watch::Closed { .. } => None,
    }
}

/// What a record's state tells the reversal handler, if it is an outcome.
fn outcome_of(record: &Authorization) -> Option<WatchOutcome> {
    WatchOutcome::of_authorization(
        record.state,
        record.confirmation_evidence,
        record.reversal_reason,
    )
}

fn request_key(terminal: usize, stan: u32, now: OffsetDateTime) -> RequestKey {
    RequestKey {
        terminal_id: TerminalId::parse(&format!("SIMT{terminal:04}")).expect("valid terminal id"),
        stan: Stan::parse(&format!("{:06}", stan % 1_000_000)).expect("valid STAN"),
        local_date: LocalDate::from_date(now.date()),
    }
}

/// `SIM_SEED` from the environment, if set.
pub fn seed_from_env() -> Option<u64> {
    std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok())
}

/// The smallest run it can find that breaks the same invariant as
/// `violation` did under `config`: the same seed and faults with fewer
/// sales, then fewer terminals. Each candidate is a complete run of its
/// own (a seed names a schedule for its configuration), so the result
/// replays exactly with the configuration returned.
pub fn shrink(config: &Config, violation: &Violation) -> (Config, Violation) {
    let mut best = (*config, violation.clone());
    let breaks_the_same = |candidate: &Config| {
        run(candidate)
            .err()
            .filter(|found| found.invariant == violation.invariant)
    };
    for sales in 1..config.sales {
        let candidate = Config { sales, ..*config };
        if let Some(found) = breaks_the_same(&candidate) {
            best = (candidate, found);
            break;
        }
    }
    for terminals in 1..best.0.terminals {
        let candidate = Config {
            terminals,
            ..best.0
        };
        if let Some(found) = breaks_the_same(&candidate) {
            best = (candidate, found);
            break;
        }
    }
    best
}
