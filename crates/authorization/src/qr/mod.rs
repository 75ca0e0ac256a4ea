//! QR payments in the authorization service (issue 15, ADR 29): the shell
//! around `switch_core::qr`. It persists the core's decisions and carries
//! out their effects; it decides nothing itself.
//!
//! - `store`: the journal of QR payments, their audit trail, the owed-call
//!   queue, the query schedule and the notification nonces;
//! - [`QrShell::execute`]: lock, `decide` on the service's clock, write the
//!   decision with its events in one transaction, then make the platform
//!   calls it asks for and feed their answers back the same way;
//! - `link`: the platform's answers in the core's words;
//! - `worker`: due queries, owed cancels/closes/refunds, the terminal
//!   deadline sweep;
//! - `receiver`: the HTTPS endpoint for the platform's signed notifications;
//! - `refunds`: operators' merchant refunds of confirmed payments (ADR 30),
//!   each its own row and queue entry;
//! - `api`: the gRPC QR calls, idempotent by terminal + STAN + local date.

mod api;
mod config;
mod events;
mod link;
mod receiver;
mod refunds;
mod store;
mod wire;
mod worker;

use std::sync::Arc;

use switch_core::qr::{
    PlatformCall, QrCommand, QrDecision, QrEffect, QrPayment, QrRefusal, QrWindows, decide,
};
use switch_core::{InvalidField, RetrySchedule, SharedClock};
use switch_platform::outbox::OutboxRelay;
use tokio::sync::Notify;
use tonic::Status;

pub use api::QrApi;
pub use config::{DEV_KEY, QrConfig};
pub use link::QrLink;
pub use receiver::{NOTIFY_PATH, serve_notifications};
pub use refunds::RefundView;
pub use store::{QrAction, QrJournal, QrTarget};
pub use worker::QrWorker;

