//! The chaos run (issue 13): the whole switch as separate `switchd`
//! processes on the real PostgreSQL and a broker of its own, driven by many
//! terminals while answers are dropped, the issuer times out and answers
//! late, every service is killed with SIGKILL and restarted, the broker is
//! killed and restarted on its file-backed store, the database loses its
//! connections (or restarts), and settlement windows close every few
//! seconds. Then the faults stop, the system is left to settle, and an
//! audit compares the issuer's own ledger with the switch's tables and
//! topics. `make test` runs [`ChaosPlan::small`]; `make chaos` runs
//! [`ChaosPlan::full`].

pub mod audit;
pub mod deployment;
pub mod terminals;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use switch_proto::v1::FaultPlan;
use switch_proto::v1::issuer_control_client::IssuerControlClient;
use switch_proto::v1::settlement_service_client::SettlementServiceClient;
use tokio_util::sync::CancellationToken;

use audit::Audit;
use deployment::{DatabaseFault, Deployment, SERVICES, Timing};
use terminals::{Progress, TerminalBehaviour};

/// What a run does.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    pub authorizations: u32,
    pub terminals: u32,
    pub kills_per_service: u32,
    pub broker_restarts: u32,
    pub database_fault: DatabaseFault,
    pub behaviour: TerminalBehaviour,
    /// Issuer calls that time out, in thousandths: half are never decided,
    /// half are approved (funds held) and their answer lost.
    pub issuer_timeout_per_mille: u32,
    /// Issuer answers that arrive after the call's timeout, inside its late
    /// window, in thousandths. Their terminals' reversals overtake them and
    /// are answered "25".
    pub issuer_late_per_mille: u32,
    pub settlement_every: Duration,
    /// How long the system may take to settle once the faults stop.
    pub settle_within: Duration,
    pub timing: Timing,
    pub seed: u64,
}

impl ChaosPlan {
    /// The run inside `make test`: 5,000 authorizations, every service
    /// killed once, the broker restarted once, the deployment's database
    /// connections terminated once.
    pub fn small(seed: u64) -> ChaosPlan {
        ChaosPlan {
            authorizations: 5_000,
            terminals: 24,
            kills_per_service: 1,
            broker_restarts: 1,
            database_fault: DatabaseFault::TerminateBackends,
            behaviour: TerminalBehaviour {
                drop_per_mille: 100,
                silent_per_mille: 300,
                sale_timeout: Duration::from_secs(8),
                give_up_after: Duration::from_secs(30),
            },
            issuer_timeout_per_mille: 50,
            issuer_late_per_mille: 10,
            settlement_every: Duration::from_secs(3),
            settle_within: Duration::from_secs(120),
            timing: Timing {
                issuer_timeout_ms: 800,
                issuer_late_window_ms: 2_500,
                ack_window_ms: 4_000,
            },
            seed,
        }
    }

