//! The two statements of every sale, written for many sales at once: the
//! intents (`insert_intents`) and the issuer's decisions
//! (`update_decisions`), each one multi-row statement in one transaction
//! (see `group_commit`). What goes in is already decided: the intent's
//! record and history come from `Authorization::open`, the decision's next
//! state and event from `lifecycle::decide`.

use std::collections::HashMap;

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use switch_core::lifecycle::Transition;
use switch_platform::outbox::OutboxMessage;
use time::OffsetDateTime;
use uuid::Uuid;

use super::rows::COLUMNS;
use crate::model::Authorization;

/// One new authorization and the audit rows that lead to its state.
pub(super) struct IntentRow {
    pub record: Authorization,
    pub history: [Transition; 2],
}

/// Inserts a batch of intents, each with its history rows, in one
/// statement (one transaction). A row whose key or RRN is already
/// journaled, including by an earlier intent of the same batch, is not
/// inserted: its result is `None`, and the rest of the batch goes in.
/// Results are in the batch's order, matched back by transaction id.
pub(super) async fn insert_intents(
    pool: &PgPool,
    batch: Vec<IntentRow>,
) -> Result<Vec<Option<PgRow>>, sqlx::Error> {
    let ids: Vec<Uuid> = batch
        .iter()
        .map(|intent| intent.record.transaction_id.as_uuid())
        .collect();
    // Rows go in in key order, so two batches (of two processes) never wait
    // for each other's keys in opposite orders.
    let mut sorted = batch;
    sorted.sort_by(|a, b| intent_key(a).cmp(&intent_key(b)));
    let records: Vec<&Authorization> = sorted.iter().map(|i| &i.record).collect();
    let text = |get: fn(&Authorization) -> &str| -> Vec<&str> {
        records.iter().map(|record| get(record)).collect()
    };
    // Every intent has the same two history rows (`Authorization::open`):
    // the statement takes their states and events once.
    let [received, sent] = sorted
        .first()
        .map(|intent| intent.history)
        .unwrap_or_else(Authorization::open_history);
    let rows = sqlx::query(&format!(
        "WITH inserted AS ( \
           INSERT INTO authorizations (transaction_id, terminal_id, merchant_id, stan, \
             local_date, rrn, masked_pan, pan_fingerprint, amount_minor, currency, state, \
             channel, created_at, pan_fingerprint_key_id, updated_at) \
           SELECT i.*, i.created FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], \
             $5::date[], $6::text[], $7::text[], $8::text[], $9::int8[], $10::text[], \
             $11::text[], $12::text[], $13::timestamptz[], $17::text[]) \
             AS i(id, terminal, merchant, stan, local_date, rrn, masked_pan, fingerprint, \
               amount, currency, state, channel, created, fingerprint_key_id) \
           ON CONFLICT DO NOTHING \
           RETURNING {COLUMNS}), \
         history AS ( \
           INSERT INTO authorization_transitions (transaction_id, from_state, to_state, event, at) \
           SELECT transaction_id, NULL, $14::text, $15::text, created_at FROM inserted \
           UNION ALL SELECT transaction_id, $14::text, state, $16::text, created_at FROM inserted) \
         SELECT * FROM inserted"
    ))
    .bind(ids_of(&records))
    .bind(text(|r| r.key.terminal_id.as_str()))
    .bind(text(|r| r.merchant_id.as_str()))
    .bind(text(|r| r.key.stan.as_str()))
    .bind(
        records
            .iter()
            .map(|r| r.key.local_date.date())
            .collect::<Vec<_>>(),
    )
    .bind(text(|r| r.rrn.as_str()))
    .bind(text(|r| r.masked_pan.as_str()))
    .bind(text(|r| r.pan_fingerprint.as_str()))
    .bind(
        records
            .iter()
            .map(|r| r.amount.minor_units())
            .collect::<Vec<_>>(),
    )
    .bind(text(|r| r.amount.currency().code()))
    .bind(text(|r| r.state.as_str()))
    .bind(text(|r| r.channel.as_str()))
    .bind(records.iter().map(|r| r.created_at).collect::<Vec<_>>())
    .bind(received.to.as_str())
    .bind(received.event)
    .bind(sent.event)
    .bind(text(|r| r.pan_fingerprint.key_id().as_str()))
    .fetch_all(pool)
    .await?;
    let mut inserted: HashMap<Uuid, PgRow> = HashMap::with_capacity(rows.len());
    for row in rows {
        inserted.insert(row.try_get("transaction_id")?, row);
    }
    Ok(ids.iter().map(|id| inserted.remove(id)).collect())
}

/// The order intents are inserted in: their terminal key.
fn intent_key(intent: &IntentRow) -> (&str, &str, time::Date) {
    let key = &intent.record.key;
    (
        key.terminal_id.as_str(),
        key.stan.as_str(),
        key.local_date.date(),
    )
}

fn ids_of(records: &[&Authorization]) -> Vec<Uuid> {
    records.iter().map(|r| r.transaction_id.as_uuid()).collect()
}

/// One decision: the record `decide` produced, its audit row, and its
/// announcement already encoded. Every mutable column is written from
/// `next`; the issuer's latency only when the decision measured one (an
/// issuer's answer), so a later decision (an acknowledgement) keeps it.
pub(super) struct DecisionRow {
    pub next: Authorization,
    pub transition: Transition,
    pub issuer_latency_ms: Option<i32>,
    pub decided_at: OffsetDateTime,
    pub message: Option<OutboxMessage>,
}

