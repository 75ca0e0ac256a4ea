//! Kafka consumers whose effects happen exactly once.
//!
//! Delivery is at least once (the outbox may republish, a rebalance may
//! replay), so every consumer records the event ids it has processed in its
//! own schema, in the same transaction as the state change the event caused.
//! A duplicate then finds its id already recorded and changes nothing. The
//! Kafka offset is committed only after that transaction, so a crash replays
//! rather than skips.
//!
//! Messages are applied in batches (whatever has arrived, up to
//! [`MAX_BATCH`]), one transaction per batch: a serial committer manages a
//! few hundred commits a second on a flush-bound disk, a batch thousands of
//! events.
//!
//! Each consuming service creates [`PROCESSED_EVENTS_DDL`],
//! [`PROCESSED_EVENTS_AGE_INDEX_DDL`], [`DEAD_LETTER_EVENTS_DDL`] and
//! [`DEAD_LETTER_REPLAYS_DDL`] in its migrations.
//!
//! A poison event — one the handler fails on by itself, every time, while
//! the database answers — would stop its partition for good (issue 13,
//! hole 2). When a batch fails, its events are applied one at a time; one
//! that fails [`POISON_ATTEMPTS`] times with an error that is not
//! transient (not a lost connection, a shutdown, a deadlock or a
//! serialization failure) goes to `dead_letter_events`, is counted and
//! logged, and the consumer moves on. After a fix an operator lists them
//! ([`list_dead_letters`]) and replays them ([`replay_dead_letters_by`]),
//! saying who and why: each replay is applied exactly once like any
//! delivery and marked with who, why and what it did, in the transaction
//! that applies it (`switchd admin dead-letters`).
//!
//! A recorded id only has to outlive every way its event can come back:
//! a redelivery after a rebalance, or a re-read of the whole topic by a
//! group whose committed offsets expired. So ids are deleted once they are
//! older than `kafka.dedupe_retention_hours`, which must exceed the topics'
//! retention (8 days against Kafka's default of 7).

use std::future::Future;
use std::pin::Pin;

use futures::StreamExt;
use prost::Message as _;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::{PgConnection, PgPool};
use switch_proto::v1::EventEnvelope;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::kafka::KafkaConfig;

/// The table that makes a consumer idempotent; copy it into the service's
/// migrations.
pub const PROCESSED_EVENTS_DDL: &str = "\
CREATE TABLE processed_events (
    consumer     TEXT NOT NULL,
    event_id     UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);";

/// Where a consumer puts the events it gave up on; copy it into the
/// service's migrations.
pub const DEAD_LETTER_EVENTS_DDL: &str = "\
CREATE TABLE dead_letter_events (
    consumer         TEXT NOT NULL,
    topic            TEXT NOT NULL,
    kafka_partition  INTEGER NOT NULL,
    kafka_offset     BIGINT NOT NULL,
    payload          BYTEA NOT NULL,
    error            TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    dead_lettered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    replayed_at      TIMESTAMPTZ,
    PRIMARY KEY (consumer, topic, kafka_partition, kafka_offset)
);";

/// Who replayed a dead-lettered event, why, and what the replay did;
/// copy it into the service's migrations after [`DEAD_LETTER_EVENTS_DDL`].
pub const DEAD_LETTER_REPLAYS_DDL: &str = "\
ALTER TABLE dead_letter_events
    ADD COLUMN replayed_by   TEXT,
    ADD COLUMN replay_reason TEXT,
    ADD COLUMN replay_result TEXT;";

/// Attempts, each alone, before an event that keeps failing is
/// dead-lettered.
pub const POISON_ATTEMPTS: u32 = 5;

/// Lets [`prune_processed`] find old ids without a B-tree on every insert:
/// ids are recorded in time order, so a BRIN index of a few pages covers
/// the table.
pub const PROCESSED_EVENTS_AGE_INDEX_DDL: &str =
    "CREATE INDEX processed_events_by_age ON processed_events USING brin (processed_at);";

/// How often a consumer deletes the ids past their retention.
const PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Deletes `consumer`'s recorded event ids older than `retention_hours`,
/// a batch at a time ([`crate::db::delete_in_batches`]); returns how many
/// it deleted.
pub async fn prune_processed(
    pool: &PgPool,
    consumer: &str,
    retention_hours: u32,
) -> Result<u64, sqlx::Error> {
    crate::db::delete_in_batches(pool, || {
        sqlx::query(
            "DELETE FROM processed_events WHERE ctid = ANY(ARRAY( \
               SELECT ctid FROM processed_events \
               WHERE consumer = $1 AND processed_at < now() - make_interval(hours => $2) \
               LIMIT $3))",
        )
        .bind(consumer)
        .bind(crate::db::interval_hours(retention_hours))
        .bind(crate::db::PRUNE_BATCH)
    })
    .await
}

