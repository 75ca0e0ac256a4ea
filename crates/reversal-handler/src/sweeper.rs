//! The sweeper: every `sweep_interval_ms` it claims the approvals that are
//! due on its clock, has [`switch_core::watch::decide`] decide each under
//! its row lock (an orphan under its merchant's policy), and then, outside
//! the row locks, asks authorization to carry out each decision the sweep
//! says to ask about. Authorization's answer (accepted, refused, failed) is
//! decided the same way: it closes the watch, or schedules the question
//! again with backoff, for as long as it takes.

use std::sync::Arc;
use std::time::Duration;

use switch_core::{
    OrphanDecision, SharedClock, WatchCommand, WatchEffect, WatchOutcome, WatchRetry,
};
use switch_platform::service::{GrpcClient, ServeError, TracedChannel};
use switch_platform::telemetry::set_parent_from_traceparent;
use switch_proto::v1::authorization_service_client::AuthorizationServiceClient;
use switch_proto::v1::reverse_request::Target;
use switch_proto::v1::{self as pb, ConfirmRequest, ReverseRequest};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::Instrument;
use uuid::Uuid;

use crate::config::ReversalHandlerConfig;
use crate::metrics::Metrics;
use crate::outcome::{decision_columns, of_record};
use crate::store::{self, CLAIM_LIMIT};

/// How long one Reverse or Confirm call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a claimed approval stays with the sweeper that claimed it: the
/// call timeout plus a margin. A sweeper that dies mid-call delays the next
/// attempt by at most this much.
pub const LEASE: Duration = Duration::from_secs(5);

type Client = AuthorizationServiceClient<TracedChannel>;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Due approvals claimed (and asked about).
    pub claimed: usize,
    /// Approvals closed by authorization's answer.
    pub closed: usize,
    /// Calls that failed and are scheduled again.
    pub failed: usize,
}

#[derive(Clone)]
pub struct Sweeper {
    inner: Arc<Inner>,
}

struct Inner {
    pool: sqlx::PgPool,
    config: ReversalHandlerConfig,
    client: Client,
    metrics: Metrics,
    clock: SharedClock,
}

/// One question to authorization, as a sweep's `Ask` effect names it.
struct Question {
    transaction_id: Uuid,
    merchant_id: String,
    decision: OrphanDecision,
    attempts: u32,
    traceparent: String,
}

enum Answer {
    Closed,
    Failed,
}

impl Sweeper {
    /// A sweeper asking the authorization service at the configured
    /// endpoint, with `clock` saying what is due; the channel connects
    /// lazily, so the sweeper starts (and keeps deciding) while
    /// authorization is down.
    pub fn new(
        pool: sqlx::PgPool,
        config: ReversalHandlerConfig,
        internal_tls: &switch_platform::internal_tls::InternalTlsConfig,
        clock: SharedClock,
    ) -> Result<Self, ServeError> {
        let channel = GrpcClient::new(config.authorization_endpoint.clone())
            .internal(crate::SERVICE_NAME, internal_tls)
            .connect_timeout(CALL_TIMEOUT)
            .traced()?;
        Ok(Sweeper {
            inner: Arc::new(Inner {
                pool,
                config,
                client: AuthorizationServiceClient::new(channel),
                metrics: Metrics::new(),
                clock,
            }),
        })
    }

    /// Sweeps every `sweep_interval_ms` until `shutdown` is cancelled; a
    /// sweep that fills its claim limit is followed at once by another.
    /// Cancellation abandons calls in flight: their leases expire and the
    /// next sweeper asks again.
    pub async fn run(self, shutdown: CancellationToken) {
        let interval = Duration::from_millis(self.inner.config.sweep_interval_ms);
        // The gauges are a count query: once a second, not every sweep.
        let mut overdue_gauges = switch_platform::every::Every::new(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
            if overdue_gauges.due() {
                self.record_overdue().await;
            }
            loop {
                let swept = tokio::select! {
                    () = shutdown.cancelled() => return,
                    swept = self.sweep_once() => swept,
                };
                match swept {
                    Ok(report) if report.claimed as i64 >= CLAIM_LIMIT => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "Sweep failed; will retry.");
                        break;
                    }
                }
            }
        }
    }

    /// Reads how many approvals are past their deadline unresolved into
    /// the gauges; a failed read leaves them as they were.
    async fn record_overdue(&self) {
        let inner = &self.inner;
        let now = inner.clock.now();
        match store::overdue(&inner.pool, now).await {
            Ok((count, oldest)) => {
                let oldest_ms = oldest.map_or(0, |deadline| {
                    u64::try_from((now - deadline).whole_milliseconds()).unwrap_or(0)
                });
                inner.metrics.overdue(count, oldest_ms);
            }
            Err(error) => tracing::warn!(%error, "Overdue approvals could not be counted."),
        }
    }

    /// Claims what is due now, decides it, asks authorization about every
    /// claimed approval concurrently and records the answers.
    pub async fn sweep_once(&self) -> Result<SweepReport, sqlx::Error> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let swept = store::take_due(&inner.pool, &inner.config, CLAIM_LIMIT, LEASE, now).await?;
        let mut report = SweepReport {
            claimed: swept.len(),
            ..SweepReport::default()
        };
        let mut calls = JoinSet::new();
        for watch in swept {
            for effect in &watch.effects {
                inner
                    .metrics
                    .observe(watch.transaction_id, &watch.merchant_id, effect);
                if let WatchEffect::Ask { decision, attempts } = *effect {
                    let question = Question {
                        transaction_id: watch.transaction_id,
                        merchant_id: watch.merchant_id.clone(),
                        decision,
                        attempts,
                        traceparent: watch.traceparent.clone(),
                    };
                    let inner = Arc::clone(inner);
                    calls.spawn(async move { inner.carry_out(question).await });
                }
            }
        }
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok(Ok(Answer::Closed)) => report.closed += 1,
                Ok(Ok(Answer::Failed)) => report.failed += 1,
                Ok(Err(error)) => {
                    // The lease runs out and the next sweep asks again.
                    tracing::warn!(%error, "Answer could not be recorded.");
                    report.failed += 1;
                }
                Err(error) => {
                    tracing::error!(%error, "Request task failed.");
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }
}

