//! The platform's own ledger: every order, what it charged and refunded,
//! and the notifications it owes. In memory by default; in PostgreSQL
//! (schema `qr_simulator`) when configured, so it outlives the simulator's
//! process and an audit reads it beside the switch's tables. Either way a
//! change is saved before the answer is sent. The rules are in
//! [`crate::order`]; this module loads, locks (one order at a time: a pay
//! and a close of the same order never interleave) and saves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use qr_platform::{Notification, TradeState};
use serde::Serialize;
use sqlx::PgPool;
use switch_core::Currency;
use time::OffsetDateTime;

use crate::order::{Mode, Order, Refund, Refusal, Step, unix_ms};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("QR platform ledger unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    #[error("QR platform ledger corrupt: {0}")]
    Corrupt(String),
}

/// Where a notification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyStatus {
    /// Due at `next_at`.
    Pending,
    /// Answered 2xx.
    Delivered,
    /// Dropped by the `lose_notifications` fault.
    Lost,
    /// Its schedule ran out unanswered.
    Abandoned,
}

impl NotifyStatus {
    fn as_str(self) -> &'static str {
        match self {
            NotifyStatus::Pending => "pending",
            NotifyStatus::Delivered => "delivered",
            NotifyStatus::Lost => "lost",
            NotifyStatus::Abandoned => "abandoned",
        }
    }

    fn parse(value: &str) -> Result<NotifyStatus, LedgerError> {
        match value {
            "pending" => Ok(NotifyStatus::Pending),
            "delivered" => Ok(NotifyStatus::Delivered),
            "lost" => Ok(NotifyStatus::Lost),
            "abandoned" => Ok(NotifyStatus::Abandoned),
            other => Err(LedgerError::Corrupt(format!(
                "unknown notification status '{other}'"
            ))),
        }
    }
}

/// A notification and its delivery so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    pub notification: Notification,
    /// The exact JSON sent on every attempt.
    pub body: String,
    pub attempts: u32,
    pub status: NotifyStatus,
    pub next_at: Option<OffsetDateTime>,
}

/// One order as the control API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    pub out_trade_no: String,
    pub mode: &'static str,
    pub transaction_id: String,
    pub trade_state: TradeState,
    pub amount: i64,
    pub currency: Currency,
    /// What the shopper paid (the amount once paid, else 0).
    pub charged: i64,
    /// What went back to the shopper, a cancel's refund included.
    pub refunded: i64,
    pub refunds: Vec<RefundEntry>,
    pub refused_payments: u32,
    pub paid_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefundEntry {
    pub out_refund_no: String,
    pub refund_id: String,
    pub amount: i64,
}

impl From<&Order> for LedgerEntry {
    fn from(order: &Order) -> LedgerEntry {
        LedgerEntry {
            out_trade_no: order.out_trade_no.clone(),
            mode: order.mode.as_str(),
            transaction_id: order.transaction_id.clone(),
            trade_state: order.state,
            amount: order.amount,
            currency: order.currency,
            charged: order.charged(),
            refunded: order.refunded(),
            refunds: order
                .refunds
                .iter()
                .map(|r| RefundEntry {
                    out_refund_no: r.out_refund_no.clone(),
                    refund_id: r.refund_id.clone(),
                    amount: r.amount,
                })
                .collect(),
            refused_payments: order.refused_payments,
            paid_at_ms: order.paid_at.map(unix_ms),
        }
    }
}

/// The whole ledger in figures, per currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub orders: u64,
    pub by_state: BTreeMap<String, u64>,
    pub charged: BTreeMap<String, i64>,
    pub refunded: BTreeMap<String, i64>,
}

impl Totals {
    fn add(&mut self, order: &Order) {
        self.orders += 1;
        *self
            .by_state
            .entry(order.state.as_str().into())
            .or_default() += 1;
        *self
            .charged
            .entry(order.currency.code().into())
            .or_default() += order.charged();
        *self
            .refunded
            .entry(order.currency.code().into())
            .or_default() += order.refunded();
    }
}

