//! `switchd admin`: operators' commands that run beside the services, with
//! a service's own configuration, instead of through an RPC of the service.
//!
//! `switchd admin dead-letters list|replay --service <name>` lists and
//! replays the events a service's consumer gave up on (ADR 16, ADR 19).
//! Every consumer's handler writes only to its own service's schema, so the
//! command builds the service's handler with a pool of that schema
//! ([`switch_platform::consumer::OfflineConsumer`]) and applies each event
//! exactly once, as the running consumer would: both record the event's id
//! in the transaction that applies it. The terminal gateway is why this is
//! a command and not an RPC: its only port faces terminals.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use switch_platform::consumer::{
    DeadLetter, OfflineConsumer, Replay, ReplayError, ReplayResult, ReplaySelection, Replayed,
};
use switch_platform::service::ServeError;
use time::format_description::well_known::Rfc3339;

use crate::SwitchdConfig;

/// Most dead letters `list` prints at once.
pub const MAX_LIST: i64 = 10_000;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Events a service's consumer gave up on (poison events): list them,
    /// or replay them after a fix, saying who and why.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Create a service's schema and apply its migrations (or every
    /// service's), then exit: a deployment's pre-install step, so the
    /// services' own database user need not own DDL on a fresh install.
    Migrate(MigrateArgs),
    /// Create every topic of the switch unless it exists, then exit.
    Topics,
    /// Ask a service of this pod for its gRPC health, as its own callers
    /// reach it (mutual TLS with the service's certificate): exit 0 when
    /// SERVING, 1 otherwise. Kubernetes' readiness probe, which cannot
    /// present a client certificate itself.
    Health(HealthArgs),
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The service whose port is asked; one served over internal gRPC
    /// (not the gateway, whose port takes terminal certificates).
    #[arg(long)]
    pub service: crate::Service,
    /// The name the service's certificate carries (a DNS SAN), when it is
    /// not `localhost`: the chart's Service name.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// How long the answer may take.
    #[arg(long, default_value_t = 2_000)]
    pub timeout_ms: u64,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The service whose schema is migrated, or `all`.
    #[arg(long)]
    pub service: crate::Service,
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List the service's dead-lettered events, oldest first.
    List(ListArgs),
    /// Apply the service's dead-lettered events again, each exactly once,
    /// recording who replayed it, why and what it did.
    Replay(ReplayArgs),
}

/// The services that consume events, and so can dead-letter them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsumingService {
    ReversalHandler,
    #[value(alias = "settlement")]
    SettlementBatcher,
    Notifier,
    #[value(alias = "gateway")]
    TerminalGateway,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The service whose consumer's dead letters are listed.
    #[arg(long)]
    pub service: ConsumingService,
    /// Also those already replayed.
    #[arg(long)]
    pub all: bool,
    /// At most this many.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=MAX_LIST))]
    pub limit: i64,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The service whose consumer's dead letters are replayed.
    #[arg(long)]
    pub service: ConsumingService,
    /// Who replays (a person or a runbook's name); recorded with each event.
    #[arg(long, env = "SWITCHD_OPERATOR")]
    pub operator: String,
    /// Why (the incident, the fix); recorded with each event.
    #[arg(long)]
    pub reason: String,
    /// Only events of this topic (its full name, as `list` shows it).
    #[arg(long)]
    pub topic: Option<String>,
    /// Only events of this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Only the event at this offset.
    #[arg(long)]
    pub offset: Option<i64>,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The operator's input is refused; nothing was done.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Start(#[from] ServeError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The service answered NOT_SERVING, or not at all.
    #[error("{0}")]
    Unhealthy(String),
    /// Some events failed again and were kept.
    #[error("{failed} of {taken} dead-lettered events failed again and were kept")]
    Failed { failed: usize, taken: usize },
}

/// The service's consumer, built from its section of `config`.
pub async fn consumer_of(
    service: ConsumingService,
    config: &SwitchdConfig,
) -> Result<OfflineConsumer, ServeError> {
    let database = &config.database;
    match service {
        ConsumingService::ReversalHandler => {
            reversal_handler::offline_consumer(database, &config.reversal_handler).await
        }
        ConsumingService::SettlementBatcher => {
            settlement_batcher::offline_consumer(database, &config.settlement).await
        }
        ConsumingService::Notifier => {
            notifier::offline_consumer(database, &config.kafka, &config.notifier).await
        }
        ConsumingService::TerminalGateway => terminal_gateway::offline_consumer(database).await,
    }
}

