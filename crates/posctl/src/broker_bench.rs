//! `posctl broker-bench`: measures a Kafka-protocol broker the way the
//! switch leans on it, so development broker stores can be compared side by
//! side (`scripts/broker-compare.sh`): produce rate with acks from every
//! replica and idempotence (the outbox relay's settings), fetch rate and
//! consumer-group join time (every consumer's start), and whether a broker
//! killed with SIGKILL keeps what it acknowledged and the offsets a group
//! committed.
//!
//! Every message carries its sequence number in its first eight bytes, so
//! a later `verify` can say exactly which acknowledged messages are missing.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::json;

#[derive(Debug, Args)]
pub struct BrokerBenchArgs {
    /// Bootstrap servers of the broker under test.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[command(subcommand)]
    command: BrokerBenchCommand,
}

#[derive(Debug, Subcommand)]
enum BrokerBenchCommand {
    /// Create TOPIC if needed and produce MESSAGES numbered from --first;
    /// prints how many were acknowledged and how fast.
    Produce {
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 500_000)]
        messages: u64,
        /// Sequence number of the first message (a second run continues).
        #[arg(long, default_value_t = 0)]
        first: u64,
        /// Bytes per message (at least 8; a journal event is about 300).
        #[arg(long, default_value_t = 300)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Append the sequence number of every acknowledged message here.
        #[arg(long)]
        acked_file: Option<PathBuf>,
        /// How long a message may wait for its acknowledgement, in ms (a
        /// broker killed mid-run fails the rest after this).
        #[arg(long, default_value_t = 30_000)]
        message_timeout_ms: u64,
        /// Send at most this many messages per second (so a kill lands
        /// mid-run whatever the store's speed); unpaced by default.
        #[arg(long)]
        rate: Option<u64>,
    },
    /// Join GROUP, read MESSAGES from where it stands, commit, and print
    /// the join time (until the first message) and the read rate.
    Fetch {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        messages: u64,
        /// Give up when nothing arrives for this long, in ms.
        #[arg(long, default_value_t = 30_000)]
        idle_timeout_ms: u64,
    },
    /// Read TOPIC from the start with a fresh group and report which
    /// sequence numbers of --acked-file are missing; with --group, also the
    /// offsets that group has committed.
    Verify {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        acked_file: PathBuf,
        #[arg(long)]
        group: Option<String>,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        #[arg(long, default_value_t = 30_000)]
        idle_timeout_ms: u64,
    },
}

pub async fn run(args: BrokerBenchArgs) -> Result<()> {
    let brokers = args.brokers;
    // rdkafka's polling loops block; keep them off the async workers.
    tokio::task::spawn_blocking(move || match args.command {
        BrokerBenchCommand::Produce {
            topic,
            messages,
            first,
            size,
            partitions,
            acked_file,
            message_timeout_ms,
            rate,
        } => produce(
            &brokers,
            &topic,
            first..first + messages,
            Shape {
                size,
                partitions,
                rate,
            },
            acked_file,
            message_timeout_ms,
        ),
        BrokerBenchCommand::Fetch {
            topic,
            group,
            messages,
            idle_timeout_ms,
        } => fetch(&brokers, &topic, &group, messages, idle_timeout_ms),
        BrokerBenchCommand::Verify {
            topic,
            acked_file,
            group,
            partitions,
            idle_timeout_ms,
        } => verify(
            &brokers,
            &topic,
            &acked_file,
            group.as_deref(),
            partitions,
            idle_timeout_ms,
        ),
    })
    .await?
}

/// Messages per second, in integers.
fn per_second(count: u64, elapsed: Duration) -> u64 {
    let micros = elapsed.as_micros().max(1);
    u64::try_from(u128::from(count) * 1_000_000 / micros).unwrap_or(u64::MAX)
}

fn sequence_of(payload: Option<&[u8]>) -> Option<u64> {
    let bytes: [u8; 8] = payload?.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Counts deliveries and remembers what was acknowledged.
struct Deliveries {
    acked: Mutex<Vec<u64>>,
    failed: Mutex<u64>,
}

struct DeliveryCounter(Arc<Deliveries>);

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => {
                if let Some(sequence) = sequence_of(message.payload()) {
                    self.0.acked.lock().expect("delivery lock").push(sequence);
                }
            }
            Err(_) => *self.0.failed.lock().expect("delivery lock") += 1,
        }
    }
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

/// What is produced: message size, partitions, pace.
struct Shape {
    size: usize,
    partitions: i32,
    rate: Option<u64>,
}

