//! The recovery sweep (issue 12, hole 1): an intent is journaled before the
//! issuer is asked, so an authorization whose process died during the
//! issuer call — or whose decision could not be written — stays
//! `sent_to_issuer` with no event, and nothing else would ever look at it.
//! If the issuer approved, the shopper stays charged.
//!
//! The sweep finds such intents once their call's deadline has passed (no
//! process can still be waiting for the answer) and hands each to
//! `switch_core::lifecycle::Command::RecoverAbandonedCall`, which records
//! it as timed out under the row's lock; the announcement starts the same
//! timeout reversal as any other silent issuer. Every replica sweeps: the
//! lock and the decision make a second sweeper's attempt a no-op.

use std::time::Duration;

use opentelemetry::metrics::Counter;
use switch_core::lifecycle::{Command, IssuerWindows};
use time::OffsetDateTime;

use crate::lifecycle::Lifecycle;
use crate::store::Target;

pub struct RecoverySweep {
    pub lifecycle: Lifecycle,
    pub windows: IssuerWindows,
    pub interval: Duration,
    pub batch_size: i64,
}

impl RecoverySweep {
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let recovered = opentelemetry::global::meter(crate::SERVICE_NAME)
            .u64_counter("authorization.recovery.abandoned_calls")
            .with_description(
                "Intents found still waiting for the issuer past their call's deadline",
            )
            .build();
        tokio::pin!(shutdown);
        // The first round reads the whole journal (whatever a crash left,
        // however long ago); later rounds only what became due since,
        // with a margin for intents committed out of creation order.
        let mut swept_until: Option<OffsetDateTime> = None;
        loop {
            if let Some(until) = self.sweep(swept_until, &recovered).await {
                swept_until = Some(until - self.interval * 2);
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// One round; returns the cutoff it swept up to, `None` if the journal
    /// could not be read (the next round starts from the same place).
    async fn sweep(
        &self,
        from: Option<OffsetDateTime>,
        recovered: &Counter<u64>,
    ) -> Option<OffsetDateTime> {
        let before = self.windows.abandoned_before(self.lifecycle.clock.now());
        // Every intent a round handles leaves `sent_to_issuer` (or was
        // decided meanwhile), so the next page is simply the next query.
        loop {
            let found = match self
                .lifecycle
                .journal
                .calls_in_flight(from, before, self.batch_size)
                .await
            {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(%error, "Recovery sweep: journal unavailable.");
                    return None;
                }
            };
            let full = found.len() as i64 == self.batch_size;
            for (transaction_id, created_at) in found {
                let command = Command::RecoverAbandonedCall {
                    windows: self.windows,
                };
                match self
                    .lifecycle
                    .execute_decision(Target::Id(transaction_id), command)
                    .await
                {
                    Ok((record, decision)) if !decision.is_noop() => {
                        recovered.add(1, &[]);
                        tracing::warn!(
                            %transaction_id,
                            rrn = %record.rrn,
                            terminal_id = %record.key.terminal_id,
                            stan = %record.key.stan,
                            %created_at,
                            "Abandoned issuer call recovered: recorded as timed out, to be reversed."
                        );
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%transaction_id, %error, "Recovery sweep: not recovered; next round retries.");
                        return None;
                    }
                }
            }
            if !full {
                return Some(before);
            }
        }
    }
}
