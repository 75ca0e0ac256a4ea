//! The settlement batcher in the simulated world: its ledger of approvals,
//! fed from the authorization topic through its own consumer offset, and
//! its windows, closed at each merchant's cut-off and then settled.
//!
//! Production's adapter (`crates/settlement-batcher`) is played here: an
//! event becomes a [`LedgerCommand`] as `ingest.rs` maps it (approved,
//! confirmed with its evidence, reversal requested or done with its reason,
//! a conflict flag), and [`ledger::decide`] decides what changes. A run
//! closes a merchant's window when [`due_cutoff`] says one is due and it
//! has approvals before the cut-off, decides `CloseWindow` on each, sums the
//! paid ones with [`payouts`] at the default fee rate, and commits the
//! window as closed; a second step settles it and publishes one payout
//! event per currency, as `windows/close.rs` and `windows/settle.rs` do. A
//! crash loses the consumer's uncommitted offset; the ledger, the event ids
//! it processed (in the same transaction as the change), and closed
//! windows stay, and a window left closed is settled after the restart.

use std::collections::{BTreeMap, BTreeSet};

use switch_core::settlement::ledger;
use switch_core::{
    Currency, FeeRate, LedgerCommand, LedgerEffect, LedgerEntry, LedgerStatus, Money, Payout,
    due_cutoff, payouts,
};
use time::{Duration, OffsetDateTime, Time};

use crate::{AuthorizationState, Funds, I2_SETTLED_OR_REVERSED, I4_SETTLED, R, START, World};
use switch_core::lifecycle::Announcement;

/// How long after the run's start each merchant's daily cut-off falls:
/// the first one during the sales, so windows close with approvals still
/// unconfirmed or being reversed (held), the next one a day later.
const FIRST_CUTOFF_AFTER: Duration = Duration::seconds(40);
const CUTOFF_SPACING: Duration = Duration::seconds(25);

/// One approval in the ledger, with the facts a window needs.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) entry: LedgerEntry,
    pub(crate) merchant: usize,
    pub(crate) amount: i64,
    approved_at: OffsetDateTime,
}

/// A merchant's window: closed (paid entries and payouts committed), then
/// settled (payout events published).
#[derive(Debug, Clone)]
pub(crate) struct Window {
    pub(crate) merchant: usize,
    cutoff: OffsetDateTime,
    paid: Vec<R>,
    pub(crate) payouts: Vec<Payout>,
    settled: bool,
}

/// A payout announced on the settlement topic.
#[derive(Debug, Clone)]
pub(crate) struct Paid {
    pub(crate) merchant: usize,
    pub(crate) window: usize,
    pub(crate) at: OffsetDateTime,
}

/// What settlement may do next.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Consume,
    CommitOffset,
    CloseWindow(usize, OffsetDateTime),
    SettleWindow(usize),
    Crash,
}

/// The batcher: the ledger, processed ids, windows and the published
/// payouts are committed; the consumer's position is memory.
#[derive(Debug)]
pub(crate) struct Settlement {
    /// Per merchant, its daily cut-off and the first cut-off instant a
    /// window can be due at: after the last window's, and after the run
    /// started (no approval is older). `due_cutoff` decides; this only
    /// spares asking it before then.
    cutoffs: Vec<(Time, OffsetDateTime)>,
    pub(crate) ledger: BTreeMap<R, Entry>,
    processed: BTreeSet<usize>,
    committed: usize,
    position: usize,
    pub(crate) windows: Vec<Window>,
    last_cutoff: BTreeMap<usize, OffsetDateTime>,
    /// The settlement topic (its outbox and relay are reliable).
    pub(crate) published: Vec<Paid>,
    /// The first entry a window paid that was not confirmed and held at
    /// the issuer when it closed, and what it was.
    paid_wrongly: Option<(R, String)>,
}

/// What settlement did in a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SettlementStats {
    pub windows_closed: u64,
    pub entries_paid: u64,
    /// Entries held at a cut-off, for any reason.
    pub entries_held: u64,
    /// Events redelivered after a crash and skipped as already processed.
    pub events_redelivered: u64,
    pub crashes: u64,
}

impl SettlementStats {
    pub fn add(&mut self, other: &SettlementStats) {
        self.windows_closed += other.windows_closed;
        self.entries_paid += other.entries_paid;
        self.entries_held += other.entries_held;
        self.events_redelivered += other.events_redelivered;
        self.crashes += other.crashes;
    }
}

