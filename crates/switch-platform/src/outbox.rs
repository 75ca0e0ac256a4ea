//! The transactional outbox.
//!
//! A service writes its state change and the event announcing it in one
//! PostgreSQL transaction ([`enqueue`]); the [`OutboxRelay`] later publishes
//! unpublished rows to Kafka with the idempotent producer and marks them
//! published. A crash between commit and publish therefore delays an event
//! but never loses one, and a crash between publish and marking republishes
//! it: delivery is at least once, and consumers are idempotent on the event
//! id (see [`crate::consumer`]). Published rows are kept for
//! `retention_hours` and then deleted by the relay.
//!
//! Each service that publishes creates the table in its own migrations with
//! exactly the shape of [`OUTBOX_TABLE_DDL`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::every::Every;

use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::ConfigError;

/// The table the relay reads; copy it into the service's migrations.
pub const OUTBOX_TABLE_DDL: &str = "\
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    event_id     UUID NOT NULL UNIQUE,
    topic        TEXT NOT NULL,
    message_key  TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    traceparent  TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;";

/// Kafka header carrying the event id (also inside the envelope), so tools
/// can deduplicate without decoding the payload.
pub const EVENT_ID_HEADER: &str = "event_id";
/// Kafka header carrying the W3C trace context of the event's cause.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// One event waiting to be published.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub event_id: Uuid,
    /// Full topic name, prefix included.
    pub topic: String,
    /// Partitioning key: the transaction id, so one transaction's events
    /// stay in order.
    pub key: String,
    /// An encoded `EventEnvelope`.
    pub payload: Vec<u8>,
    pub traceparent: String,
}

/// Adds `message` to the outbox inside the caller's transaction.
pub async fn enqueue(conn: &mut PgConnection, message: &OutboxMessage) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, message_key, payload, traceparent) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(message.event_id)
    .bind(&message.topic)
    .bind(&message.key)
    .bind(&message.payload)
    .bind(&message.traceparent)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Off only to test what happens when a process dies before publishing.
    pub relay_enabled: bool,
    /// How often the relay looks for rows nobody woke it for (rows left by
    /// a crashed process, or whose publish failed).
    pub poll_interval_ms: u64,
    /// After a wake-up, how long the relay lets further events accumulate
    /// before it publishes: one transaction per few milliseconds instead of
    /// one per event keeps the journal's database free for authorizations.
    pub gather_ms: u64,
    pub batch_size: i64,
    /// How long published rows stay (to answer "was this event
    /// published, and when?") before the relay deletes them. Unpublished
    /// rows are never deleted, however old.
    pub retention_hours: u32,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            relay_enabled: true,
            poll_interval_ms: 500,
            gather_ms: 5,
            batch_size: 500,
            retention_hours: 24,
        }
    }
}