/// The in-memory ledger, with the indexes the dispatcher's frequent
/// "what is due" looks need, so they cost what is pending, not everything
/// ever recorded.
#[derive(Debug, Default)]
pub struct Memory {
    orders: HashMap<String, Order>,
    /// Orders with a scheduled payment still to come.
    scheduled: HashSet<String>,
    /// Notifications by id.
    notifications: HashMap<String, NotificationRecord>,
    /// Ids of the pending notifications.
    pending: HashSet<String>,
    /// Notification ids per order, in the order they were made.
    by_order: HashMap<String, Vec<String>>,
}

impl Memory {
    fn save(&mut self, order: Order) {
        if order.state.is_pending() && order.pays_at.is_some() {
            self.scheduled.insert(order.out_trade_no.clone());
        } else {
            self.scheduled.remove(&order.out_trade_no);
        }
        self.orders.insert(order.out_trade_no.clone(), order);
    }

    fn queue(&mut self, record: NotificationRecord) {
        let id = record.notification.notify_id.clone();
        self.by_order
            .entry(record.notification.out_trade_no.clone())
            .or_default()
            .push(id.clone());
        self.pending.insert(id.clone());
        self.notifications.insert(id, record);
    }
}

/// The ledger; cloning shares it.
#[derive(Debug, Clone)]
pub enum Ledger {
    Memory(Arc<Mutex<Memory>>),
    Database(PgPool),
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::Memory(Arc::default())
    }
}

