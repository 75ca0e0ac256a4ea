//! What a consumer group has committed against what its service applied:
//! the check that a stopped consumer left nothing applied past its
//! offsets (its partitions' next owner would apply it again).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::kafka_brokers;
use crate::unique_suffix;
use crate::v1::EventEnvelope;

/// Every message of `topics` up to the current end, with its partition
/// and offset.
pub fn read_topics(topics: &[String]) -> Vec<(String, i32, i64, EventEnvelope)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", format!("reader-{}", unique_suffix()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        for partition in metadata.topics()[0].partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
                .unwrap();
            if high > 0 {
                assignment
                    .add_partition_offset(topic, partition.id(), Offset::Beginning)
                    .unwrap();
                ends.insert((topic.clone(), partition.id()), high);
            }
        }
    }
    let mut messages = Vec::new();
    if ends.is_empty() {
        return messages;
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut done: HashSet<(String, i32)> = HashSet::new();
    while done.len() < ends.len() {
        assert!(Instant::now() < deadline, "read the topics within 30 s");
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap();
        let key = (message.topic().to_owned(), message.partition());
        let envelope = EventEnvelope::decode(message.payload().unwrap_or_default()).unwrap();
        if message.offset() + 1 >= ends[&key] {
            done.insert(key.clone());
        }
        if message.offset() < ends[&key] {
            messages.push((key.0, key.1, message.offset(), envelope));
        }
    }
    messages
}

/// The offsets `group` has committed on `topics`.
pub fn committed(group: &str, topics: &[String]) -> HashMap<(String, i32), i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut wanted = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        for partition in metadata.topics()[0].partitions() {
            wanted.add_partition(topic, partition.id());
        }
    }
    consumer
        .committed_offsets(wanted, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(offset) => Some(((e.topic().to_owned(), e.partition()), offset)),
            _ => None,
        })
        .collect()
}

/// The events a service recorded as applied (its `processed_events`) that
/// lie at or past `group`'s committed offsets on `topics`, each named
/// `topic/partition@offset type`; empty when the group committed all it
/// applied.
pub async fn applied_past_commit(
    service_db: &sqlx::PgPool,
    group: &str,
    topics: &[String],
) -> (usize, Vec<String>) {
    let committed = committed(group, topics);
    let applied: HashSet<String> =
        sqlx::query_scalar::<_, String>("SELECT event_id::text FROM processed_events")
            .fetch_all(service_db)
            .await
            .expect("the service's processed events")
            .into_iter()
            .collect();
    let past = read_topics(topics)
        .iter()
        .filter(|(topic, partition, offset, envelope)| {
            applied.contains(&envelope.event_id)
                && *offset
                    >= committed
                        .get(&(topic.clone(), *partition))
                        .copied()
                        .unwrap_or(0)
        })
        .map(|(topic, partition, offset, envelope)| {
            format!("{topic}/{partition}@{offset} {}", envelope.event_type)
        })
        .collect();
    (applied.len(), past)
}
