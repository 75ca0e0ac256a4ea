//! The terminal backlog in the gateway's schema: messages kept until their
//! terminal acknowledges them.

use prost::Message as _;
use sqlx::{PgConnection, PgPool, Row};
use switch_proto::v1::TerminalMessage;
use uuid::Uuid;

/// Stores `message` (its `sequence` is ignored) for `terminal_id` unless a
/// message with its id is stored already; `true` when it was new.
pub async fn insert(
    conn: &mut PgConnection,
    message_id: Uuid,
    terminal_id: &str,
    message: &TerminalMessage,
) -> Result<bool, sqlx::Error> {
    let payload = TerminalMessage {
        sequence: 0,
        ..message.clone()
    }
    .encode_to_vec();
    let inserted = sqlx::query(
        "INSERT INTO terminal_messages (message_id, terminal_id, kind, payload) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(message_id)
    .bind(terminal_id)
    .bind(&message.kind)
    .bind(payload)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Up to `limit` unacknowledged messages of `terminal_id` after sequence
/// `after`, oldest first. A row whose payload does not decode is logged and
/// skipped (it cannot be shown, and must not stop the rest).
pub async fn unacknowledged(
    pool: &PgPool,
    terminal_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<TerminalMessage>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT sequence, payload FROM terminal_messages \
         WHERE terminal_id = $1 AND acknowledged_at IS NULL AND sequence > $2 \
         ORDER BY sequence LIMIT $3",
    )
    .bind(terminal_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut messages = Vec::with_capacity(rows.len());
    for row in rows {
        let sequence: i64 = row.get("sequence");
        let payload: &[u8] = row.get("payload");
        match TerminalMessage::decode(payload) {
            Ok(mut message) => {
                message.sequence = u64::try_from(sequence).unwrap_or_default();
                messages.push(message);
            }
            Err(error) => {
                tracing::error!(%error, sequence, %terminal_id, "Stored terminal message does not decode; skipped.");
            }
        }
    }
    Ok(messages)
}

/// How many messages `terminal_id` has not acknowledged.
pub async fn backlog(pool: &PgPool, terminal_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM terminal_messages WHERE terminal_id = $1 AND acknowledged_at IS NULL",
    )
    .bind(terminal_id)
    .fetch_one(pool)
    .await
}

/// How many messages no terminal has acknowledged yet, over all terminals.
pub async fn total_backlog(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM terminal_messages WHERE acknowledged_at IS NULL")
        .fetch_one(pool)
        .await
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acknowledged {
    /// Acknowledged now.
    Now,
    /// It had been acknowledged before.
    Already,
    /// No such message for this terminal.
    NotFound,
}

/// Marks `message_id` of `terminal_id` acknowledged, once.
pub async fn acknowledge(
    pool: &PgPool,
    terminal_id: &str,
    message_id: Uuid,
) -> Result<Acknowledged, sqlx::Error> {
    // One statement: the update, and whether the terminal has the message
    // at all (the sub-select sees the row as it was before the update).
    let (now, known): (bool, bool) = sqlx::query_as(
        "WITH updated AS ( \
             UPDATE terminal_messages SET acknowledged_at = now() \
             WHERE message_id = $1 AND terminal_id = $2 AND acknowledged_at IS NULL \
             RETURNING 1) \
         SELECT EXISTS (SELECT 1 FROM updated), \
                EXISTS (SELECT 1 FROM terminal_messages WHERE message_id = $1 AND terminal_id = $2)",
    )
    .bind(message_id)
    .bind(terminal_id)
    .fetch_one(pool)
    .await?;
    Ok(match (now, known) {
        (true, _) => Acknowledged::Now,
        (false, true) => Acknowledged::Already,
        (false, false) => Acknowledged::NotFound,
    })
}