    /// `make chaos`: 100,000 authorizations, every service killed twice,
    /// the broker restarted once and PostgreSQL restarted once.
    pub fn full(seed: u64) -> ChaosPlan {
        ChaosPlan {
            authorizations: 100_000,
            terminals: 64,
            kills_per_service: 2,
            database_fault: DatabaseFault::Restart(
                ["pg_ctlcluster", "15", "main", "restart", "-m", "fast"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
            settle_within: Duration::from_secs(300),
            ..ChaosPlan::small(seed)
        }
    }

    /// `CHAOS_PLAN=full` or `small` (the default), `CHAOS_SEED`,
    /// `CHAOS_AUTHORIZATIONS` and `CHAOS_PG_RESTART` (a command, or
    /// `terminate` for terminating backends) override.
    pub fn from_env() -> anyhow::Result<ChaosPlan> {
        let seed = match std::env::var("CHAOS_SEED") {
            Ok(seed) => seed.parse().context("CHAOS_SEED must be a number")?,
            Err(_) => rand::random(),
        };
        let mut plan = match std::env::var("CHAOS_PLAN").as_deref() {
            Ok("full") => ChaosPlan::full(seed),
            Ok("small") | Err(_) => ChaosPlan::small(seed),
            Ok(other) => anyhow::bail!("CHAOS_PLAN must be small or full, not {other:?}"),
        };
        if let Ok(count) = std::env::var("CHAOS_AUTHORIZATIONS") {
            plan.authorizations = count
                .parse()
                .context("CHAOS_AUTHORIZATIONS must be a number")?;
        }
        if let Ok(command) = std::env::var("CHAOS_PG_RESTART") {
            plan.database_fault = match command.as_str() {
                "terminate" => DatabaseFault::TerminateBackends,
                command => {
                    DatabaseFault::Restart(command.split_whitespace().map(str::to_owned).collect())
                }
            };
        }
        Ok(plan)
    }
}

/// One fault the controller injects.
#[derive(Debug, Clone)]
enum Fault {
    Kill(&'static str),
    BrokerRestart,
    Database,
}

/// What happened, and what the audit found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub authorizations: u32,
    pub terminals: u32,
    pub load_ms: u64,
    pub faults: Vec<String>,
    /// From the moment the faults stopped until nothing was left open;
    /// `None` when it did not settle within the plan's limit.
    pub settle_ms: Option<u64>,
    pub settlement_runs: u64,
    pub terminal_views: BTreeMap<String, u64>,
    pub audit: Audit,
    /// Where the processes' logs are (kept when a promise was broken).
    pub logs: String,
}

impl ChaosReport {
    /// The promises broken: each figure of the audit that is not zero, and
    /// a run that did not settle.
    pub fn broken(&self) -> Vec<String> {
        let mut broken: Vec<String> = self
            .audit
            .promises()
            .iter()
            .filter(|(_, n)| *n != 0)
            .map(|(what, n)| format!("{what}: {n}"))
            .collect();
        if self.settle_ms.is_none() {
            broken.push("did not settle in time".to_owned());
        }
        broken
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "chaos run (seed {}): {} authorizations from {} terminals in {} ({}/s)\n",
            self.seed,
            self.authorizations,
            self.terminals,
            seconds(self.load_ms),
            u64::from(self.authorizations) * 1_000 / self.load_ms.max(1)
        );
        out += "faults:\n";
        for fault in &self.faults {
            out += &format!("  {fault}\n");
        }
        out += &format!(
            "settled {} after the faults stopped; {} settlement runs\n",
            self.settle_ms
                .map_or("NOT".to_owned(), |ms| format!("in {}", seconds(ms))),
            self.settlement_runs
        );
        out += "what the terminals saw:\n";
        for (view, n) in &self.terminal_views {
            out += &format!("  {view:<28} {n}\n");
        }
        out += &format!("journal: {:?}\n", self.audit.journal_states);
        out += &format!("issuer ledger: {:?}\n", self.audit.issuer_states);
        out += &format!(
            "settled transactions: {}; events read back: {}\n",
            self.audit.settled_transactions, self.audit.events_on_topics
        );
        out += "audit (every figure must be 0):\n";
        for (what, n) in self.audit.promises() {
            out += &format!("  {what:<56} {n}\n");
        }
        out
    }
}

/// `12.3 s`.
fn seconds(ms: u64) -> String {
    format!("{}.{} s", ms / 1_000, ms % 1_000 / 100)
}

/// Runs `plan` and returns its report; the deployment's schemas are
/// dropped, and its directory removed when every promise held.
pub async fn run(plan: &ChaosPlan) -> anyhow::Result<ChaosReport> {
    let terminal_ids: Vec<(String, String)> = (0..plan.terminals)
        .map(|n| {
            (
                format!("CHAOS{:03}", n + 1),
                format!("MERCHANT000000{}", n % 4 + 1),
            )
        })
        .collect();
    let mut deployment = Deployment::start(plan.timing, &terminal_ids).await?;
    let outcome = drive(plan, &mut deployment, &terminal_ids).await;
    let keep = outcome.as_ref().map_or(true, |r| !r.broken().is_empty());
    deployment.teardown(keep).await;
    outcome
}

async fn drive(
    plan: &ChaosPlan,
    deployment: &mut Deployment,
    terminal_ids: &[(String, String)],
) -> anyhow::Result<ChaosReport> {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut issuer =
        IssuerControlClient::connect(format!("http://{}", deployment.addresses.issuer)).await?;
    set_issuer_faults(&mut issuer, plan).await?;

    // The terminals.
    let progress = Arc::new(Progress::default());
    let per_terminal = plan.authorizations / plan.terminals;
    let remainder = plan.authorizations % plan.terminals;
    let started = Instant::now();
    let mut terminals = tokio::task::JoinSet::new();
    for (n, (terminal_id, merchant_id)) in terminal_ids.iter().enumerate() {
        let sales = per_terminal + u32::from((n as u32) < remainder);
        let client = deployment.terminal(terminal_id, merchant_id)?;
        terminals.spawn(terminals::run_terminal(
            client,
            terminal_id.clone(),
            sales,
            plan.behaviour,
            rng.random(),
            progress.clone(),
        ));
    }

    // Settlement windows close every few seconds.
    let stop_settlement = CancellationToken::new();
    let settlement = tokio::spawn(close_windows_every(
        deployment.addresses.of("settlement-batcher"),
        plan.settlement_every,
        stop_settlement.clone(),
    ));

    // The faults, each at a random point of the load.
    let mut faults: Vec<Fault> = SERVICES
        .iter()
        .flat_map(|s| std::iter::repeat_n(Fault::Kill(s), plan.kills_per_service as usize))
        .chain(std::iter::repeat_n(
            Fault::BrokerRestart,
            plan.broker_restarts as usize,
        ))
        .chain(std::iter::once(Fault::Database))
        .collect();
    faults.shuffle(&mut rng);
    let total = u64::from(plan.authorizations);
    let mut done = Vec::new();
    for (k, fault) in faults.iter().enumerate() {
        // Spread over the first 90% of the load, each at a jittered point
        // of its own slot (in thousandths of the load).
        let slot = 900 / faults.len() as u64;
        let at = total * (k as u64 * slot + rng.random_range(slot / 5..slot * 4 / 5)) / 1_000;
        while progress
            .completed
            .load(std::sync::atomic::Ordering::Relaxed)
            < at
            && !terminals_finished(&progress, total)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let down_for = Duration::from_millis(rng.random_range(300..2_000));
        let elapsed = seconds(started.elapsed().as_millis() as u64);
        let description = match fault {
            Fault::Kill(service) => {
                deployment.kill_and_restart(service, down_for).await?;
                format!("{elapsed:>8}  kill -9 {service}, restarted after {down_for:?}")
            }
            Fault::BrokerRestart => {
                deployment.restart_broker(down_for).await?;
                format!("{elapsed:>8}  kill -9 the broker, restarted after {down_for:?}")
            }
            Fault::Database => {
                let terminated = deployment.disturb_database(&plan.database_fault).await?;
                match &plan.database_fault {
                    DatabaseFault::TerminateBackends => format!(
                        "{elapsed:>8}  terminated the deployment's {terminated} database backends"
                    ),
                    DatabaseFault::Restart(command) => {
                        format!("{elapsed:>8}  restarted PostgreSQL ({})", command.join(" "))
                    }
                }
            }
        };
        eprintln!("chaos: {description}");
        done.push(description);
    }

    let mut views: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(result) = terminals.join_next().await {
        for view in result.context("a terminal panicked")? {
            *views.entry(format!("{view:?}")).or_default() += 1;
        }
    }
    let load_ms = started.elapsed().as_millis() as u64;

    // The faults stop; the system settles.
    issuer.set_faults(FaultPlan::default()).await?;
    let quiet = Instant::now();
    let settle_ms = loop {
        let open = audit::unfinished(deployment).await?;
        let unpublished = audit::unpublished(deployment).await?;
        let out_of_step = audit::settlement_out_of_step(deployment).await?;
        if open == 0 && unpublished == 0 && out_of_step == 0 {
            break Some(quiet.elapsed().as_millis() as u64);
        }
        if quiet.elapsed() > plan.settle_within {
            eprintln!(
                "chaos: not settled after {:?}: {open} open, {unpublished} unpublished, {out_of_step} out of step",
                plan.settle_within
            );
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    stop_settlement.cancel();
    let mut settlement_runs = settlement.await.unwrap_or_default();
    // A last window pays whatever was confirmed since the last one.
    close_window(deployment.addresses.of("settlement-batcher"))
        .await
        .context("the last settlement run")?;
    settlement_runs += 1;

    let deadline_ms = plan.timing.issuer_late_window_ms + plan.timing.ack_window_ms;
    let audit = audit::audit(deployment, deadline_ms).await?;
    Ok(ChaosReport {
        seed: plan.seed,
        authorizations: plan.authorizations,
        terminals: plan.terminals,
        load_ms,
        faults: done,
        settle_ms,
        settlement_runs,
        terminal_views: views,
        audit,
        logs: deployment.dir.display().to_string(),
    })
}

fn terminals_finished(progress: &Progress, total: u64) -> bool {
    progress
        .completed
        .load(std::sync::atomic::Ordering::Relaxed)
        >= total
}

/// The issuer's faults for the run: timeouts (never decided, or approved
/// with the answer lost) and late answers.
async fn set_issuer_faults(
    issuer: &mut IssuerControlClient<tonic::transport::Channel>,
    plan: &ChaosPlan,
) -> anyhow::Result<()> {
    let late_ms = plan.timing.issuer_timeout_ms
        + (plan.timing.issuer_late_window_ms - plan.timing.issuer_timeout_ms) / 2;
    let plans = [
        FaultPlan {
            authorizations_only: true,
            no_response: true,
            per_mille: plan.issuer_timeout_per_mille / 2,
            ..FaultPlan::default()
        },
        FaultPlan {
            authorizations_only: true,
            approve_then_hang: true,
            per_mille: plan.issuer_timeout_per_mille / 2,
            add: true,
            ..FaultPlan::default()
        },
        FaultPlan {
            authorizations_only: true,
            latency_ms: u32::try_from(late_ms)?,
            per_mille: plan.issuer_late_per_mille,
            add: true,
            ..FaultPlan::default()
        },
    ];
    for fault in plans {
        issuer.set_faults(fault).await?;
    }
    Ok(())
}

/// Closes every merchant's window every `every` until `stop`; returns how
/// many runs were answered (a run while the batcher is down fails and the
/// next one tries again).
async fn close_windows_every(
    address: std::net::SocketAddr,
    every: Duration,
    stop: CancellationToken,
) -> u64 {
    let mut runs = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return runs,
            () = tokio::time::sleep(every) => {}
        }
        if close_window(address).await.is_ok() {
            runs += 1;
        }
    }
}

async fn close_window(address: std::net::SocketAddr) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect()
        .await?;
    SettlementServiceClient::new(channel)
        .run_settlement(switch_proto::v1::RunSettlementRequest::default())
        .await?;
    Ok(())
}