impl Ledger {
    /// Applies `op` to the order `out_trade_no` (absent: `None`) under its
    /// lock, saves the order and queues its notifications, first due at
    /// `notify_at`, in one step.
    pub async fn apply<A>(
        &self,
        out_trade_no: &str,
        notify_at: OffsetDateTime,
        op: impl FnOnce(&mut Option<Order>) -> Step<A>,
    ) -> Result<Result<A, Refusal>, LedgerError> {
        match self {
            Ledger::Memory(memory) => {
                let mut memory = lock(memory);
                let mut order = memory.orders.get(out_trade_no).cloned();
                let step = op(&mut order);
                if let Some(order) = order {
                    memory.save(order);
                }
                for notification in step.notifications {
                    memory.queue(record(notification, notify_at));
                }
                Ok(step.answer)
            }
            Ledger::Database(pool) => {
                let mut tx = pool.begin().await?;
                // Serializes every request on this order, its creation
                // included (there is no row to lock before it exists).
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(out_trade_no)
                    .execute(&mut *tx)
                    .await?;
                let mut order = select_order(&mut tx, out_trade_no).await?;
                let before = order.clone();
                let step = op(&mut order);
                if let Some(order) = &order
                    && before.as_ref() != Some(order)
                {
                    save_order(&mut tx, order).await?;
                }
                for notification in step.notifications {
                    let record = record(notification, notify_at);
                    sqlx::query(
                        "INSERT INTO qr_notifications \
                         (notify_id, out_trade_no, body, status, next_at, created_at) \
                         VALUES ($1, $2, $3, 'pending', $4, $5)",
                    )
                    .bind(&record.notification.notify_id)
                    .bind(&record.notification.out_trade_no)
                    .bind(&record.body)
                    .bind(record.next_at)
                    .bind(notify_at)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(step.answer)
            }
        }
    }

    /// The order as it stands, without applying anything.
    pub async fn order(&self, out_trade_no: &str) -> Result<Option<Order>, LedgerError> {
        match self {
            Ledger::Memory(memory) => Ok(lock(memory).orders.get(out_trade_no).cloned()),
            Ledger::Database(pool) => {
                let mut conn = pool.acquire().await?;
                select_order(&mut conn, out_trade_no).await
            }
        }
    }

    /// Orders whose shopper's payment is due by `now`.
    pub async fn due_orders(&self, now: OffsetDateTime) -> Result<Vec<String>, LedgerError> {
        match self {
            Ledger::Memory(memory) => {
                let memory = lock(memory);
                Ok(memory
                    .scheduled
                    .iter()
                    .filter_map(|no| memory.orders.get(no))
                    .filter(|o| o.state.is_pending() && o.pays_at.is_some_and(|due| due <= now))
                    .map(|o| o.out_trade_no.clone())
                    .collect())
            }
            Ledger::Database(pool) => Ok(sqlx::query_scalar(
                "SELECT out_trade_no FROM qr_orders \
                 WHERE state IN ('USERPAYING', 'NOTPAY') AND pays_at <= $1 \
                 ORDER BY pays_at LIMIT 500",
            )
            .bind(now)
            .fetch_all(pool)
            .await?),
        }
    }

    /// Pending notifications due by `now`, oldest first.
    pub async fn due_notifications(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<NotificationRecord>, LedgerError> {
        match self {
            Ledger::Memory(memory) => {
                let memory = lock(memory);
                let mut due: Vec<NotificationRecord> = memory
                    .pending
                    .iter()
                    .filter_map(|id| memory.notifications.get(id))
                    .filter(|n| n.next_at.is_some_and(|at| at <= now))
                    .cloned()
                    .collect();
                due.sort_by_key(|n| n.next_at);
                Ok(due)
            }
            Ledger::Database(pool) => {
                let rows: Vec<NotificationRow> = sqlx::query_as(
                    "SELECT body, attempts, status, next_at FROM qr_notifications \
                     WHERE status = 'pending' AND next_at <= $1 ORDER BY next_at LIMIT 500",
                )
                .bind(now)
                .fetch_all(pool)
                .await?;
                rows.into_iter().map(NotificationRow::into_record).collect()
            }
        }
    }

    /// Records an attempt's result: `status`, attempts so far, and the next
    /// attempt's time while pending.
    pub async fn record_attempt(
        &self,
        notify_id: &str,
        attempts: u32,
        status: NotifyStatus,
        next_at: Option<OffsetDateTime>,
    ) -> Result<(), LedgerError> {
        match self {
            Ledger::Memory(memory) => {
                let mut memory = lock(memory);
                if let Some(n) = memory.notifications.get_mut(notify_id) {
                    n.attempts = attempts;
                    n.status = status;
                    n.next_at = next_at;
                }
                if status != NotifyStatus::Pending {
                    memory.pending.remove(notify_id);
                }
                Ok(())
            }
            Ledger::Database(pool) => {
                sqlx::query(
                    "UPDATE qr_notifications SET attempts = $2, status = $3, next_at = $4 \
                     WHERE notify_id = $1",
                )
                .bind(notify_id)
                .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
                .bind(status.as_str())
                .bind(next_at)
                .execute(pool)
                .await?;
                Ok(())
            }
        }
    }

    /// Every notification of `out_trade_no`, in the order they were made.
    pub async fn notifications_of(
        &self,
        out_trade_no: &str,
    ) -> Result<Vec<NotificationRecord>, LedgerError> {
        match self {
            Ledger::Memory(memory) => {
                let memory = lock(memory);
                Ok(memory
                    .by_order
                    .get(out_trade_no)
                    .into_iter()
                    .flatten()
                    .filter_map(|id| memory.notifications.get(id))
                    .cloned()
                    .collect())
            }
            Ledger::Database(pool) => {
                let rows: Vec<NotificationRow> = sqlx::query_as(
                    "SELECT body, attempts, status, next_at FROM qr_notifications \
                     WHERE out_trade_no = $1 ORDER BY created_at, notify_id",
                )
                .bind(out_trade_no)
                .fetch_all(pool)
                .await?;
                rows.into_iter().map(NotificationRow::into_record).collect()
            }
        }
    }

    pub async fn totals(&self) -> Result<Totals, LedgerError> {
        let mut totals = Totals::default();
        match self {
            Ledger::Memory(memory) => lock(memory).orders.values().for_each(|o| totals.add(o)),
            Ledger::Database(pool) => {
                let numbers: Vec<String> = sqlx::query_scalar("SELECT out_trade_no FROM qr_orders")
                    .fetch_all(pool)
                    .await?;
                let mut conn = pool.acquire().await?;
                for number in numbers {
                    if let Some(order) = select_order(&mut conn, &number).await? {
                        totals.add(&order);
                    }
                }
            }
        }
        Ok(totals)
    }
}

fn record(notification: Notification, next_at: OffsetDateTime) -> NotificationRecord {
    NotificationRecord {
        body: serde_json::to_string(&notification).expect("a notification always serializes"),
        notification,
        attempts: 0,
        status: NotifyStatus::Pending,
        next_at: Some(next_at),
    }
}

#[derive(sqlx::FromRow)]
struct NotificationRow {
    body: String,
    attempts: i32,
    status: String,
    next_at: Option<OffsetDateTime>,
}

impl NotificationRow {
    fn into_record(self) -> Result<NotificationRecord, LedgerError> {
        Ok(NotificationRecord {
            notification: serde_json::from_str(&self.body)
                .map_err(|e| LedgerError::Corrupt(format!("notification body: {e}")))?,
            body: self.body,
            attempts: u32::try_from(self.attempts).unwrap_or_default(),
            status: NotifyStatus::parse(&self.status)?,
            next_at: self.next_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    out_trade_no: String,
    mode: String,
    transaction_id: String,
    amount_minor: i64,
    currency: String,
    state: String,
    pays_at: Option<OffsetDateTime>,
    paid_at: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
    refused_payments: i32,
}

async fn select_order(
    conn: &mut sqlx::PgConnection,
    out_trade_no: &str,
) -> Result<Option<Order>, LedgerError> {
    let Some(row): Option<OrderRow> = sqlx::query_as(
        "SELECT out_trade_no, mode, transaction_id, amount_minor, currency, state, pays_at, \
            paid_at, created_at, refused_payments FROM qr_orders WHERE out_trade_no = $1",
    )
    .bind(out_trade_no)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let refunds: Vec<(String, String, i64, OffsetDateTime)> = sqlx::query_as(
        "SELECT out_refund_no, refund_id, amount_minor, refunded_at FROM qr_refunds \
         WHERE out_trade_no = $1 ORDER BY refunded_at, out_refund_no",
    )
    .bind(out_trade_no)
    .fetch_all(&mut *conn)
    .await?;
    let corrupt = |what: String| LedgerError::Corrupt(format!("order {out_trade_no}: {what}"));
    Ok(Some(Order {
        mode: Mode::parse(&row.mode).ok_or_else(|| corrupt(format!("mode '{}'", row.mode)))?,
        currency: Currency::parse(&row.currency).map_err(|e| corrupt(e.reason))?,
        state: TradeState::parse(&row.state).map_err(|e| corrupt(e.reason))?,
        out_trade_no: row.out_trade_no,
        transaction_id: row.transaction_id,
        amount: row.amount_minor,
        pays_at: row.pays_at,
        paid_at: row.paid_at,
        created_at: row.created_at,
        refunds: refunds
            .into_iter()
            .map(|(out_refund_no, refund_id, amount, refunded_at)| Refund {
                out_refund_no,
                refund_id,
                amount,
                refunded_at,
            })
            .collect(),
        refused_payments: u32::try_from(row.refused_payments).unwrap_or_default(),
    }))
}

async fn save_order(conn: &mut sqlx::PgConnection, order: &Order) -> Result<(), LedgerError> {
    sqlx::query(
        "INSERT INTO qr_orders (out_trade_no, mode, transaction_id, amount_minor, currency, \
            state, pays_at, paid_at, created_at, refused_payments) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (out_trade_no) DO UPDATE SET state = $6, pays_at = $7, paid_at = $8, \
            refused_payments = $10",
    )
    .bind(&order.out_trade_no)
    .bind(order.mode.as_str())
    .bind(&order.transaction_id)
    .bind(order.amount)
    .bind(order.currency.code())
    .bind(order.state.as_str())
    .bind(order.pays_at)
    .bind(order.paid_at)
    .bind(order.created_at)
    .bind(i32::try_from(order.refused_payments).unwrap_or(i32::MAX))
    .execute(&mut *conn)
    .await?;
    for refund in &order.refunds {
        sqlx::query(
            "INSERT INTO qr_refunds (out_trade_no, out_refund_no, refund_id, amount_minor, \
                refunded_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (out_trade_no, out_refund_no) DO NOTHING",
        )
        .bind(&order.out_trade_no)
        .bind(&refund.out_refund_no)
        .bind(&refund.refund_id)
        .bind(refund.amount)
        .bind(refund.refunded_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Every change is made on a copy and inserted whole, so a panic cannot
/// leave the map half updated: a poisoned lock is usable.
fn lock(memory: &Mutex<Memory>) -> MutexGuard<'_, Memory> {
    memory.lock().unwrap_or_else(PoisonError::into_inner)
}