/// Events a consumer applies in one transaction, at most
/// (`switch_platform::consumer::MAX_BATCH`).
pub(crate) const MAX_BATCH: usize = 500;

impl Settlement {
    pub(crate) fn new(merchants: usize) -> Settlement {
        let cutoffs = (0..merchants)
            .map(|m| {
                let first = START + FIRST_CUTOFF_AFTER + CUTOFF_SPACING * m as i32;
                (first.time(), first)
            })
            .collect();
        Settlement {
            cutoffs,
            ledger: BTreeMap::new(),
            processed: BTreeSet::new(),
            committed: 0,
            position: 0,
            windows: Vec::new(),
            last_cutoff: BTreeMap::new(),
            published: Vec::new(),
            paid_wrongly: None,
        }
    }
}

/// The first instant after `after` whose time of day is `cutoff`.
fn next_cutoff(cutoff: Time, after: OffsetDateTime) -> OffsetDateTime {
    let today = after.date().with_time(cutoff).assume_utc();
    if today > after {
        today
    } else {
        today + Duration::DAY
    }
}

fn eur() -> Currency {
    Currency::parse("EUR").expect("EUR")
}

impl World {
    pub(crate) fn settlement_enabled(&self, actions: &mut Vec<crate::Action>) {
        let s = &self.settlement;
        if s.position < self.topic.len() {
            actions.push(crate::Action::Settlement(Step::Consume));
        }
        if s.committed < s.position {
            actions.push(crate::Action::Settlement(Step::CommitOffset));
        }
        for merchant in 0..self.terminals.len() {
            if let Some(cutoff) = self.due_window(merchant) {
                actions.push(crate::Action::Settlement(Step::CloseWindow(
                    merchant, cutoff,
                )));
            }
        }
        for (i, window) in s.windows.iter().enumerate() {
            if !window.settled {
                actions.push(crate::Action::Settlement(Step::SettleWindow(i)));
            }
        }
    }

    pub(crate) fn settlement_faults(&self, chosen: &mut Vec<crate::Action>) {
        if self.config.faults.crash_settlement {
            chosen.push(crate::Action::Settlement(Step::Crash));
        }
    }

    /// The cut-off a run would close `merchant`'s window at now: due by
    /// `due_cutoff`, and with an approval before it that is neither paid
    /// nor reversed (production's run finds no candidate otherwise and
    /// records no window).
    fn due_window(&self, merchant: usize) -> Option<OffsetDateTime> {
        let s = &self.settlement;
        let (cutoff_at, earliest) = s.cutoffs[merchant];
        if self.now < earliest {
            return None;
        }
        let candidate = |cutoff: OffsetDateTime| {
            s.ledger.values().any(|e| {
                e.merchant == merchant
                    && !e.entry.paid
                    && e.entry.status.status() != LedgerStatus::Reversed
                    && e.approved_at < cutoff
            })
        };
        due_cutoff(self.now, cutoff_at, s.last_cutoff.get(&merchant).copied())
            .filter(|cutoff| candidate(*cutoff))
    }

    /// Once faults stopped: the next cut-off of every merchant with a
    /// payable approval. A merchant with only held approvals would be due
    /// every day for ever; at quiescence nothing should be held, and the
    /// quiescent checks say so if something is.
    pub(crate) fn settlement_timers(&self) -> Vec<OffsetDateTime> {
        let mut timers = Vec::new();
        for merchant in 0..self.terminals.len() {
            let payable = self.settlement.ledger.values().any(|e| {
                e.merchant == merchant
                    && ledger::eligibility(e.entry.status, e.entry.conflict)
                        == switch_core::Eligibility::Payable
                    && !e.entry.paid
            });
            if payable {
                let (cutoff, earliest) = self.settlement.cutoffs[merchant];
                timers.push(earliest.max(next_cutoff(cutoff, self.now)));
            }
        }
        timers
    }

    pub(crate) fn settlement_step(&mut self, step: Step) {
        let at = crate::millis_between(START, self.now);
        match step {
            Step::Consume => self.settlement_consume(),
            Step::CommitOffset => self.settlement.committed = self.settlement.position,
            Step::CloseWindow(merchant, cutoff) => self.close_window(merchant, cutoff),
            Step::SettleWindow(i) => {
                let window = &mut self.settlement.windows[i];
                window.settled = true;
                let merchant = window.merchant;
                let n = window.payouts.len();
                for _ in 0..n {
                    self.settlement.published.push(Paid {
                        merchant,
                        window: i,
                        at: self.now,
                    });
                }
                self.record(format!(
                    "{at}ms settlement settles window {i} of merchant {merchant}"
                ));
            }
            Step::Crash => {
                self.stats.settlement.crashes += 1;
                let s = &mut self.settlement;
                self.trace.push(format!(
                    "{at}ms SETTLEMENT CRASHES (position {} committed {})",
                    s.position, s.committed
                ));
                s.position = s.committed;
            }
        }
    }

