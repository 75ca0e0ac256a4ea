//! The audit at the end of a chaos run: the issuer simulator's own ledger,
//! the switch's tables and the Kafka topics, compared. Every figure of
//! [`Audit::promises`] must be zero.

use std::collections::{BTreeMap, HashSet};

use rdkafka::Message as _;
use rdkafka::message::{Headers as _, OwnedMessage};
use switch_platform::outbox::EVENT_ID_HEADER;

use super::deployment::Deployment;
use crate::read_topic;

/// What the audit found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Audit {
    /// Authorizations not in a final state past every deadline + 5 s.
    pub open_past_deadline: i64,
    /// Reversals the switch gave up on (they need an operator).
    pub dead_lettered_reversals: i64,
    /// Reversals that reached the issuer after the hold was released,
    /// without the repeat flag: an issuer without duplicate detection
    /// would have credited the shopper twice.
    pub double_reversals_at_issuer: i64,
    /// Paid to a merchant, but reversed by the switch or not held at the
    /// issuer.
    pub settled_and_reversed: i64,
    /// Funds the issuer still holds for a transaction the switch does not
    /// consider confirmed (reversed, declined, or never known): a shopper
    /// charged with no receipt.
    pub held_at_issuer_not_confirmed: i64,
    /// Confirmed by the switch, but the issuer holds nothing: a merchant
    /// paid for money never taken.
    pub confirmed_without_hold: i64,
    /// Events written to an outbox that never reached their topic.
    pub events_lost: i64,
    /// Approvals whose settlement status disagrees with the journal (a
    /// consumed event lost or applied wrongly).
    pub settlement_out_of_step: i64,
    /// Journal rows sharing a terminal key or an RRN.
    pub duplicate_journal_rows: i64,
    /// Events a consumer set aside as poison.
    pub dead_lettered_events: i64,
    /// Approvals the settlement ledger refused for a terminal key another
    /// transaction holds.
    pub ledger_rejections: i64,
    /// For the report: journal rows by state.
    pub journal_states: BTreeMap<String, i64>,
    /// For the report: issuer ledger entries by state.
    pub issuer_states: BTreeMap<String, i64>,
    /// For the report: transactions paid in a settlement window.
    pub settled_transactions: i64,
    /// For the report: messages read back from the outbox topics.
    pub events_on_topics: i64,
}

impl Audit {
    /// The figures that must be zero, by name.
    pub fn promises(&self) -> [(&'static str, i64); 11] {
        [
            (
                "approvals left open past deadline + 5 s",
                self.open_past_deadline,
            ),
            ("reversals dead-lettered", self.dead_lettered_reversals),
            (
                "double reversals at the issuer",
                self.double_reversals_at_issuer,
            ),
            ("settled and reversed", self.settled_and_reversed),
            (
                "funds held at the issuer, not confirmed by the switch",
                self.held_at_issuer_not_confirmed,
            ),
            ("confirmed with no funds held", self.confirmed_without_hold),
            ("events lost", self.events_lost),
            (
                "settlement out of step with the journal",
                self.settlement_out_of_step,
            ),
            ("duplicate journal rows", self.duplicate_journal_rows),
            (
                "events dead-lettered by a consumer",
                self.dead_lettered_events,
            ),
            ("ledger rejections", self.ledger_rejections),
        ]
    }
}

/// The states an authorization stays in.
pub const FINAL_STATES: &str = "('confirmed', 'declined', 'reversed', 'reversal_dead_lettered')";

/// Journal rows not yet in a final state.
pub async fn unfinished(deployment: &Deployment) -> anyhow::Result<i64> {
    let a = deployment.schema("authorization");
    Ok(sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{a}\".authorizations WHERE state NOT IN {FINAL_STATES}"
    ))
    .fetch_one(&deployment.database)
    .await?)
}

/// Outbox rows of authorization not yet published.
pub async fn unpublished(deployment: &Deployment) -> anyhow::Result<i64> {
    let a = deployment.schema("authorization");
    Ok(sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{a}\".outbox WHERE published_at IS NULL"
    ))
    .fetch_one(&deployment.database)
    .await?)
}

/// Approvals (ended confirmed or reversed) whose settlement row is missing
/// or disagrees.
pub async fn settlement_out_of_step(deployment: &Deployment) -> anyhow::Result<i64> {
    let (a, s) = (
        deployment.schema("authorization"),
        deployment.schema("settlement-batcher"),
    );
    Ok(sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{a}\".authorizations a \
         LEFT JOIN \"{s}\".transactions t ON t.transaction_id = a.transaction_id \
         WHERE a.state IN ('confirmed', 'reversed') \
           AND a.transaction_id IN (SELECT transaction_id FROM \"{a}\".authorization_transitions \
                                    WHERE to_state = 'approved') \
           AND (t.transaction_id IS NULL OR (a.state = 'confirmed') <> (t.status = 'confirmed'))"
    ))
    .fetch_one(&deployment.database)
    .await?)
}