/// Prunes `consumer`'s recorded ids every [`PRUNE_INTERVAL`] until `stop`.
async fn prune_until_stopped(
    pool: &PgPool,
    consumer: &str,
    retention_hours: u32,
    stop: &tokio_util::sync::CancellationToken,
) {
    let mut ticks = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match prune_processed(pool, consumer, retention_hours).await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(consumer, deleted, "Processed event ids pruned."),
            Err(error) => {
                tracing::warn!(consumer, %error, "Processed event ids could not be pruned.")
            }
        }
    }
}

/// Whether a consumer has joined its group since it started: been given
/// its partitions (possibly none, when the group has more members than the
/// topics have partitions). A service that only consumes is ready from then
/// on; until then its events wait in Kafka, and a rolling update should not
/// retire the replica it replaces. Cloning shares the state.
#[derive(Clone)]
pub struct GroupMembership(std::sync::Arc<tokio::sync::watch::Sender<bool>>);

impl Default for GroupMembership {
    fn default() -> Self {
        GroupMembership(std::sync::Arc::new(tokio::sync::watch::Sender::new(false)))
    }
}

impl GroupMembership {
    pub fn has_joined(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the consumer has joined its group.
    pub async fn joined(&self) {
        let mut joined = self.0.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = joined.wait_for(|joined| *joined).await;
    }
}

/// Tells a [`GroupMembership`] when the consumer gets its partitions.
struct MembershipContext {
    membership: GroupMembership,
    group: String,
    lag: opentelemetry::metrics::Gauge<i64>,
}

/// How often librdkafka reports the consumer's statistics, which carry
/// each partition's high watermark and committed offset: the lag gauge is
/// as fresh as this.
const STATISTICS_INTERVAL_MS: u32 = 5_000;

impl ClientContext for MembershipContext {
    /// Records `consumer.lag` from librdkafka's statistics: the events this
    /// instance's partitions hold past what the group has committed, per
    /// topic. Parsed into [`ConsumerStatistics`], only the fields it needs,
    /// rather than rdkafka's full `Statistics`.
    fn stats_raw(&self, statistics: &[u8]) {
        match serde_json::from_slice::<ConsumerStatistics>(statistics) {
            Ok(statistics) => {
                for (topic, lag) in statistics.lag_by_topic() {
                    self.lag.record(
                        lag,
                        &[
                            opentelemetry::KeyValue::new("consumer", self.group.clone()),
                            opentelemetry::KeyValue::new("topic", topic),
                        ],
                    );
                }
            }
            Err(error) => {
                tracing::debug!(%error, group = %self.group, "Consumer statistics not read.");
            }
        }
    }
}

/// The part of librdkafka's statistics JSON the lag gauge reads
/// (<https://github.com/confluentinc/librdkafka/blob/master/STATISTICS.md>).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct ConsumerStatistics {
    topics: std::collections::BTreeMap<String, TopicStatistics>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct TopicStatistics {
    partitions: std::collections::BTreeMap<String, PartitionStatistics>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(default)]
struct PartitionStatistics {
    partition: i32,
    desired: bool,
    lo_offset: i64,
    hi_offset: i64,
    app_offset: i64,
    consumer_lag: i64,
}

impl Default for PartitionStatistics {
    fn default() -> Self {
        // librdkafka's "unknown" for every offset.
        PartitionStatistics {
            partition: -1,
            desired: false,
            lo_offset: -1,
            hi_offset: -1,
            app_offset: -1,
            consumer_lag: -1,
        }
    }
}

impl ConsumerStatistics {
    /// Events behind the high watermark, summed over the partitions this
    /// consumer is assigned, per subscribed topic (0 for a topic none of
    /// whose partitions it holds, so a revoked partition stops counting
    /// here; the replica it moved to counts it). librdkafka's
    /// `consumer_lag` (high watermark, or last stable offset, minus the
    /// committed offset) where it knows it; before a group's first commit
    /// that is unknown, and the lag is counted from where consuming starts
    /// (the lowest retained offset, or past what was handed over).
    pub fn lag_by_topic(&self) -> Vec<(String, i64)> {
        self.topics
            .iter()
            .map(|(topic, statistics)| {
                let lag = statistics
                    .partitions
                    .values()
                    .filter(|p| p.desired && p.partition >= 0)
                    .filter_map(PartitionStatistics::lag)
                    .sum();
                (topic.clone(), lag)
            })
            .collect()
    }
}

impl PartitionStatistics {
    fn lag(&self) -> Option<i64> {
        if self.consumer_lag >= 0 {
            return Some(self.consumer_lag);
        }
        if self.hi_offset < 0 {
            return None;
        }
        let from = self.app_offset.max(self.lo_offset).max(0);
        Some((self.hi_offset - from).max(0))
    }
}

impl ConsumerContext for MembershipContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            if !self.membership.has_joined() {
                tracing::info!(
                    group = %self.group,
                    partitions = partitions.count(),
                    "Consumer joined its group."
                );
            }
            self.membership.0.send_replace(true);
        }
    }
}

pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;

/// What a consumer does with one event, inside the transaction that also
/// records the event as processed.
pub trait EventHandler: Send + Sync {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a EventEnvelope,
    ) -> HandlerFuture<'a>;

    /// Whether `handle` would change anything for `event`. An event it
    /// would ignore is not recorded as processed either: a replay of it
    /// changes nothing anyway, and a consumer that reads every event of a
    /// busy topic to act on a few (the notifier) would otherwise write a
    /// row per event for nothing. Must agree with `handle`.
    fn wants(&self, _event: &EventEnvelope) -> bool {
        true
    }

    /// Applies `events`, in their order, inside the consumer's transaction.
    /// By default one by one with `handle`; a handler overrides it to apply
    /// runs of events with one statement, as long as the effect is exactly
    /// that of applying them one by one.
    fn handle_batch<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [&'a EventEnvelope],
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            for event in events {
                self.handle(tx, event).await?;
            }
            Ok(())
        })
    }
}

/// Rows an [`EventHandler::handle_batch`] gathers for one multi-row
/// statement while it applies a batch in order. Events of different
/// transactions touch different rows and commute, so other events may be
/// applied while rows are gathered; an event of a transaction with a
/// gathered row (or of no recognizable transaction) must wait until the
/// gathered rows are written ([`Gathered::must_write_before`]).
pub struct Gathered<T> {
    rows: Vec<T>,
    transactions: std::collections::HashSet<Uuid>,
}

impl<T> Default for Gathered<T> {
    fn default() -> Self {
        Gathered {
            rows: Vec::new(),
            transactions: std::collections::HashSet::new(),
        }
    }
}

impl<T> Gathered<T> {
    /// Whether a row of `transaction_id` is gathered.
    pub fn holds(&self, transaction_id: Uuid) -> bool {
        self.transactions.contains(&transaction_id)
    }

    pub fn add(&mut self, transaction_id: Uuid, row: T) {
        self.transactions.insert(transaction_id);
        self.rows.push(row);
    }

    /// Whether `event` may only be applied once the gathered rows are
    /// written.
    pub fn must_write_before(&self, event: &EventEnvelope) -> bool {
        Uuid::parse_str(&event.transaction_id).map_or(true, |id| self.holds(id))
    }