impl OutboxConfig {
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.poll_interval_ms == 0 {
            return Err(ConfigError::invalid(
                format!("{section}.outbox.poll_interval_ms"),
                "must be at least 1",
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(ConfigError::invalid(
                format!("{section}.outbox.batch_size"),
                "must be between 1 and 10000",
            ));
        }
        if self.retention_hours > MAX_RETENTION_HOURS {
            return Err(ConfigError::invalid(
                format!("{section}.outbox.retention_hours"),
                format!("must be at most {MAX_RETENTION_HOURS} (ten years)"),
            ));
        }
        Ok(())
    }
}

/// The longest retention a configuration may ask for, in hours.
pub const MAX_RETENTION_HOURS: u32 = 87_600;

/// How often the relay deletes published rows past their retention.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Publishes outbox rows to Kafka. Several replicas may run at once: rows
/// are claimed with `FOR UPDATE SKIP LOCKED`.
///
/// Published rows stay behind as dead index entries until vacuum, and a scan
/// from the start of the table would walk all of them every time (the
/// classic queue-table slowdown). So after a wake-up the relay scans only
/// past the highest id it has published; a full sweep every
/// `poll_interval_ms` catches rows that committed after a higher id.
///
/// The relay has connections of its own ([`RELAY_CONNECTIONS`]), opened
/// from the service's pool's options: on the service's pool, each batch
/// first queued behind the requests that wrote the rows (under load, 300 ms
/// at p99 before a batch even started), and every event waited for it.
/// They commit with `synchronous_commit = off`: a `published_at` lost in a
/// crash publishes the row again, which consumers recognise by its event
/// id, so waiting for the disk would buy nothing.
#[derive(Clone)]
pub struct OutboxRelay {
    pool: PgPool,
    producer: FutureProducer,
    config: OutboxConfig,
    wake: Arc<Notify>,
    published_up_to: Arc<AtomicI64>,
}

/// The relay's own connections: one publishes (a batch at a time), one
/// more lets the backlog gauge and pruning not wait for it.
pub const RELAY_CONNECTIONS: u32 = 2;

impl OutboxRelay {
    /// `pool` is the service's: the relay opens its own connections with
    /// the same options (the schema, the credentials), lazily.
    pub fn new(pool: PgPool, producer: FutureProducer, config: OutboxConfig) -> Self {
        let options = (*pool.connect_options())
            .clone()
            .options([("synchronous_commit", "off")]);
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(RELAY_CONNECTIONS)
            .acquire_timeout(pool.options().get_acquire_timeout())
            .connect_lazy_with(options);
        OutboxRelay {
            pool: own,
            producer,
            config,
            wake: Arc::new(Notify::new()),
            published_up_to: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Call after committing a transaction that enqueued messages, so they
    /// are published now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs until `shutdown` resolves, then publishes what is pending once
    /// more so a clean stop leaves nothing for the next start.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        if !self.config.relay_enabled {
            tracing::warn!("Outbox relay disabled by configuration; events stay unpublished.");
            shutdown.await;
            return;
        }
        tokio::pin!(shutdown);
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        let gather = Duration::from_millis(self.config.gather_ms);
        let mut sweep = Every::after(poll);
        let mut prune = Every::after(PRUNE_INTERVAL);
        let gauges = BacklogGauges::new();
        let mut gauge = Every::new(GAUGE_INTERVAL);
        self.drain(Scan::Full).await;
        loop {
            if gauge.due() {
                self.record_backlog(&gauges).await;
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = self.wake.notified() => tokio::time::sleep(gather).await,
                () = tokio::time::sleep(poll) => {}
            }
            if sweep.due() {
                self.drain(Scan::Full).await;
            } else {
                self.drain(Scan::Recent).await;
            }
            if prune.due() {
                match self.prune_published().await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::debug!(deleted, "Published outbox rows pruned."),
                    Err(error) => tracing::warn!(%error, "Outbox rows could not be pruned."),
                }
            }
        }
        self.drain(Scan::Full).await;
    }

    async fn record_backlog(&self, gauges: &BacklogGauges) {
        match self.backlog().await {
            Ok(backlog) => {
                gauges.rows.record(backlog.rows, &[]);
                gauges.oldest.record(backlog.oldest_ms, &[]);
            }
            Err(error) => tracing::debug!(%error, "Outbox backlog gauge not read."),
        }
    }

