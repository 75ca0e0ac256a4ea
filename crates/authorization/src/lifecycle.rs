//! Carrying out lifecycle commands: lock the authorization, let
//! `switch_core::lifecycle::decide` decide under the lock on the service's
//! clock, encode the decision's announcements, have the journal apply it
//! all in one transaction, and wake whoever has new work (the outbox relay,
//! the reversal worker). The gRPC API, the reversal worker and the
//! late-answer watcher all go through here, so no caller decides anything.

use std::sync::Arc;

use switch_core::SharedClock;
use switch_core::lifecycle::{Command, Decision, decide};
use switch_platform::outbox::OutboxRelay;
use switch_platform::telemetry::current_trace_context;
use tokio::sync::Notify;

use crate::error::AuthorizationError;
use crate::events::Announcer;
use crate::model::Authorization;
use crate::store::{ApplyContext, Journal, Target};

#[derive(Clone)]
pub struct Lifecycle {
    pub journal: Arc<Journal>,
    pub announcer: Announcer,
    pub clock: SharedClock,
    /// Name of the issuer queue reversals go to.
    pub issuer_name: String,
    pub relay: OutboxRelay,
    /// Wakes the reversal worker when a reversal is enqueued.
    pub reversals: Arc<Notify>,
}

impl Lifecycle {
    /// Decides and applies `command` for `target`; returns the record as
    /// written (unchanged for an idempotent repeat).
    pub async fn execute(
        &self,
        target: Target<'_>,
        command: Command,
    ) -> Result<Authorization, AuthorizationError> {
        Ok(self.execute_decision(target, command).await?.0)
    }

    /// As [`Lifecycle::execute`] for a command on the hot path (a
    /// terminal's acknowledgement, after every sale): decided on the record
    /// read without a lock and group-committed with other decisions, so
    /// acknowledgements share WAL flushes instead of paying one each. The
    /// write applies only if the record is still in the state decided on;
    /// otherwise the command is decided again on what it is now. A
    /// decision with other effects than one announcement (a conflict that
    /// enqueues a reversal), or a record contended past a few attempts,
    /// takes the locked path, which writes every effect.
    pub async fn execute_grouped(
        &self,
        target: Target<'_>,
        command: Command,
    ) -> Result<Authorization, AuthorizationError> {
        const ATTEMPTS: usize = 3;
        for _ in 0..ATTEMPTS {
            let current = self
                .journal
                .find(target)
                .await?
                .ok_or_else(|| AuthorizationError::NotFound(target.to_string()))?;
            let now = self.clock.now();
            let decision = decide(&current, command.clone(), now).map_err(|refusal| {
                AuthorizationError::Refused {
                    target: target.to_string(),
                    refusal,
                }
            })?;
            if decision.is_noop() {
                return Ok(current);
            }
            if !decision.is_announcement_only() || decision.transition.is_none() {
                break;
            }
            let announcement = self.announcer.messages(&decision, now).pop();
            let announced = announcement.is_some();
            if let Some(written) = self
                .journal
                .record_unlocked(decision, announcement, now)
                .await?
            {
                if announced {
                    self.relay.wake();
                }
                return Ok(written);
            }
        }
        self.execute(target, command).await
    }

    /// As [`Lifecycle::execute`], with the decision that was applied.
    pub async fn execute_decision(
        &self,
        target: Target<'_>,
        command: Command,
    ) -> Result<(Authorization, Decision), AuthorizationError> {
        self.execute_as(target, command, None).await
    }

    /// As [`Lifecycle::execute_decision`], recording the operator's action
    /// (who, why) in the decision's transaction.
    pub async fn execute_as(
        &self,
        target: Target<'_>,
        command: Command,
        operator_action: Option<crate::store::OperatorAction<'_>>,
    ) -> Result<(Authorization, Decision), AuthorizationError> {
        let locked = self.journal.lock(target).await?;
        let now = self.clock.now();
        let reversal_answer = match &command {
            Command::ReversalAnswered { answer, .. } => Some(answer.clone()),
            _ => None,
        };
        let decision = decide(&locked.current, command, now).map_err(|refusal| {
            AuthorizationError::Refused {
                target: target.to_string(),
                refusal,
            }
        })?;
        let announcements = self.announcer.messages(&decision, now);
        let (traceparent, _) = current_trace_context();
        let written = locked
            .apply(
                &decision,
                &announcements,
                &ApplyContext {
                    now,
                    issuer: &self.issuer_name,
                    traceparent: &traceparent,
                    operator_action,
                    reversal_answer: reversal_answer.as_ref(),
                },
            )
            .await?;
        if decision.enqueues_reversal() {
            self.reversals.notify_one();
        }
        if !announcements.is_empty() {
            self.relay.wake();
        }
        Ok((written, decision))
    }
}