    /// The gathered rows, to be written now; gathering starts over.
    pub fn take(&mut self) -> Vec<T> {
        self.transactions.clear();
        std::mem::take(&mut self.rows)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The event cannot be processed now; it will be retried.
    #[error("{0}")]
    Retry(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What happened to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    /// The handler has nothing to do with this event ([`EventHandler::wants`]).
    Ignored,
    /// Not an `EventEnvelope` or no valid event id: skipped and logged, so
    /// one poison message cannot stop the partition.
    Malformed,
}

/// Most messages applied in one transaction.
pub const MAX_BATCH: usize = 500;

/// How long a batch waits for more messages after the first arrived.
const BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// Applies one encoded envelope exactly once for `consumer`: the path of
/// a consumer batch, for a batch of one.
pub async fn apply_once(
    pool: &PgPool,
    consumer: &str,
    payload: &[u8],
    handler: &dyn EventHandler,
) -> Result<Outcome, HandlerError> {
    let outcomes = apply_encoded(pool, consumer, &[payload], handler).await?;
    Ok(outcomes.first().copied().unwrap_or(Outcome::Malformed))
}

/// Applies encoded envelopes in one transaction: all of them or none.
/// Returns each envelope's outcome, in order ([`apply_encoded_in`]).
async fn apply_encoded(
    pool: &PgPool,
    consumer: &str,
    payloads: &[&[u8]],
    handler: &dyn EventHandler,
) -> Result<Vec<Outcome>, HandlerError> {
    let mut tx = pool.begin().await?;
    let outcomes = apply_encoded_in(&mut tx, consumer, payloads, handler).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// Applies encoded envelopes inside the caller's transaction. Their event
/// ids are recorded with one statement, and only the events recorded by it
/// (not processed before, not repeated earlier in the batch) reach the
/// handler. Returns each envelope's outcome, in order.
async fn apply_encoded_in(
    tx: &mut PgConnection,
    consumer: &str,
    payloads: &[&[u8]],
    handler: &dyn EventHandler,
) -> Result<Vec<Outcome>, HandlerError> {
    let mut outcomes = vec![Outcome::Malformed; payloads.len()];
    let mut events = Vec::with_capacity(payloads.len());
    for (position, payload) in payloads.iter().enumerate() {
        let decoded = EventEnvelope::decode(*payload)
            .ok()
            .and_then(|event| Uuid::parse_str(&event.event_id).ok().map(|id| (id, event)));
        if let Some((id, event)) = decoded {
            if handler.wants(&event) {
                events.push((position, id, event));
            } else {
                outcomes[position] = Outcome::Ignored;
            }
        }
    }
    if events.is_empty() {
        return Ok(outcomes);
    }
    let ids: Vec<Uuid> = events.iter().map(|(_, id, _)| *id).collect();
    let recorded: std::collections::HashSet<Uuid> = sqlx::query_scalar(
        "INSERT INTO processed_events (consumer, event_id) \
         SELECT $1, id FROM UNNEST($2::uuid[]) AS id \
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(consumer)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let mut handled = std::collections::HashSet::with_capacity(recorded.len());
    let mut to_apply = Vec::with_capacity(recorded.len());
    for (position, id, event) in &events {
        // The first occurrence in the batch is the one applied.
        if recorded.contains(id) && handled.insert(*id) {
            outcomes[*position] = Outcome::Applied;
            to_apply.push(event);
        } else {
            outcomes[*position] = Outcome::Duplicate;
        }
    }
    handler.handle_batch(tx, &to_apply).await?;
    Ok(outcomes)
}

/// Applies a batch of Kafka messages in one transaction ([`apply_encoded`])
/// and logs the malformed ones it skipped.
async fn apply_batch(
    pool: &PgPool,
    consumer: &str,
    batch: &[BorrowedMessage<'_>],
    handler: &dyn EventHandler,
) -> Result<(), HandlerError> {
    let payloads: Vec<&[u8]> = batch
        .iter()
        .map(|message| message.payload().unwrap_or_default())
        .collect();
    let outcomes = apply_encoded(pool, consumer, &payloads, handler).await?;
    for (message, outcome) in batch.iter().zip(outcomes) {
        if outcome == Outcome::Malformed {
            tracing::error!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                "Malformed event skipped."
            );
        }
    }
    Ok(())
}

/// Consumes `topics` (names without prefix) in consumer group `group` until
/// `shutdown` resolves, telling `membership` (if one is given) when it has
/// joined the group.
/// A handler error stops before committing the offset and retries the same
/// message after a pause.
pub async fn run(
    pool: PgPool,
    kafka: &KafkaConfig,
    group: &str,
    topics: &[&str],
    handler: &dyn EventHandler,
    membership: Option<&GroupMembership>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConsumerError> {
    let context = MembershipContext {
        membership: membership.cloned().unwrap_or_default(),
        group: group.to_owned(),
        lag: opentelemetry::global::meter("switch-platform")
            .i64_gauge("consumer.lag")
            .with_description(
                "Events past the group's committed offsets, by consumer group and topic, over this instance's partitions (sum the instances)",
            )
            .build(),
    };
    let consumer: StreamConsumer<MembershipContext> = kafka
        .consumer_config(group)
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS.to_string())
        .create_with_context(context)?;
    let names: Vec<String> = topics.iter().map(|t| kafka.topic(t)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    let mut stream = consumer.stream();
    tokio::pin!(shutdown);
    loop {
        let first = tokio::select! {
            () = &mut shutdown => {
                commit_on_stop(&consumer, group);
                return Ok(());
            }
            next = stream.next() => match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::warn!(%error, %group, "Kafka consumer error.");
                    continue;
                }
                None => return Ok(()),
            },
        };
        let mut batch = vec![first];
        let linger = tokio::time::sleep(BATCH_LINGER);
        tokio::pin!(linger);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                biased;
                next = stream.next() => match next {
                    Some(Ok(message)) => batch.push(message),
                    Some(Err(error)) => {
                        tracing::warn!(%error, %group, "Kafka consumer error.");
                        break;
                    }
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        if let Err(error) = apply_batch(&pool, group, &batch, handler).await {
            tracing::warn!(%error, %group, size = batch.len(), "Event batch failed; applying its events one at a time.");
            for message in &batch {
                apply_alone(&pool, group, message, handler).await;
            }
        }
        // Commit the next offset of every partition in the batch, now that
        // the batch's effects are durable.
        let mut next_offsets = std::collections::BTreeMap::new();
        for message in &batch {
            let next = next_offsets
                .entry((message.topic(), message.partition()))
                .or_insert(0);
            *next = (*next).max(message.offset() + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in next_offsets {
            offsets.add_partition_offset(topic, partition, Offset::Offset(next))?;
        }
        consumer.commit(&offsets, CommitMode::Async)?;
    }
}

/// Commits, and waits for, the position of every assigned partition as the
/// consumer stops: every message it fetched was applied by then (the loop
/// stops only between batches), and the batches' own commits are
/// asynchronous, so the last may still be in flight. Without it a clean
/// stop would hand the partition's next owner events it has to skip as
/// already processed. Nothing consumed yet is nothing to commit.
fn commit_on_stop<C: rdkafka::consumer::ConsumerContext>(
    consumer: &StreamConsumer<C>,
    group: &str,
) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!(%group, "Consumer stopped; offsets committed."),
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(error) => {
            tracing::warn!(%error, %group, "Consumer stopped; committing its offsets failed (its next owner replays them, without effect).");
        }
    }
}

/// Whether a handler's error says nothing about the event: the database
/// was unreachable, shutting down, or asked to try again. Such an event is
/// retried for as long as it takes; any other error counts against it.
pub fn is_transient(error: &HandlerError) -> bool {
    match error {
        HandlerError::Retry(_) => false,
        HandlerError::Database(sqlx::Error::Database(db)) => {
            let class = db
                .code()
                .map(|code| code.chars().take(2).collect::<String>());
            // 08 connection, 40 rollback (serialization, deadlock), 53
            // insufficient resources, 57 operator intervention, 58 system.
            matches!(class.as_deref(), Some("08" | "40" | "53" | "57" | "58"))
        }
        HandlerError::Database(_) => true,
    }
}

/// Applies one message by itself until it is applied, or, failing
/// [`POISON_ATTEMPTS`] times for reasons of its own, dead-letters it.
async fn apply_alone(
    pool: &PgPool,
    consumer: &str,
    message: &BorrowedMessage<'_>,
    handler: &dyn EventHandler,
) {
    let mut failures = 0u32;
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        let error = match apply_batch(pool, consumer, std::slice::from_ref(message), handler).await
        {
            Ok(()) => return,
            Err(error) => error,
        };
        if !is_transient(&error) {
            failures += 1;
        }
        if failures >= POISON_ATTEMPTS {
            match dead_letter(pool, consumer, message, &error, failures).await {
                Ok(()) => {
                    opentelemetry::global::meter("switch-platform")
                        .u64_counter("consumer.dead_lettered")
                        .with_description("Events a consumer gave up on, by consumer")
                        .build()
                        .add(
                            1,
                            &[opentelemetry::KeyValue::new(
                                "consumer",
                                consumer.to_owned(),
                            )],
                        );
                    tracing::error!(
                        %error,
                        consumer,
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        attempts = failures,
                        "Poison event dead-lettered; the consumer moves on."
                    );
                    return;
                }
                Err(dead_letter_error) => {
                    tracing::warn!(%dead_letter_error, consumer, "Poison event could not be dead-lettered; retrying.")
                }
            }
        } else {
            tracing::warn!(%error, consumer, offset = message.offset(), failures, "Event failed; retrying it alone.");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}

async fn dead_letter(
    pool: &PgPool,
    consumer: &str,
    message: &BorrowedMessage<'_>,
    error: &HandlerError,
    attempts: u32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dead_letter_events (consumer, topic, kafka_partition, kafka_offset, \
           payload, error, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(message.topic())
    .bind(message.partition())
    .bind(message.offset())
    .bind(message.payload().unwrap_or_default())
    .bind(error.to_string())
    .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
    .execute(pool)
    .await?;
    Ok(())
}

/// One dead-lettered event, as operators list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// From the payload, when it decodes.
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub transaction_id: Option<String>,
    /// The last error: of the consumer's last attempt, or of a failed
    /// replay.
    pub error: String,
    /// The consumer's attempts, and each failed replay.
    pub attempts: i32,
    pub dead_lettered_at: OffsetDateTime,
    pub replayed_at: Option<OffsetDateTime>,
    pub replayed_by: Option<String>,
    pub replay_reason: Option<String>,
    /// What the replay did ([`ReplayResult::as_str`]).
    pub replay_result: Option<String>,
}

/// `consumer`'s dead-lettered events, oldest first, at most `limit`; those
/// already replayed only if `include_replayed`.
pub async fn list_dead_letters(
    pool: &PgPool,
    consumer: &str,
    include_replayed: bool,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    type Row = (
        String,
        i32,
        i64,
        Vec<u8>,
        String,
        i32,
        OffsetDateTime,
        Option<OffsetDateTime>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT topic, kafka_partition, kafka_offset, payload, error, attempts, \
           dead_lettered_at, replayed_at, replayed_by, replay_reason, replay_result \
         FROM dead_letter_events WHERE consumer = $1 AND ($2 OR replayed_at IS NULL) \
         ORDER BY dead_lettered_at, topic, kafka_partition, kafka_offset LIMIT $3",
    )
    .bind(consumer)
    .bind(include_replayed)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let event = EventEnvelope::decode(row.3.as_slice()).ok();
            DeadLetter {
                topic: row.0,
                partition: row.1,
                offset: row.2,
                event_id: event.as_ref().map(|e| e.event_id.clone()),
                event_type: event.as_ref().map(|e| e.event_type.clone()),
                transaction_id: event.map(|e| e.transaction_id),
                error: row.4,
                attempts: row.5,
                dead_lettered_at: row.6,
                replayed_at: row.7,
                replayed_by: row.8,
                replay_reason: row.9,
                replay_result: row.10,
            }
        })
        .collect())
}

/// Which dead-lettered events a replay takes: every one not yet replayed,
/// narrowed by each filter given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySelection {
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
}

/// An operator's replay: who, why and which events.
#[derive(Debug, Clone, Copy)]
pub struct Replay<'a> {
    pub operator: &'a str,
    pub reason: &'a str,
    pub selection: &'a ReplaySelection,
}