fn produce(
    brokers: &str,
    topic: &str,
    sequences: std::ops::Range<u64>,
    Shape {
        size,
        partitions,
        rate,
    }: Shape,
    acked_file: Option<PathBuf>,
    message_timeout_ms: u64,
) -> Result<()> {
    if size < 8 {
        bail!("--size must be at least 8 (the sequence number)");
    }
    create_topic(brokers, topic, partitions)?;
    let deliveries = Arc::new(Deliveries {
        acked: Mutex::new(Vec::new()),
        failed: Mutex::new(0),
    });
    let producer: ThreadedProducer<DeliveryCounter> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", message_timeout_ms.to_string())
        .create_with_context(DeliveryCounter(deliveries.clone()))?;
    let total = sequences.end - sequences.start;
    let mut payload = vec![b'x'; size];
    let started = Instant::now();
    // A fatal producer error (a store that lost the producer's state in a
    // kill, say) ends the run; what was acknowledged before still counts.
    let mut fatal = None;
    'messages: for (sent, sequence) in sequences.enumerate() {
        if let Some(rate) = rate.filter(|rate| *rate > 0) {
            let due = Duration::from_micros(sent as u64 * 1_000_000 / rate);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        payload[..8].copy_from_slice(&sequence.to_be_bytes());
        let key = sequence.to_be_bytes();
        loop {
            match producer.send(
                BaseRecord::<[u8], [u8]>::to(topic)
                    .payload(&payload[..])
                    .key(&key[..]),
            ) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => {
                    fatal = Some(error.to_string());
                    break 'messages;
                }
            }
        }
    }
    // Flush errors are the unacknowledged messages, already counted.
    let _ = producer.flush(Duration::from_millis(message_timeout_ms + 5_000));
    let elapsed = started.elapsed();
    let acked = std::mem::take(&mut *deliveries.acked.lock().expect("delivery lock"));
    let failed = *deliveries.failed.lock().expect("delivery lock");
    if let Some(path) = acked_file {
        use std::io::Write as _;
        let mut out = std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?,
        );
        for sequence in &acked {
            writeln!(out, "{sequence}")?;
        }
        out.flush()?;
    }
    let acked_count = acked.len() as u64;
    println!(
        "{}",
        json!({
            "requested": total,
            "acked": acked_count,
            "failed": failed,
            "ms": elapsed.as_millis() as u64,
            "produce_per_s": per_second(acked_count, elapsed),
            "error": fatal,
        })
    );
    Ok(())
}

fn consumer(brokers: &str, group: &str) -> Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.max.bytes", "52428800")
        .create()?)
}

/// Reads up to `limit` messages from where `group` stands, calling `seen`
/// with each sequence number; returns when the first message arrived and
/// when the last did.
fn read(
    consumer: &BaseConsumer,
    limit: u64,
    idle_timeout: Duration,
    mut seen: impl FnMut(u64),
) -> Result<(u64, Option<Duration>, Duration)> {
    let started = Instant::now();
    let mut first = None;
    let mut last_activity = Instant::now();
    let mut count = 0;
    while count < limit {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                first.get_or_insert_with(|| started.elapsed());
                last_activity = Instant::now();
                count += 1;
                if let Some(sequence) = sequence_of(message.payload()) {
                    seen(sequence);
                }
            }
            Some(Err(error)) => eprintln!("broker-bench: fetch error: {error}"),
            None if last_activity.elapsed() > idle_timeout => break,
            None => {}
        }
    }
    Ok((count, first, started.elapsed()))
}

fn fetch(brokers: &str, topic: &str, group: &str, limit: u64, idle_timeout_ms: u64) -> Result<()> {
    let consumer = consumer(brokers, group)?;
    consumer.subscribe(&[topic])?;
    let mut distinct = HashSet::new();
    let (count, join, elapsed) = read(
        &consumer,
        limit,
        Duration::from_millis(idle_timeout_ms),
        |sequence| {
            distinct.insert(sequence);
        },
    )?;
    if count > 0 {
        consumer.commit_consumer_state(CommitMode::Sync)?;
    }
    let join = join.unwrap_or(elapsed);
    println!(
        "{}",
        json!({
            "read": count,
            "distinct": distinct.len(),
            "join_ms": join.as_millis() as u64,
            "ms": elapsed.as_millis() as u64,
            "fetch_per_s": per_second(count, elapsed.saturating_sub(join)),
        })
    );
    Ok(())
}

fn verify(
    brokers: &str,
    topic: &str,
    acked_file: &PathBuf,
    group: Option<&str>,
    partitions: i32,
    idle_timeout_ms: u64,
) -> Result<()> {
    let acked: Vec<u64> = std::fs::read_to_string(acked_file)
        .with_context(|| format!("reading {}", acked_file.display()))?
        .lines()
        .map(|line| line.parse().context("a sequence number per line"))
        .collect::<Result<_>>()?;
    let reader = consumer(brokers, &format!("verify-{}", rand::random::<u64>()))?;
    reader.subscribe(&[topic])?;
    let mut present = HashSet::new();
    let (read, _, _) = read(
        &reader,
        u64::MAX,
        Duration::from_millis(idle_timeout_ms),
        |sequence| {
            present.insert(sequence);
        },
    )?;
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|sequence| !present.contains(sequence))
        .collect();
    let committed = match group {
        None => None,
        Some(group) => {
            let consumer = consumer(brokers, group)?;
            let mut partitions_list = TopicPartitionList::new();
            for partition in 0..partitions {
                partitions_list.add_partition(topic, partition);
            }
            let offsets = consumer.committed_offsets(partitions_list, Duration::from_secs(30))?;
            let total: i64 = offsets
                .elements()
                .iter()
                .map(|element| match element.offset() {
                    Offset::Offset(offset) => offset,
                    _ => 0,
                })
                .sum();
            Some(total)
        }
    };
    println!(
        "{}",
        json!({
            "acked": acked.len(),
            "read": read,
            "distinct_present": present.len(),
            "missing_acked": missing.len(),
            "first_missing": missing.iter().take(5).collect::<Vec<_>>(),
            "committed": committed,
        })
    );
    Ok(())
}