/// Records a batch of decisions, each with its history row and its outbox
/// row (if it has an event), in one statement (one transaction). A decision
/// whose row is no longer in the state it was decided from is not applied:
/// its result is `None`, and it adds neither history nor event. Results are
/// in the batch's order, matched back by the decision's position.
pub(super) async fn update_decisions(
    pool: &PgPool,
    batch: Vec<DecisionRow>,
) -> Result<Vec<Option<PgRow>>, sqlx::Error> {
    // Rows are locked in transaction id order (see `insert_intents`);
    // `order[k]` is the batch position of the k-th decision sent.
    let size = batch.len();
    let mut sorted: Vec<(usize, DecisionRow)> = batch.into_iter().enumerate().collect();
    sorted.sort_by_key(|(_, decision)| decision.next.transaction_id.as_uuid());
    let order: Vec<usize> = sorted.iter().map(|(position, _)| *position).collect();
    let decisions: Vec<&DecisionRow> = sorted.iter().map(|(_, decision)| decision).collect();
    let message = |get: fn(&OutboxMessage) -> &str| -> Vec<Option<&str>> {
        decisions
            .iter()
            .map(|d| d.message.as_ref().map(get))
            .collect()
    };
    let rows = sqlx::query(&format!(
        "WITH input AS ( \
           SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::int4[], $7::text[], $8::uuid[], $9::text[], $10::text[], $11::bytea[], \
             $12::text[], $13::timestamptz[], $14::text[], $15::text[], $16::timestamptz[], \
             $17::timestamptz[]) \
           WITH ORDINALITY AS i(id, from_state, to_state, new_response_code, \
             new_approval_code, latency_ms, event, event_id, topic, message_key, payload, \
             traceparent, decided_at, new_reversal_reason, new_confirmation_evidence, \
             new_acknowledged_at, new_conflict_at, ord)), \
         updated AS ( \
           UPDATE authorizations SET state = i.to_state, response_code = i.new_response_code, \
             approval_code = i.new_approval_code, \
             issuer_latency_ms = COALESCE(i.latency_ms, authorizations.issuer_latency_ms), \
             reversal_reason = i.new_reversal_reason, \
             confirmation_evidence = i.new_confirmation_evidence, \
             acknowledged_at = i.new_acknowledged_at, conflict_at = i.new_conflict_at, \
             updated_at = i.decided_at \
           FROM input i \
           WHERE transaction_id = i.id AND state = i.from_state \
           RETURNING i.ord, {COLUMNS}), \
         history AS ( \
           INSERT INTO authorization_transitions (transaction_id, from_state, to_state, event, at) \
           SELECT i.id, i.from_state, i.to_state, i.event, i.decided_at \
           FROM updated JOIN input i USING (ord) ORDER BY ord), \
         announced AS ( \
           INSERT INTO outbox (event_id, topic, message_key, payload, traceparent) \
           SELECT i.event_id, i.topic, i.message_key, i.payload, i.traceparent \
           FROM updated JOIN input i USING (ord) \
           WHERE i.event_id IS NOT NULL ORDER BY ord) \
         SELECT * FROM updated"
    ))
    // Planned afresh for every batch: a cached generic plan, made while the
    // journal was small (a fresh deployment, before autovacuum has analyzed
    // it), keeps joining by sequential scan as the table grows: 0.3 ms per
    // decision at 50,000 rows instead of microseconds (ADR 11).
    .persistent(false)
    .bind(
        decisions
            .iter()
            .map(|d| d.next.transaction_id.as_uuid())
            .collect::<Vec<_>>(),
    )
    .bind(
        decisions
            .iter()
            .map(|d| d.transition.from.map(|state| state.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        decisions
            .iter()
            .map(|d| d.transition.to.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        decisions
            .iter()
            .map(|d| d.next.response_code.as_ref().map(|c| c.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        decisions
            .iter()
            .map(|d| d.next.approval_code.as_ref().map(|c| c.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        decisions
            .iter()
            .map(|d| d.issuer_latency_ms)
            .collect::<Vec<_>>(),
    )
    .bind(
        decisions
            .iter()
            .map(|d| d.transition.event)
            .collect::<Vec<_>>(),
    )
    .bind(
        decisions
            .iter()
            .map(|d| d.message.as_ref().map(|m| m.event_id))
            .collect::<Vec<_>>(),
    )
    .bind(message(|m| &m.topic))
    .bind(message(|m| &m.key))
    .bind(
        decisions
            .iter()
            .map(|d| d.message.as_ref().map(|m| m.payload.as_slice()))
            .collect::<Vec<_>>(),
    )
    .bind(message(|m| &m.traceparent))
    .bind(decisions.iter().map(|d| d.decided_at).collect::<Vec<_>>())
    .bind(
        decisions
            .iter()
            .map(|d| d.next.reversal_reason.map(|r| r.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        decisions
            .iter()
            .map(|d| d.next.confirmation_evidence.map(|e| e.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        decisions
            .iter()
            .map(|d| d.next.acknowledged_at)
            .collect::<Vec<_>>(),
    )
    .bind(
        decisions
            .iter()
            .map(|d| d.next.conflict_at)
            .collect::<Vec<_>>(),
    )
    .fetch_all(pool)
    .await?;
    let mut results: Vec<Option<PgRow>> = (0..size).map(|_| None).collect();
    for row in rows {
        // `ord` counts the decisions sent from 1. RETURNING gives each
        // input at most one row, so a decision repeated in one batch is
        // applied once and its repeat falls back like a late one.
        let ord: i64 = row.try_get("ord")?;
        let position = usize::try_from(ord - 1)
            .ok()
            .and_then(|k| order.get(k))
            .copied()
            .ok_or_else(|| sqlx::Error::Protocol(format!("decision ordinal {ord} out of range")))?;
        results[position] = Some(row);
    }
    Ok(results)
}