/// What replaying one dead-lettered event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayResult {
    /// Its effect was applied now.
    Applied,
    /// Its id was already recorded as processed (the live consumer applied
    /// a redelivery of it): nothing applied twice.
    AlreadyProcessed,
    /// The handler has nothing to do with it any more.
    Ignored,
    /// It does not decode as an event.
    Malformed,
    /// It failed again: kept, not replayed, with this error.
    Failed(String),
}

impl ReplayResult {
    /// The name recorded with a replayed event (`replay_result`).
    pub fn as_str(&self) -> &'static str {
        match self {
            ReplayResult::Applied => "applied",
            ReplayResult::AlreadyProcessed => "already_processed",
            ReplayResult::Ignored => "ignored",
            ReplayResult::Malformed => "malformed",
            ReplayResult::Failed(_) => "failed",
        }
    }

    fn of(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Applied => ReplayResult::Applied,
            Outcome::Duplicate => ReplayResult::AlreadyProcessed,
            Outcome::Ignored => ReplayResult::Ignored,
            Outcome::Malformed => ReplayResult::Malformed,
        }
    }
}

/// One event a replay took, and what it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub result: ReplayResult,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// An operator's name or reason is missing or too long
    /// ([`switch_core::operator_text`]); nothing was replayed.
    #[error(transparent)]
    Invalid(#[from] switch_core::InvalidField),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Applies `consumer`'s dead-lettered events that `replay` selects again
/// (after a fix), oldest first, each exactly once like any delivery: its id
/// is recorded as processed in the transaction that applies it and marks
/// it replayed with who, why and what happened, so a replay racing the
/// live consumer, or a second replay, applies nothing twice. One that
/// fails again is kept, with its new error. Returns what happened to each.
pub async fn replay_dead_letters_by(
    pool: &PgPool,
    consumer: &str,
    handler: &dyn EventHandler,
    replay: &Replay<'_>,
) -> Result<Vec<Replayed>, ReplayError> {
    let operator = switch_core::operator_text("operator", replay.operator)?;
    let reason = switch_core::operator_text("reason", replay.reason)?;
    replay_selected(
        pool,
        consumer,
        handler,
        replay.selection,
        Some((operator, reason)),
    )
    .await
}

/// Replays every dead-lettered event of `consumer` without saying who or
/// why (it records neither); returns how many were applied or found
/// processed. Kept for the end-to-end suite written against it, whose
/// table has no replay columns; operators use [`replay_dead_letters_by`].
#[doc(hidden)]
pub async fn replay_dead_letters(
    pool: &PgPool,
    consumer: &str,
    handler: &dyn EventHandler,
) -> Result<u64, sqlx::Error> {
    let replayed = replay_selected(pool, consumer, handler, &ReplaySelection::default(), None)
        .await
        .map_err(|error| match error {
            ReplayError::Database(error) => error,
            ReplayError::Invalid(invalid) => sqlx::Error::Protocol(invalid.to_string()),
        })?;
    Ok(replayed
        .iter()
        .filter(|r| !matches!(r.result, ReplayResult::Failed(_)))
        .count() as u64)
}

async fn replay_selected(
    pool: &PgPool,
    consumer: &str,
    handler: &dyn EventHandler,
    selection: &ReplaySelection,
    by: Option<(&str, &str)>,
) -> Result<Vec<Replayed>, ReplayError> {
    let keys: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT topic, kafka_partition, kafka_offset FROM dead_letter_events \
         WHERE consumer = $1 AND replayed_at IS NULL \
           AND ($2::text IS NULL OR topic = $2) \
           AND ($3::integer IS NULL OR kafka_partition = $3) \
           AND ($4::bigint IS NULL OR kafka_offset = $4) \
         ORDER BY dead_lettered_at, topic, kafka_partition, kafka_offset",
    )
    .bind(consumer)
    .bind(selection.topic.as_deref())
    .bind(selection.partition)
    .bind(selection.offset)
    .fetch_all(pool)
    .await?;
    let mut replayed = Vec::with_capacity(keys.len());
    for (topic, partition, offset) in keys {
        let mut tx = pool.begin().await?;
        // Locked, and checked again: another replay may have taken it.
        let payload: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT payload FROM dead_letter_events WHERE consumer = $1 AND topic = $2 \
               AND kafka_partition = $3 AND kafka_offset = $4 AND replayed_at IS NULL \
             FOR UPDATE",
        )
        .bind(consumer)
        .bind(&topic)
        .bind(partition)
        .bind(offset)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(payload) = payload else {
            continue;
        };
        let result = match apply_encoded_in(&mut tx, consumer, &[&payload], handler).await {
            Ok(outcomes) => {
                let result =
                    ReplayResult::of(outcomes.first().copied().unwrap_or(Outcome::Malformed));
                mark_replayed(&mut tx, consumer, (&topic, partition, offset), by, &result).await?;
                tx.commit().await?;
                tracing::warn!(
                    consumer,
                    %topic,
                    partition,
                    offset,
                    operator = by.map(|(operator, _)| operator),
                    reason = by.map(|(_, reason)| reason),
                    result = result.as_str(),
                    "Dead-lettered event replayed."
                );
                result
            }
            Err(error) => {
                drop(tx);
                sqlx::query(
                    "UPDATE dead_letter_events SET error = $5, attempts = attempts + 1 \
                     WHERE consumer = $1 AND topic = $2 AND kafka_partition = $3 \
                       AND kafka_offset = $4",
                )
                .bind(consumer)
                .bind(&topic)
                .bind(partition)
                .bind(offset)
                .bind(error.to_string())
                .execute(pool)
                .await?;
                tracing::warn!(%error, consumer, %topic, partition, offset, "Dead-lettered event failed again; kept.");
                ReplayResult::Failed(error.to_string())
            }
        };
        replayed.push(Replayed {
            topic,
            partition,
            offset,
            result,
        });
    }
    Ok(replayed)
}