#[derive(Debug, thiserror::Error)]
pub enum QrError {
    #[error("{0}")]
    InvalidField(#[from] InvalidField),
    #[error(
        "modified request: {field} differs from the original QR request with the same terminal, STAN and local date"
    )]
    ModifiedReplay { field: &'static str },
    #[error("no {0}")]
    NotFound(String),
    /// The core refused the command; nothing was written.
    #[error("{target} {refusal}")]
    Refused { target: String, refusal: QrRefusal },
    /// A notification whose nonce was accepted before: nothing written.
    #[error("notification replayed: nonce seen before")]
    Replayed,
    /// The core refused a merchant refund or its redrive; nothing was written.
    #[error("{0}")]
    RefundRefused(switch_core::qr::refund::RefundRefusal),
    #[error("the QR journal holds a row that does not parse: {0}")]
    CorruptRow(InvalidField),
    #[error("journal unavailable: {0}")]
    Journal(#[from] sqlx::Error),
}

impl From<QrError> for Status {
    fn from(error: QrError) -> Status {
        match error {
            QrError::InvalidField(field) => Status::invalid_argument(field.to_string()),
            e @ QrError::ModifiedReplay { .. } => Status::already_exists(e.to_string()),
            e @ QrError::NotFound(_) => Status::not_found(e.to_string()),
            e @ QrError::Replayed => Status::already_exists(e.to_string()),
            e @ QrError::Refused { .. } => Status::failed_precondition(e.to_string()),
            QrError::RefundRefused(refusal) => {
                use switch_core::qr::refund::RefundRefusal as R;
                match refusal {
                    R::Invalid(field) => Status::invalid_argument(field.to_string()),
                    e @ R::Conflict { .. } => Status::already_exists(e.to_string()),
                    e @ (R::NotConfirmed { .. } | R::NotDeadLettered { .. }) => {
                        Status::failed_precondition(e.to_string())
                    }
                }
            }
            e @ QrError::CorruptRow(_) => {
                tracing::error!(error = %e, "QR journal invariant broken.");
                Status::internal("internal error; the payment is recorded, query it by STAN")
            }
            QrError::Journal(e) => {
                tracing::error!(error = %e, "QR journal unavailable.");
                Status::unavailable("journal unavailable; retry with the same STAN")
            }
        }
    }
}

/// Everything QR work needs; cloning shares it.
#[derive(Clone)]
pub struct QrShell {
    pub journal: Arc<QrJournal>,
    pub link: QrLink,
    /// Full name of the authorization events topic.
    pub topic: String,
    pub clock: SharedClock,
    pub windows: QrWindows,
    pub schedule: RetrySchedule,
    pub relay: OutboxRelay,
    /// Wakes the worker when an owed call is enqueued.
    pub wake: Arc<Notify>,
    pub config: Arc<QrConfig>,
}

impl QrShell {
    /// Decides and applies `command` for `target`; returns the record as
    /// written and the decision. Platform calls it asks for are not made:
    /// see [`QrShell::carry_out`].
    pub async fn execute(
        &self,
        target: QrTarget<'_>,
        command: QrCommand,
    ) -> Result<(QrPayment, QrDecision), QrError> {
        self.execute_as(target, command, None).await
    }

    /// [`QrShell::execute`] on an operator's behalf: `action` is recorded
    /// in the decision's transaction, and only if the core takes it.
    pub async fn execute_as(
        &self,
        target: QrTarget<'_>,
        command: QrCommand,
        action: Option<store::QrAction<'_>>,
    ) -> Result<(QrPayment, QrDecision), QrError> {
        let locked = self.journal.lock(target).await?;
        self.decide_and_apply(locked, target, command, action).await
    }

    async fn decide_and_apply(
        &self,
        mut locked: store::LockedQr,
        target: QrTarget<'_>,
        command: QrCommand,
        action: Option<store::QrAction<'_>>,
    ) -> Result<(QrPayment, QrDecision), QrError> {
        let now = self.clock.now();
        let name = command.name();
        let decision = decide(&locked.current, command, self.windows, now).map_err(|refusal| {
            QrError::Refused {
                target: target.to_string(),
                refusal,
            }
        })?;
        if let Some(action) = &action {
            locked.record_action(action, now).await?;
        }
        let messages = events::messages(&self.topic, &decision, now);
        let written = locked.apply(&decision, &messages, name, now).await?;
        if decision
            .effects
            .iter()
            .any(|effect| matches!(effect, QrEffect::EnqueueCancel { .. }))
        {
            self.wake.notify_one();
        }
        if !messages.is_empty() {
            self.relay.wake();
        }
        Ok((written, decision))
    }

    /// A verified notification for `order`: its nonce is recorded and the
    /// core decides in one transaction; a replayed nonce, or a command the
    /// core refuses, writes nothing (the nonce included).
    pub async fn notified(
        &self,
        order: &switch_core::qr::OrderId,
        nonce: &str,
        notify_id: &str,
        command: QrCommand,
    ) -> Result<(QrPayment, QrDecision), QrError> {
        let target = QrTarget::Order(order);
        let mut locked = self.journal.lock(target).await?;
        if !locked
            .first_use_of_nonce(nonce, notify_id, self.clock.now())
            .await?
        {
            return Err(QrError::Replayed);
        }
        self.decide_and_apply(locked, target, command, None).await
    }

    /// Makes the query or create-order call `decision` asks for and applies
    /// the platform's answer; returns the record as it then stands. Pay is
    /// the API's (only it holds the payment code). The answers' decisions
    /// call nothing more: only opening and a due query call the platform.
    pub async fn carry_out(
        &self,
        written: QrPayment,
        decision: &QrDecision,
    ) -> Result<QrPayment, QrError> {
        let mut current = written;
        for effect in &decision.effects {
            let command = match effect {
                QrEffect::Call(PlatformCall::Query { .. }) => {
                    QrCommand::QueryAnswered(self.link.query(&current).await)
                }
                QrEffect::Call(PlatformCall::CreateOrder { .. }) => {
                    QrCommand::OrderCreateAnswered(self.link.create_order(&current).await)
                }
                _ => continue,
            };
            current = self
                .execute(QrTarget::Id(current.transaction_id), command)
                .await?
                .0;
        }
        Ok(current)
    }
}

/// The QR work running beside the gRPC API: the worker and the receiver.
pub struct QrTasks {
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl QrTasks {
    /// Stops the worker and the receiver, each between two steps.
    pub async fn stop(self) {
        for stop in self.stop {
            let _ = stop.send(());
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Builds the QR shell as `config` says and starts its worker and (if
/// `notify_listen` is set) its notification receiver.
pub async fn start(
    config: &QrConfig,
    pool: sqlx::PgPool,
    topic: String,
    relay: OutboxRelay,
    clock: SharedClock,
) -> Result<(QrApi, QrTasks), switch_platform::service::ServeError> {
    use switch_platform::service::ServeError;
    let start_error = |reason: String| ServeError::Start {
        what: "authorization.qr",
        reason,
    };
    let ca_pem = match &config.ca_path {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            start_error(format!("authorization.qr.ca_path {}: {e}", path.display()))
        })?),
        None => None,
    };
    let client = qr_platform::QrClient::new(
        &qr_platform::ClientConfig {
            base_url: config.platform_url.clone(),
            ca_pem,
            key: config.key.expose().as_bytes().to_vec(),
            timeout: std::time::Duration::from_millis(config.call_timeout_ms),
            connect_timeout: std::time::Duration::from_millis(config.connect_timeout_ms),
            tolerance_s: config.tolerance_s,
        },
        clock.clone(),
    )
    .map_err(|e| start_error(e.to_string()))?;
    let shell = QrShell {
        journal: Arc::new(QrJournal::new(pool)),
        link: QrLink { client },
        topic,
        clock,
        windows: config.windows(),
        schedule: config.schedule(),
        relay,
        wake: Arc::new(Notify::new()),
        config: Arc::new(config.clone()),
    };
    let mut tasks = QrTasks {
        stop: Vec::new(),
        tasks: Vec::new(),
    };
    if let Some(address) = config.notify_listen {
        let acceptor = receiver::acceptor(&config.notify_cert_path, &config.notify_key_path)?;
        receiver::watch(
            &acceptor,
            std::time::Duration::from_millis(config.notify_reload_interval_ms),
        );
        let listener = switch_platform::service::bind(address).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tasks.stop.push(stop);
        tasks.tasks.push(tokio::spawn(serve_notifications(
            shell.clone(),
            acceptor,
            listener,
            async {
                let _ = stopped.await;
            },
        )));
    }
    let worker = QrWorker {
        shell: shell.clone(),
        batch_size: config.batch_size,
        poll_interval: std::time::Duration::from_millis(config.poll_interval_ms),
        lease_ms: i64::try_from(config.call_timeout_ms.saturating_mul(2) + 1_000)
            .unwrap_or(i64::MAX),
        nonce_prune_interval: std::time::Duration::from_millis(config.nonce_prune_interval_ms),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tasks.stop.push(stop);
    tasks.tasks.push(tokio::spawn(worker.run(async {
        let _ = stopped.await;
    })));
    Ok((QrApi { shell }, tasks))
}