    /// The consumer's adapter: an event it has processed changes nothing
    /// (production records event ids in the handler's transaction); others
    /// become a ledger command, decided on the entry or, for an approval or
    /// confirmation the ledger does not know, inserted as its first entry.
    /// Applies whatever has arrived, up to a batch, in one transaction.
    fn settlement_consume(&mut self) {
        let end = self.topic.len().min(self.settlement.position + MAX_BATCH);
        while self.settlement.position < end {
            let index = self.settlement.position;
            self.settlement.position += 1;
            self.settlement_apply(index);
        }
    }

    fn settlement_apply(&mut self, index: usize) {
        if !self.settlement.processed.insert(index) {
            self.stats.settlement.events_redelivered += 1;
            return;
        }
        let event = &self.topic[index];
        let command = match event.announcement {
            Announcement::Approved => LedgerCommand::Approve,
            Announcement::Confirmed => LedgerCommand::Confirm {
                evidence: event.evidence,
            },
            Announcement::ReversalRequested => match event.reason {
                Some(reason) => LedgerCommand::RequestReversal { reason },
                None => return,
            },
            Announcement::Reversed { .. } => match event.reason {
                Some(reason) => LedgerCommand::Reverse { reason },
                None => return,
            },
            Announcement::AcknowledgementConflict => LedgerCommand::FlagConflict,
            _ => return,
        };
        let rrn = event.rrn.clone();
        let at = event.at;
        match self.settlement.ledger.get_mut(&rrn) {
            Some(known) => {
                if let Ok(decision) = ledger::decide(&known.entry, command) {
                    known.entry = decision.next;
                }
            }
            // Production inserts an approval or a confirmation from its
            // facts and drops any other command of an unknown approval.
            None if matches!(
                command,
                LedgerCommand::Approve | LedgerCommand::Confirm { .. }
            ) =>
            {
                let Some(key) = self.authorization.by_rrn.get(&rrn) else {
                    return;
                };
                let amount = self.authorization.journal[key].amount.minor_units();
                self.settlement.ledger.insert(
                    rrn,
                    Entry {
                        entry: LedgerEntry::first_known(command),
                        merchant: key.0,
                        amount,
                        approved_at: at,
                    },
                );
            }
            None => {}
        }
    }

    fn close_window(&mut self, merchant: usize, cutoff: OffsetDateTime) {
        let s = &mut self.settlement;
        let mut paid = Vec::new();
        let mut amounts = Vec::new();
        let mut held = 0;
        for (rrn, e) in s.ledger.iter_mut() {
            if e.merchant != merchant || e.approved_at >= cutoff {
                continue;
            }
            let Ok(decision) = ledger::decide(&e.entry, LedgerCommand::CloseWindow) else {
                continue;
            };
            for effect in &decision.effects {
                match effect {
                    LedgerEffect::Pay => {
                        paid.push(rrn.clone());
                        amounts.push(Money::new(e.amount, eur()));
                    }
                    LedgerEffect::Hold(_) => held += 1,
                    LedgerEffect::Advance | LedgerEffect::Flag => {}
                }
            }
            e.entry = decision.next;
        }
        let window = Window {
            merchant,
            cutoff,
            payouts: payouts(&amounts, FeeRate::DEFAULT),
            paid,
            settled: false,
        };
        for rrn in &window.paid {
            let state = self
                .authorization
                .by_rrn
                .get(rrn)
                .map(|key| self.authorization.journal[key].state);
            let funds = self.issuer.ledger.get(rrn).map(|(funds, _)| *funds);
            if state != Some(AuthorizationState::Confirmed) || funds != Some(Funds::Held) {
                let what = format!("{rrn} paid while {state:?}, issuer {funds:?}");
                self.settlement
                    .paid_wrongly
                    .get_or_insert((rrn.clone(), what));
            }
        }
        self.stats.settlement.windows_closed += 1;
        self.stats.settlement.entries_paid += window.paid.len() as u64;
        self.stats.settlement.entries_held += held;
        let at = crate::millis_between(START, self.now);
        let cut = crate::millis_between(START, window.cutoff);
        self.trace.push(format!(
            "{at}ms settlement closes window {} of merchant {merchant} at cut-off {cut}ms: \
             paid {}, held {held}",
            self.settlement.windows.len(),
            window
                .paid
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        ));
        let s = &mut self.settlement;
        s.windows.push(window);
        s.last_cutoff.insert(merchant, cutoff);
        let (at_time, _) = s.cutoffs[merchant];
        s.cutoffs[merchant].1 = next_cutoff(at_time, cutoff);
    }