async fn mark_replayed(
    tx: &mut PgConnection,
    consumer: &str,
    (topic, partition, offset): (&str, i32, i64),
    by: Option<(&str, &str)>,
    result: &ReplayResult,
) -> Result<(), sqlx::Error> {
    let query = match by {
        Some((operator, reason)) => sqlx::query(
            "UPDATE dead_letter_events SET replayed_at = now(), replayed_by = $5, \
               replay_reason = $6, replay_result = $7 \
             WHERE consumer = $1 AND topic = $2 AND kafka_partition = $3 AND kafka_offset = $4",
        )
        .bind(consumer)
        .bind(topic)
        .bind(partition)
        .bind(offset)
        .bind(operator)
        .bind(reason)
        .bind(result.as_str()),
        None => sqlx::query(
            "UPDATE dead_letter_events SET replayed_at = now() \
             WHERE consumer = $1 AND topic = $2 AND kafka_partition = $3 AND kafka_offset = $4",
        )
        .bind(consumer)
        .bind(topic)
        .bind(partition)
        .bind(offset),
    };
    query.execute(tx).await?;
    Ok(())
}

/// A service's consumer without its Kafka side: the pool of its schema, the
/// name it records its events under (its group) and its handler. What an
/// operator's command needs to list and replay the service's dead-lettered
/// events with the service's own configuration, beside the running service:
/// every handler writes only to its own service's schema.
pub struct OfflineConsumer {
    pub pool: PgPool,
    pub consumer: String,
    pub handler: Box<dyn EventHandler>,
}