    /// What is committed and not yet published: how many rows, and how
    /// long the oldest has waited. Both ends of the age are the database's
    /// clock (`created_at` is its `now()` at the insert), so no clock skew
    /// between the service and the database enters it. The count reads the
    /// partial index `outbox_unpublished`, never the published rows.
    pub async fn backlog(&self) -> Result<OutboxBacklog, OutboxError> {
        let (rows, oldest_ms): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), \
               (greatest(0, extract(epoch FROM now() - min(created_at)) * 1000))::bigint \
             FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(OutboxBacklog {
            rows,
            oldest_ms: oldest_ms.map_or(0, |ms| u64::try_from(ms).unwrap_or(0)),
        })
    }

    async fn drain(&self, scan: Scan) {
        loop {
            match self.publish_pending(scan).await {
                Ok(published) if published as i64 >= self.config.batch_size => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "Outbox relay could not publish; will retry.");
                    break;
                }
            }
        }
    }

    /// Deletes published rows older than the retention, oldest first, a
    /// batch at a time ([`crate::db::delete_in_batches`]); returns how many
    /// it deleted. Rows are walked in id (primary key) order, which is
    /// publishing order give or take a batch, so no index on the
    /// publishing time is needed; the walk stops at the first batch that is
    /// not entirely past its retention.
    pub async fn prune_published(&self) -> Result<u64, OutboxError> {
        let deleted = crate::db::delete_in_batches(&self.pool, || {
            sqlx::query(
                "WITH oldest AS ( \
                   SELECT id FROM outbox WHERE published_at IS NOT NULL ORDER BY id LIMIT $1) \
                 DELETE FROM outbox o USING oldest \
                 WHERE o.id = oldest.id \
                   AND o.published_at < now() - make_interval(hours => $2)",
            )
            .bind(crate::db::PRUNE_BATCH)
            .bind(crate::db::interval_hours(self.config.retention_hours))
        })
        .await?;
        Ok(deleted)
    }

    /// Publishes one batch of unpublished rows; returns how many were
    /// published. Rows whose send failed stay unpublished for the next pass.
    pub async fn publish_pending(&self, scan: Scan) -> Result<usize, OutboxError> {
        let after = match scan {
            Scan::Full => 0,
            Scan::Recent => self.published_up_to.load(Ordering::Relaxed),
        };
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT id, event_id, topic, message_key, payload, traceparent FROM outbox \
             WHERE published_at IS NULL AND id > $2 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.config.batch_size)
        .bind(after)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let sends = rows.iter().map(|row| async move {
            let id: i64 = row.get("id");
            let event_id: Uuid = row.get("event_id");
            let topic: &str = row.get("topic");
            let key: &str = row.get("message_key");
            let payload: &[u8] = row.get("payload");
            let traceparent: &str = row.get("traceparent");
            let event_id_text = event_id.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: EVENT_ID_HEADER,
                    value: Some(event_id_text.as_str()),
                })
                .insert(Header {
                    key: TRACEPARENT_HEADER,
                    value: Some(traceparent),
                });
            let record = FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers);
            match self.producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => Some(id),
                Err((error, _)) => {
                    tracing::warn!(%error, %event_id, %topic, "Event could not be published.");
                    None
                }
            }
        });
        let published: Vec<i64> = join_all(sends).await.into_iter().flatten().collect();
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&published)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if let Some(highest) = published.iter().max() {
            self.published_up_to.fetch_max(*highest, Ordering::Relaxed);
        }
        Ok(published.len())
    }
}

/// How often the relay reads its backlog for the gauges.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// The outbox's unpublished rows, as [`OutboxRelay::backlog`] reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxBacklog {
    pub rows: i64,
    /// How long the oldest unpublished row has waited (0 when none has).
    pub oldest_ms: u64,
}

/// `outbox.backlog` and `outbox.oldest_unpublished`. The service is the
/// exporter's `job`; every replica of it reads the same table, so
/// dashboards take `max` by job (ADR 26).
struct BacklogGauges {
    rows: opentelemetry::metrics::Gauge<i64>,
    oldest: opentelemetry::metrics::Gauge<u64>,
}

impl BacklogGauges {
    fn new() -> Self {
        let meter = opentelemetry::global::meter("switch-platform");
        BacklogGauges {
            rows: meter
                .i64_gauge("outbox.backlog")
                .with_description("Outbox rows committed and not yet published to Kafka")
                .build(),
            oldest: meter
                .u64_gauge("outbox.oldest_unpublished")
                .with_unit("ms")
                .with_description(
                    "How long the oldest unpublished outbox row has waited (0 when none has)",
                )
                .build(),
        }
    }
}

/// Which unpublished rows a pass looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Only rows after the highest id this relay has published.
    Recent,
    /// Every unpublished row.
    Full,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_retention_beyond_ten_years_is_refused_by_name() {
        let config = OutboxConfig {
            retention_hours: MAX_RETENTION_HOURS + 1,
            ..OutboxConfig::default()
        };
        let error = config.validate("authorization").unwrap_err().to_string();
        assert!(
            error.contains("authorization.outbox.retention_hours"),
            "{error}"
        );
        let kept = OutboxConfig {
            retention_hours: MAX_RETENTION_HOURS,
            ..OutboxConfig::default()
        };
        assert!(kept.validate("authorization").is_ok());
    }
}