    /// After every step: nothing paid was reversed, declined or released
    /// at the issuer (never both settled and reversed). A window is looked
    /// at when it closes: it never changes after, what it paid was
    /// confirmed, which is final, and I7 checks after every step that no
    /// confirmed authorization is released.
    pub(crate) fn check_settlement_always(&self) -> Result<(), crate::Violation> {
        match &self.settlement.paid_wrongly {
            Some((rrn, what)) => {
                Err(self.violation(I2_SETTLED_OR_REVERSED, what.clone(), Some(rrn)))
            }
            None => Ok(()),
        }
    }

    /// At quiescence: the ledger agrees with the journal, every window is
    /// settled, its payouts add up, and per merchant the settled gross is
    /// the sum of its confirmed approvals, net of the fees, every
    /// difference explained by a conflict flag.
    pub(crate) fn check_settlement_quiescent(&self) -> Result<(), crate::Violation> {
        let s = &self.settlement;
        for record in self.authorization.journal.values() {
            let rrn = R(record.rrn.clone());
            let entry = s.ledger.get(&rrn);
            let status = entry.map(|e| e.entry.status.status());
            let agrees = match record.state {
                AuthorizationState::Confirmed => status == Some(LedgerStatus::Confirmed),
                // A reversal of an approval the ledger never heard of (an
                // issuer timeout) is dropped, as production drops it.
                AuthorizationState::Reversed => {
                    status.is_none() || status == Some(LedgerStatus::Reversed)
                }
                _ => status.is_none(),
            };
            if !agrees {
                return Err(self.violation(
                    I4_SETTLED,
                    format!("{rrn} is {} but the ledger says {status:?}", record.state),
                    Some(&rrn),
                ));
            }
        }
        let mut gross_paid: BTreeMap<usize, i64> = BTreeMap::new();
        for (i, window) in s.windows.iter().enumerate() {
            if !window.settled {
                return Err(self.violation(
                    I4_SETTLED,
                    format!("window {i} of merchant {} never settled", window.merchant),
                    None,
                ));
            }
            let amounts: i64 = window.paid.iter().map(|rrn| s.ledger[rrn].amount).sum();
            let gross: i64 = window.payouts.iter().map(|p| p.gross_minor_units).sum();
            let fee_and_net: i64 = window
                .payouts
                .iter()
                .map(|p| p.fee_minor_units + p.net_minor_units)
                .sum();
            let fees_bounded = window
                .payouts
                .iter()
                .all(|p| (0..=p.gross_minor_units).contains(&p.fee_minor_units));
            if amounts != gross || fee_and_net != gross || !fees_bounded {
                return Err(self.violation(
                    I4_SETTLED,
                    format!(
                        "window {i} of merchant {}: paid entries sum to {amounts}, \
                         payouts {:?}",
                        window.merchant, window.payouts
                    ),
                    None,
                ));
            }
            *gross_paid.entry(window.merchant).or_default() += gross;
        }
        let mut confirmed: BTreeMap<usize, i64> = BTreeMap::new();
        for (key, record) in &self.authorization.journal {
            if record.state != AuthorizationState::Confirmed {
                continue;
            }
            let rrn = R(record.rrn.clone());
            let explained = s.ledger.get(&rrn).is_some_and(|e| e.entry.conflict);
            if !explained {
                *confirmed.entry(key.0).or_default() += record.amount.minor_units();
            }
        }
        for merchant in 0..self.terminals.len() {
            let paid = gross_paid.get(&merchant).copied().unwrap_or(0);
            let owed = confirmed.get(&merchant).copied().unwrap_or(0);
            if paid != owed {
                return Err(self.violation(
                    I4_SETTLED,
                    format!(
                        "merchant {merchant}: settled gross {paid}, confirmed and not \
                         flagged {owed}"
                    ),
                    None,
                ));
            }
        }
        Ok(())
    }
}