impl OfflineConsumer {
    /// [`list_dead_letters`] of this consumer.
    pub async fn list(
        &self,
        include_replayed: bool,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, sqlx::Error> {
        list_dead_letters(&self.pool, &self.consumer, include_replayed, limit).await
    }

    /// [`replay_dead_letters_by`] with this consumer's handler.
    pub async fn replay(&self, replay: &Replay<'_>) -> Result<Vec<Replayed>, ReplayError> {
        replay_dead_letters_by(&self.pool, &self.consumer, self.handler.as_ref(), replay).await
    }
}

/// How long a stopped consumer waits before [`run_until_stopped`] starts it
/// again.
pub const RESTART_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs [`run`] until `stop` is cancelled, starting it again after an error
/// or an ended stream: a broker outage must not silently end a service's
/// consumer while the service goes on answering health checks.
pub async fn run_until_stopped(
    pool: PgPool,
    kafka: &KafkaConfig,
    group: &str,
    topics: &[&str],
    handler: &dyn EventHandler,
    membership: Option<&GroupMembership>,
    stop: tokio_util::sync::CancellationToken,
) {
    let pruning = prune_until_stopped(&pool, group, kafka.dedupe_retention_hours, &stop);
    let gauging = gauge_dead_letters_until_stopped(&pool, group, &stop);
    let consuming = consume_until_stopped(
        pool.clone(),
        kafka,
        group,
        topics,
        handler,
        membership,
        &stop,
    );
    tokio::join!(pruning, gauging, consuming);
}

/// `consumer`'s dead-lettered events not yet replayed: what an operator
/// still has to look at. Counted on the primary key's leading column.
pub async fn open_dead_letters(pool: &PgPool, consumer: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM dead_letter_events WHERE consumer = $1 AND replayed_at IS NULL",
    )
    .bind(consumer)
    .fetch_one(pool)
    .await
}