impl Inner {
    /// Asks authorization to carry out one decision and has its answer
    /// decided and recorded.
    async fn carry_out(&self, question: Question) -> Result<Answer, sqlx::Error> {
        let (decision, reason) = decision_columns(question.decision);
        let span = tracing::info_span!(
            "reversal_handler.request",
            transaction_id = %question.transaction_id,
            decision,
            reason
        );
        if !question.traceparent.is_empty() {
            set_parent_from_traceparent(&span, &question.traceparent, "");
        }
        async {
            let transaction_id = question.transaction_id;
            let (command, answer) = match self.ask(&question).await {
                Ok(Some(outcome)) => (WatchCommand::CallSucceeded { outcome }, Answer::Closed),
                Ok(None) => {
                    tracing::warn!(
                        %transaction_id,
                        "Authorization answered with a state our request cannot leave; asking again."
                    );
                    (self.failure(), Answer::Failed)
                }
                Err(status)
                    if matches!(status.code(), Code::FailedPrecondition | Code::NotFound) =>
                {
                    tracing::info!(
                        %transaction_id,
                        code = ?status.code(),
                        message = status.message(),
                        "Authorization refused; another path decided the approval."
                    );
                    (WatchCommand::CallRefused, Answer::Closed)
                }
                Err(status) => {
                    tracing::warn!(
                        %transaction_id,
                        attempts = question.attempts + 1,
                        code = ?status.code(),
                        message = status.message(),
                        "Authorization request failed; asking again later."
                    );
                    (self.failure(), Answer::Failed)
                }
            };
            let decided =
                store::apply_now(&self.pool, transaction_id, command, self.clock.now()).await?;
            for effect in decided.iter().flat_map(|d| &d.effects) {
                self.metrics
                    .observe(transaction_id, &question.merchant_id, effect);
            }
            Ok(answer)
        }
        .instrument(span)
        .await
    }

    /// A failed call, with the configured backoff and a fresh jitter.
    fn failure(&self) -> WatchCommand {
        WatchCommand::CallFailed {
            retry: WatchRetry {
                initial_delay_ms: self.config.retry_initial_delay_ms,
                max_delay_ms: self.config.retry_max_delay_ms,
            },
            jitter: rand::random::<u64>(),
        }
    }

    /// The outcome authorization's answer shows; `None` for an answer in a
    /// state the request cannot produce.
    async fn ask(&self, due: &Question) -> Result<Option<WatchOutcome>, Status> {
        let mut client = self.client.clone();
        let transaction_id = due.transaction_id.to_string();
        let call = async {
            match due.decision {
                OrphanDecision::Reverse(reason) => {
                    let mut request = tonic::Request::new(ReverseRequest {
                        target: Some(Target::TransactionId(transaction_id)),
                        reason: pb::ReversalReason::from(reason).into(),
                    });
                    request.set_timeout(CALL_TIMEOUT);
                    let response = client.reverse(request).await?.into_inner();
                    match response.authorization {
                        Some(record) if response.original_found => {
                            Ok(of_record(&record, due.decision))
                        }
                        _ => Err(Status::not_found(
                            "authorization does not know the approval",
                        )),
                    }
                }
                OrphanDecision::Confirm(evidence) => {
                    let mut request = tonic::Request::new(ConfirmRequest {
                        transaction_id,
                        evidence: pb::Evidence::from(evidence).into(),
                    });
                    request.set_timeout(CALL_TIMEOUT);
                    let record = client.confirm(request).await?.into_inner();
                    Ok(of_record(&record, due.decision))
                }
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in time")))
    }
}