/// The health of `args.service` at its own listen address on this host,
/// asked over the internal TLS its callers use (or the lab's plaintext).
async fn health(args: &HealthArgs, config: &SwitchdConfig) -> Result<(), AdminError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut specs = args.service.specs();
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return Err(AdminError::Invalid(
            "--service: name one service, not all".into(),
        ));
    };
    if !spec.internal_grpc || spec.service == crate::Service::TerminalGateway {
        return Err(AdminError::Invalid(format!(
            "--service: {} is not served over internal gRPC",
            spec.name
        )));
    }
    let listen = (spec.listen)(config);
    // A wildcard listen address is reached on loopback.
    let host = if listen.ip().is_unspecified() {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        listen.ip()
    };
    let address = std::net::SocketAddr::new(host, listen.port());
    let timeout = std::time::Duration::from_millis(args.timeout_ms);
    let tls =
        config
            .internal_tls
            .client(spec.name)
            .map(|tls| switch_platform::service::ClientTls {
                domain_name: Some(args.server_name.clone()),
                ..tls
            });
    let channel = switch_platform::service::GrpcClient::new(format!(
        "{}://{address}",
        config.internal_tls.scheme()
    ))
    .connect_timeout(timeout)
    .request_timeout(timeout)
    .tls(tls)
    .channel()?;
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    match answer.map(|response| response.into_inner().status()) {
        Ok(ServingStatus::Serving) => {
            println!("{} at {address}: SERVING", spec.name);
            Ok(())
        }
        Ok(status) => Err(AdminError::Unhealthy(format!(
            "{} at {address}: {}",
            spec.name,
            status.as_str_name()
        ))),
        Err(status) => Err(AdminError::Unhealthy(format!(
            "{} at {address}: no answer ({:?}: {})",
            spec.name,
            status.code(),
            status.message()
        ))),
    }
}

/// Runs one admin command; prints its answer on stdout.
pub async fn run(command: AdminCommand, config: &SwitchdConfig) -> Result<(), AdminError> {
    let command = match command {
        AdminCommand::DeadLetters(command) => command,
        AdminCommand::Migrate(args) => return migrate(args.service, config).await,
        AdminCommand::Health(args) => return health(&args, config).await,
        AdminCommand::Topics => {
            config
                .kafka
                .ensure_topics(&switch_platform::kafka::topics::ALL)
                .await
                .map_err(|e| AdminError::Start(e.into()))?;
            for topic in switch_platform::kafka::topics::ALL {
                println!("topic {} exists", config.kafka.topic(topic));
            }
            return Ok(());
        }
    };
    match command {
        DeadLettersCommand::List(args) => {
            let consumer = consumer_of(args.service, config).await?;
            let letters = consumer.list(args.all, args.limit).await?;
            if args.json {
                let rows: Vec<Value> = letters.iter().map(dead_letter_json).collect();
                println!(
                    "{}",
                    json!({ "consumer": consumer.consumer, "dead_letters": rows })
                );
            } else {
                print!("{}", dead_letters_text(&consumer.consumer, &letters));
            }
            Ok(())
        }
        DeadLettersCommand::Replay(args) => {
            let selection = ReplaySelection {
                topic: args.topic.clone(),
                partition: args.partition,
                offset: args.offset,
            };
            let consumer = consumer_of(args.service, config).await?;
            let replay = Replay {
                operator: &args.operator,
                reason: &args.reason,
                selection: &selection,
            };
            let replayed = consumer
                .replay(&replay)
                .await
                .map_err(|error| match error {
                    ReplayError::Invalid(invalid) => AdminError::Invalid(invalid.to_string()),
                    ReplayError::Database(error) => AdminError::Database(error),
                })?;
            if args.json {
                let rows: Vec<Value> = replayed.iter().map(replayed_json).collect();
                println!(
                    "{}",
                    json!({
                        "consumer": consumer.consumer,
                        "operator": args.operator.trim(),
                        "reason": args.reason.trim(),
                        "replayed": rows,
                    })
                );
            } else {
                print!("{}", replayed_text(&consumer.consumer, &replayed));
            }
            let failed = replayed
                .iter()
                .filter(|r| matches!(r.result, ReplayResult::Failed(_)))
                .count();
            if failed > 0 {
                return Err(AdminError::Failed {
                    failed,
                    taken: replayed.len(),
                });
            }
            Ok(())
        }
    }
}