/// Runs every check. `deadline_ms` is the longest any authorization may
/// stay open (the issuer's late window plus the acknowledgement window).
pub async fn audit(deployment: &Deployment, deadline_ms: u64) -> anyhow::Result<Audit> {
    let db = &deployment.database;
    let a = deployment.schema("authorization");
    let i = deployment.schema("issuer-simulator");
    let s = deployment.schema("settlement-batcher");
    let count = |sql: String| async move {
        sqlx::query_scalar::<_, i64>(&sql)
            .fetch_one(db)
            .await
            .map_err(|e| anyhow::anyhow!("{e}: {sql}"))
    };
    let mut audit = Audit {
        open_past_deadline: count(format!(
            "SELECT count(*) FROM \"{a}\".authorizations WHERE state NOT IN {FINAL_STATES} \
             AND created_at < now() - interval '1 millisecond' * {}",
            deadline_ms + 5_000
        ))
        .await?,
        dead_lettered_reversals: count(format!(
            "SELECT count(*) FROM \"{a}\".authorizations WHERE state = 'reversal_dead_lettered'"
        ))
        .await?,
        double_reversals_at_issuer: count(format!(
            "SELECT coalesce(sum(unflagged_repeats), 0)::bigint FROM \"{i}\".issuer_ledger"
        ))
        .await?,
        settled_and_reversed: count(format!(
            "SELECT count(*) FROM \"{s}\".transactions t \
             LEFT JOIN \"{a}\".authorizations a ON a.transaction_id = t.transaction_id \
             LEFT JOIN \"{i}\".issuer_ledger l ON l.rrn = t.rrn \
             WHERE t.window_id IS NOT NULL \
               AND (a.state IS DISTINCT FROM 'confirmed' OR l.state IS DISTINCT FROM 'held')"
        ))
        .await?,
        held_at_issuer_not_confirmed: count(format!(
            "SELECT count(*) FROM \"{i}\".issuer_ledger l \
             LEFT JOIN \"{a}\".authorizations a ON a.rrn = l.rrn \
             WHERE l.state = 'held' AND a.state IS DISTINCT FROM 'confirmed'"
        ))
        .await?,
        confirmed_without_hold: count(format!(
            "SELECT count(*) FROM \"{a}\".authorizations a \
             LEFT JOIN \"{i}\".issuer_ledger l ON l.rrn = a.rrn \
             WHERE a.state = 'confirmed' AND l.state IS DISTINCT FROM 'held'"
        ))
        .await?,
        settlement_out_of_step: settlement_out_of_step(deployment).await?,
        duplicate_journal_rows: count(format!(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM \"{a}\".authorizations \
                     GROUP BY terminal_id, local_date, stan HAVING count(*) > 1) k) \
                  + (SELECT count(*) FROM (SELECT 1 FROM \"{a}\".authorizations \
                     GROUP BY rrn HAVING count(*) > 1) r)"
        ))
        .await?,
        ledger_rejections: count(format!("SELECT count(*) FROM \"{s}\".ledger_rejections")).await?,
        settled_transactions: count(format!(
            "SELECT count(*) FROM \"{s}\".transactions WHERE window_id IS NOT NULL"
        ))
        .await?,
        ..Audit::default()
    };
    for consumer in [
        "reversal-handler",
        "settlement-batcher",
        "notifier",
        "terminal-gateway",
    ] {
        let schema = deployment.schema(consumer);
        audit.dead_lettered_events += count(format!(
            "SELECT count(*) FROM \"{schema}\".dead_letter_events"
        ))
        .await?;
    }
    audit.journal_states = grouped(
        db,
        &format!("SELECT state, count(*) FROM \"{a}\".authorizations GROUP BY state"),
    )
    .await?;
    audit.issuer_states = grouped(
        db,
        &format!("SELECT state, count(*) FROM \"{i}\".issuer_ledger GROUP BY state"),
    )
    .await?;
    let (lost, read) = events_lost(deployment).await?;
    audit.events_lost = lost;
    audit.events_on_topics = read;
    Ok(audit)
}

async fn grouped(db: &sqlx::PgPool, sql: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(sql).fetch_all(db).await?;
    Ok(rows.into_iter().collect())
}

/// Every outbox row of every service that has one, looked for on its
/// topic by event id: (missing, read).
async fn events_lost(deployment: &Deployment) -> anyhow::Result<(i64, i64)> {
    let mut missing = 0;
    let mut read = 0;
    for service in ["authorization", "settlement-batcher", "notifier"] {
        let schema = deployment.schema(service);
        let exists: Option<String> =
            sqlx::query_scalar(&format!("SELECT to_regclass('\"{schema}\".outbox')::text"))
                .fetch_one(&deployment.database)
                .await?;
        if exists.is_none() {
            continue;
        }
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT topic, event_id::text FROM \"{schema}\".outbox"
        ))
        .fetch_all(&deployment.database)
        .await?;
        let mut by_topic: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        for (topic, event_id) in rows {
            by_topic.entry(topic).or_default().insert(event_id);
        }
        for (topic, mut owed) in by_topic {
            let messages = read_topic(&deployment.broker_address.to_string(), &topic).await?;
            read += messages.len() as i64;
            for message in &messages {
                if let Some(event_id) = event_id_header(message) {
                    owed.remove(&event_id);
                }
            }
            missing += owed.len() as i64;
        }
    }
    Ok((missing, read))
}

/// The relay's `event_id` header of a message.
fn event_id_header(message: &OwnedMessage) -> Option<String> {
    message.headers()?.iter().find_map(|header| {
        (header.key == EVENT_ID_HEADER)
            .then(|| {
                header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .flatten()
    })
}