/// How often [`open_dead_letters`] is read for its gauge.
const DEAD_LETTER_GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Records `consumer.dead_letters.open` every
/// [`DEAD_LETTER_GAUGE_INTERVAL`] until `stop`: the counter
/// `consumer.dead_lettered` says when events were set aside, this says how
/// many still are (an `increase` over a window forgets them after it).
/// Beside the consumer rather than in it, so it goes on while the consumer
/// restarts.
async fn gauge_dead_letters_until_stopped(
    pool: &PgPool,
    consumer: &str,
    stop: &tokio_util::sync::CancellationToken,
) {
    let open = opentelemetry::global::meter("switch-platform")
        .i64_gauge("consumer.dead_letters.open")
        .with_description("Dead-lettered events not yet replayed, by consumer")
        .build();
    let mut ticks = tokio::time::interval(DEAD_LETTER_GAUGE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match open_dead_letters(pool, consumer).await {
            Ok(count) => open.record(
                count,
                &[opentelemetry::KeyValue::new(
                    "consumer",
                    consumer.to_owned(),
                )],
            ),
            Err(error) => tracing::debug!(consumer, %error, "Dead-letter gauge not read."),
        }
    }
}

async fn consume_until_stopped(
    pool: PgPool,
    kafka: &KafkaConfig,
    group: &str,
    topics: &[&str],
    handler: &dyn EventHandler,
    membership: Option<&GroupMembership>,
    stop: &tokio_util::sync::CancellationToken,
) {
    while !stop.is_cancelled() {
        let result = run(
            pool.clone(),
            kafka,
            group,
            topics,
            handler,
            membership,
            stop.clone().cancelled_owned(),
        )
        .await;
        match result {
            Ok(()) => {
                if !stop.is_cancelled() {
                    tracing::warn!(%group, "Consumer stream ended; restarting.");
                }
            }
            Err(error) => tracing::warn!(%error, %group, "Consumer stopped; restarting."),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(RESTART_DELAY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_sums_the_assigned_partitions_of_each_topic_from_librdkafka_statistics() {
        // Shaped as librdkafka writes it (STATISTICS.md), trimmed to the
        // fields read, plus one it ignores.
        let json = br#"{
          "name": "rdkafka#consumer-1", "type": "consumer",
          "topics": {
            "p.authorization-events": { "topic": "p.authorization-events", "partitions": {
              "0": { "partition": 0, "desired": true, "lo_offset": 0, "hi_offset": 120,
                     "app_offset": 100, "committed_offset": 90, "consumer_lag": 30 },
              "1": { "partition": 1, "desired": true, "lo_offset": 10, "hi_offset": 50,
                     "app_offset": -1001, "committed_offset": -1001, "consumer_lag": -1 },
              "2": { "partition": 2, "desired": false, "lo_offset": 0, "hi_offset": 999,
                     "app_offset": -1001, "committed_offset": 5, "consumer_lag": 994 },
              "-1": { "partition": -1, "desired": false, "consumer_lag": -1 }
            }},
            "p.settlement-events": { "topic": "p.settlement-events", "partitions": {
              "0": { "partition": 0, "desired": true, "hi_offset": -1, "consumer_lag": -1 }
            }}
          }
        }"#;
        let statistics: ConsumerStatistics = serde_json::from_slice(json).unwrap();
        assert_eq!(
            statistics.lag_by_topic(),
            vec![
                // 30 from librdkafka; 40 counted from the lowest offset of a
                // partition the group never committed; the revoked
                // partition and the internal one not at all.
                ("p.authorization-events".to_owned(), 70),
                // Nothing known yet: 0, not a guess.
                ("p.settlement-events".to_owned(), 0),
            ]
        );
    }

    #[tokio::test]
    async fn membership_is_shared_by_clones_and_resolves_on_the_first_assignment() {
        let membership = GroupMembership::default();
        let watcher = membership.clone();
        assert!(!watcher.has_joined());
        let waiting = tokio::spawn(async move { watcher.joined().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing joined yet");
        // What the rebalance callback does on an assignment.
        membership.0.send_replace(true);
        waiting.await.expect("joined() resolves");
        assert!(membership.has_joined());
        // Later waiters resolve at once.
        membership.joined().await;
    }
}