/// Applies the migrations of each service `service` runs to its schema;
/// prints each schema and how many migrations it has.
async fn migrate(service: crate::Service, config: &SwitchdConfig) -> Result<(), AdminError> {
    for spec in service.specs() {
        let schema = config.database.schema_for(spec.name);
        let pool = switch_platform::db::connect(&config.database, &schema)
            .await
            .map_err(|e| AdminError::Start(e.into()))?;
        spec.migrator
            .run(&pool)
            .await
            .map_err(|e| AdminError::Start(e.into()))?;
        pool.close().await;
        println!(
            "schema {schema} migrated ({} migrations)",
            spec.migrator.iter().count()
        );
    }
    Ok(())
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

fn dead_letter_json(letter: &DeadLetter) -> Value {
    json!({
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "event_id": letter.event_id,
        "event_type": letter.event_type,
        "transaction_id": letter.transaction_id,
        "error": letter.error,
        "attempts": letter.attempts,
        "dead_lettered_at": rfc3339(letter.dead_lettered_at),
        "replayed_at": letter.replayed_at.map(rfc3339),
        "replayed_by": letter.replayed_by,
        "replay_reason": letter.replay_reason,
        "replay_result": letter.replay_result,
    })
}

fn replayed_json(replayed: &Replayed) -> Value {
    let error = match &replayed.result {
        ReplayResult::Failed(error) => Some(error.as_str()),
        _ => None,
    };
    json!({
        "topic": replayed.topic,
        "partition": replayed.partition,
        "offset": replayed.offset,
        "result": replayed.result.as_str(),
        "error": error,
    })
}

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// The text of `list`: a table, or a sentence when there is nothing.
pub fn dead_letters_text(consumer: &str, letters: &[DeadLetter]) -> String {
    if letters.is_empty() {
        return format!("no dead-lettered events for consumer {consumer}\n");
    }
    let dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|l| {
            let replayed = match (&l.replayed_at, &l.replayed_by) {
                (Some(at), by) => format!(
                    "{} by {} ({}): {}",
                    rfc3339(*at),
                    dash(by),
                    dash(&l.replay_reason),
                    dash(&l.replay_result)
                ),
                (None, _) => "-".to_owned(),
            };
            vec![
                l.topic.clone(),
                l.partition.to_string(),
                l.offset.to_string(),
                dash(&l.event_type),
                dash(&l.transaction_id),
                l.attempts.to_string(),
                rfc3339(l.dead_lettered_at),
                l.error.clone(),
                replayed,
            ]
        })
        .collect();
    let headers = [
        "TOPIC",
        "PARTITION",
        "OFFSET",
        "EVENT TYPE",
        "TRANSACTION",
        "ATTEMPTS",
        "DEAD-LETTERED AT",
        "ERROR",
        "REPLAYED",
    ];
    format!(
        "{}{} dead-lettered event(s) for consumer {consumer}\n",
        table(&headers, &rows),
        letters.len()
    )
}

/// The text of `replay`: a line per event taken, then a count.
pub fn replayed_text(consumer: &str, replayed: &[Replayed]) -> String {
    if replayed.is_empty() {
        return format!("nothing to replay for consumer {consumer}\n");
    }
    let mut out = String::new();
    for r in replayed {
        let detail = match &r.result {
            ReplayResult::Failed(error) => format!("failed again, kept: {error}"),
            other => other.as_str().to_owned(),
        };
        out.push_str(&format!(
            "{}:{}:{} {detail}\n",
            r.topic, r.partition, r.offset
        ));
    }
    let failed = replayed
        .iter()
        .filter(|r| matches!(r.result, ReplayResult::Failed(_)))
        .count();
    out.push_str(&format!(
        "{} replayed, {failed} failed, for consumer {consumer}\n",
        replayed.len() - failed
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter() -> DeadLetter {
        DeadLetter {
            topic: "authorization-events".into(),
            partition: 2,
            offset: 41,
            event_id: Some("e1".into()),
            event_type: Some("authorization.approved".into()),
            transaction_id: Some("t1".into()),
            error: "no_poison".into(),
            attempts: 5,
            dead_lettered_at: time::macros::datetime!(2026-12-02 10:00 UTC),
            replayed_at: None,
            replayed_by: None,
            replay_reason: None,
            replay_result: None,
        }
    }

    #[test]
    fn the_list_shows_every_column_and_who_replayed() {
        let mut replayed = letter();
        replayed.replayed_at = Some(time::macros::datetime!(2026-12-02 11:00 UTC));
        replayed.replayed_by = Some("ops.alice".into());
        replayed.replay_reason = Some("INC-7".into());
        replayed.replay_result = Some("applied".into());
        let text = dead_letters_text("settlement-batcher", &[letter(), replayed]);
        assert!(text.starts_with("TOPIC"), "{text}");
        assert!(text.contains("authorization.approved"), "{text}");
        assert!(
            text.contains("2026-12-02T11:00:00Z by ops.alice (INC-7): applied"),
            "{text}"
        );
        assert!(text.ends_with("2 dead-lettered event(s) for consumer settlement-batcher\n"));
        assert_eq!(
            dead_letters_text("notifier", &[]),
            "no dead-lettered events for consumer notifier\n"
        );
        let json = dead_letter_json(&letter());
        assert_eq!(json["offset"], 41);
        assert_eq!(json["replayed_by"], Value::Null);
    }

    #[test]
    fn the_replay_says_what_each_event_did() {
        let replayed = [
            Replayed {
                topic: "t".into(),
                partition: 0,
                offset: 1,
                result: ReplayResult::Applied,
            },
            Replayed {
                topic: "t".into(),
                partition: 0,
                offset: 2,
                result: ReplayResult::Failed("still broken".into()),
            },
        ];
        let text = replayed_text("notifier", &replayed);
        assert!(text.contains("t:0:1 applied\n"), "{text}");
        assert!(
            text.contains("t:0:2 failed again, kept: still broken"),
            "{text}"
        );
        assert!(text.ends_with("1 replayed, 1 failed, for consumer notifier\n"));
        assert_eq!(replayed_json(&replayed[1])["error"], "still broken");
        assert_eq!(
            replayed_text("notifier", &[]),
            "nothing to replay for consumer notifier\n"
        );
    }
}
