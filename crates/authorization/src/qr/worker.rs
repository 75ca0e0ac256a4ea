//! The QR worker: on the service's clock it sweeps terminal deadlines
//! (`TerminalGaveUp`), runs due queries (`QueryDue`, then the query and
//! its answer) and makes the owed cancels, closes and refunds
//! (`CancelAnswered`, with the core's backoff and dead letter), makes the
//! merchant refunds due (`refund::answered`, the same backoff and dead
//! letter) and prunes notification nonces too old to matter. Every step
//! is a decision under the payment's lock, so two workers (two instances
//! of the service) cannot both act on one step: the loser's command is
//! refused or a no-op.

use std::time::Duration;

use futures::StreamExt;
use switch_core::qr::refund::RefundAttempt;
use switch_core::qr::{CancelAttempt, QrCommand, QrRefusal};
use switch_platform::every::Every;

use super::store::QrTarget;
use super::{QrError, QrShell};

/// Queries or owed calls made at once.
const CONCURRENCY: usize = 32;

pub struct QrWorker {
    pub shell: QrShell,
    pub batch_size: i64,
    pub poll_interval: Duration,
    /// An owed call's claim: longer than its call can take.
    pub lease_ms: i64,
    /// Between two prunings of old notification nonces.
    pub nonce_prune_interval: Duration,
}

impl QrWorker {
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let dead_lettered = opentelemetry::global::meter(crate::SERVICE_NAME)
            .i64_gauge("authorization.qr.dead_lettered")
            .with_description(
                "QR platform calls given up on and not redriven, by kind (cancel, close, refund, merchant_refund)",
            )
            .build();
        tokio::pin!(shutdown);
        // A count query: once a second, not every round (a wake-up per
        // owed call could run rounds back to back).
        let mut gauge = Every::new(Duration::from_secs(1));
        // A DELETE: not on every round either; the first one prunes.
        let mut prune = Every::new(self.nonce_prune_interval);
        loop {
            if let Err(error) = self.round().await {
                tracing::warn!(%error, "QR worker round failed; it is repeated.");
            }
            if prune.due() {
                let cutoff = self.shell.clock.now() - self.shell.config.nonce_retention();
                if let Err(error) = self
                    .shell
                    .journal
                    .prune_nonces(cutoff, self.batch_size)
                    .await
                {
                    tracing::warn!(%error, "Old notification nonces not pruned; tried again later.");
                }
            }
            if gauge.due() {
                match self.shell.journal.dead_lettered_calls().await {
                    Ok(counts) => {
                        for (kind, count) in counts {
                            dead_lettered
                                .record(count, &[opentelemetry::KeyValue::new("kind", kind)]);
                        }
                    }
                    Err(error) => tracing::debug!(%error, "QR dead-letter gauge not read."),
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.poll_interval) => {}
                () = self.shell.wake.notified() => {}
            }
        }
    }

    /// One pass over everything due now.
    pub async fn round(&self) -> Result<(), QrError> {
        let shell = &self.shell;
        let now = shell.clock.now();
        for id in shell
            .journal
            .past_terminal_deadline(now, self.batch_size)
            .await?
        {
            quietly(
                shell
                    .execute(QrTarget::Id(id), QrCommand::TerminalGaveUp)
                    .await,
            );
        }
        let due = shell.journal.due_queries(now, self.batch_size).await?;
        futures::stream::iter(due)
            .for_each_concurrent(CONCURRENCY, |id| async move {
                match shell.execute(QrTarget::Id(id), QrCommand::QueryDue).await {
                    Ok((written, decision)) => {
                        quietly(shell.carry_out(written, &decision).await);
                    }
                    Err(error) => quietly::<()>(Err(error)),
                }
            })
            .await;
        let lease_ms = self.lease_ms;
        let claimed = shell
            .journal
            .claim_calls(now, self.batch_size, lease_ms)
            .await?;
        futures::stream::iter(claimed)
            .for_each_concurrent(CONCURRENCY, |call| async move {
                let target = QrTarget::Id(call.transaction_id);
                let payment = match shell.journal.find(target).await {
                    Ok(Some(payment)) => payment,
                    Ok(None) => return,
                    Err(error) => return quietly::<()>(Err(error)),
                };
                let answer = shell.link.owed(&payment, call.kind, &call.request_id).await;
                let command = QrCommand::CancelAnswered {
                    request_id: call.request_id,
                    answer,
                    attempt: CancelAttempt {
                        attempts: call.attempts,
                        jitter: rand::random(),
                    },
                    schedule: shell.schedule,
                };
                quietly(shell.execute(target, command).await);
            })
            .await;
        let refunds = shell.claim_refunds(now, self.batch_size, lease_ms).await?;
        futures::stream::iter(refunds)
            .for_each_concurrent(CONCURRENCY, |claimed| async move {
                let view = match shell.find_refund(&claimed.refund_id).await {
                    Ok(Some(view)) => view,
                    Ok(None) => return,
                    Err(error) => return quietly::<()>(Err(error)),
                };
                let answer = shell
                    .link
                    .merchant_refund(&view.payment, &view.refund)
                    .await;
                let attempt = RefundAttempt {
                    attempts: claimed.attempts,
                    jitter: rand::random(),
                };
                quietly(
                    shell
                        .refund_answered(&claimed.refund_id, answer, attempt)
                        .await,
                );
            })
            .await;
        Ok(())
    }
}

/// A step another worker took first is refused or a no-op: not an error.
fn quietly<T>(result: Result<T, QrError>) {
    match result {
        Ok(_) => {}
        Err(QrError::Refused {
            refusal: QrRefusal::QueryNotDue { .. } | QrRefusal::TerminalStillWaiting { .. },
            ..
        }) => {}
        Err(QrError::Refused { target, refusal }) => {
            tracing::warn!(%target, kind = refusal.kind(), %refusal, "QR step refused.");
        }
        Err(error) => tracing::warn!(%error, "QR step failed; it is repeated."),
    }
}
