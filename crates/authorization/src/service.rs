//! The `AuthorizationService` gRPC API: the command flow of an
//! authorization, with the journal and the issuer link as its two effects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};
use switch_core::lifecycle::{Command, IssuerVerdict, IssuerWindows, decide};
use switch_core::{
    Evidence, PanKeyring, ReplayVerdict, SaleDigest, TerminalId, TransactionId, compare_retry,
};
use switch_platform::telemetry::server_span;
use switch_proto::v1::{
    self as pb, AuthorizationRecord, authorization_service_server::AuthorizationService,
    get_authorization_request::By, reverse_request::Target,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::AuthorizationError;
use crate::issuer::{GrpcIssuerLink, IssuerOutcome, LateAnswer};
use crate::lifecycle::Lifecycle;
use crate::model::{Authorization, RequestKey, SaleCommand};
use crate::store::{self, Begin};
use crate::wire;

/// Requests being authorized by this process, by key. A retry that arrives
/// while its original is in flight waits for it here instead of racing it
/// to the journal's unique key.
type InFlight = Arc<Mutex<HashMap<RequestKey, watch::Receiver<()>>>>;

/// The tasks awaiting late issuer answers. A graceful shutdown waits for
/// them (each ends by its call's deadline), so a rolling restart does not
/// lose the record of a late answer; only a crash does.
#[derive(Clone, Default)]
pub struct LateAnswers(Arc<Mutex<tokio::task::JoinSet<()>>>);

impl LateAnswers {
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Reap the finished ones, so the set holds only what is awaited.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Waits for every late answer still awaited (or its deadline).
    pub async fn drain(&self) {
        let mut tasks = std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if !tasks.is_empty() {
            tracing::info!(
                awaited = tasks.len(),
                "Waiting for late issuer answers before stopping."
            );
        }
        while tasks.join_next().await.is_some() {}
    }
}

pub struct AuthorizationApi {
    lifecycle: Lifecycle,
    issuer: GrpcIssuerLink,
    /// The fingerprint keys (ADR 33): new sales under the current one,
    /// retries under their original's.
    keyring: PanKeyring,
    windows: IssuerWindows,
    late_answers: LateAnswers,
    in_flight: InFlight,
    decisions: Counter<u64>,
    issuer_latency: Histogram<u64>,
    /// QR payments (ADR 29); `None` unless `authorization.qr` is configured.
    qr: Option<crate::qr::QrApi>,
}

/// Removes the in-flight entry and wakes the waiters however the leader's
/// attempt ends, including by error or cancellation.
struct InFlightGuard {
    in_flight: InFlight,
    key: RequestKey,
    _done: watch::Sender<()>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.in_flight.lock() {
            map.remove(&self.key);
        }
    }
}

enum Role {
    Leader(InFlightGuard),
    Follower(watch::Receiver<()>),
}

impl AuthorizationApi {
    pub fn new(
        lifecycle: Lifecycle,
        issuer: GrpcIssuerLink,
        keyring: PanKeyring,
        windows: IssuerWindows,
        late_answers: LateAnswers,
    ) -> Self {
        let meter = opentelemetry::global::meter(crate::SERVICE_NAME);
        AuthorizationApi {
            lifecycle,
            issuer,
            keyring,
            windows,
            late_answers,
            in_flight: Arc::default(),
            qr: None,
            decisions: meter
                .u64_counter("authorization.decisions")
                .with_description("Authorizations decided, by outcome")
                .build(),
            issuer_latency: meter
                .u64_histogram("authorization.issuer.latency")
                .with_unit("ms")
                .with_description("Time from sending to the issuer to its answer or timeout")
                .build(),
        }
    }

    /// Offers the QR calls.
    pub fn with_qr(mut self, qr: Option<crate::qr::QrApi>) -> Self {
        self.qr = qr;
        self
    }

    fn qr(&self) -> Result<&crate::qr::QrApi, Status> {
        self.qr.as_ref().ok_or_else(|| {
            Status::unimplemented("QR payments are not configured (authorization.qr)")
        })
    }

    fn role(&self, key: &RequestKey) -> Role {
        let Ok(mut map) = self.in_flight.lock() else {
            // A poisoned map only loses coalescing; the journal's unique key
            // still guarantees one authorization.
            let (done, _) = watch::channel(());
            return Role::Leader(InFlightGuard {
                in_flight: Arc::default(),
                key: key.clone(),
                _done: done,
            });
        };
        if let Some(waiting) = map.get(key) {
            return Role::Follower(waiting.clone());
        }
        let (done, waiting) = watch::channel(());
        map.insert(key.clone(), waiting);
        Role::Leader(InFlightGuard {
            in_flight: self.in_flight.clone(),
            key: key.clone(),
            _done: done,
        })
    }

    /// Authorizes once per key, however many times and however concurrently
    /// the terminal asks. Returns the record and whether it is a replay.
    async fn authorize(
        &self,
        command: SaleCommand,
    ) -> Result<(Authorization, bool), AuthorizationError> {
        let digest = SaleDigest {
            pan_fingerprint: self.keyring.fingerprint(&command.pan),
            amount: command.amount,
        };
        if let Some(stan) = &command.last_completed_stan {
            self.record_last_completed(&command, stan).await;
        }
        loop {
            match self.role(&command.key) {
                Role::Follower(mut waiting) => {
                    // Resolves when the leader finishes, however it finishes.
                    let _ = waiting.changed().await;
                    if let Some(original) = self.lifecycle.journal.find_by_key(&command.key).await?
                    {
                        return self.replay(original, &command).await;
                    }
                    // The leader failed before journaling; try ourselves.
                }
                Role::Leader(guard) => {
                    let result = match self.begin(&command, &digest).await? {
                        Begin::Existing(original) => self.replay(original, &command).await,
                        Begin::Started(started) => self
                            .ask_issuer(started, &command)
                            .await
                            .map(|decided| (decided, false)),
                    };
                    drop(guard);
                    return result;
                }
            }
        }
    }

    /// A request naming the terminal's last completed STAN is evidence for
    /// that earlier transaction. Best effort: evidence that cannot be
    /// applied (unknown STAN, journal busy) never fails the new sale; the
    /// deadline and the batch upload remain.
    async fn record_last_completed(&self, command: &SaleCommand, stan: &switch_core::Stan) {
        let earlier = RequestKey {
            terminal_id: command.key.terminal_id.clone(),
            stan: stan.clone(),
            local_date: command.key.local_date,
        };
        if earlier == command.key {
            return;
        }
        let acknowledge = Command::Acknowledge {
            evidence: Evidence::LastCompletedStan,
        };
        match self
            .lifecycle
            .execute(store::Target::Key(&earlier), acknowledge)
            .await
        {
            Ok(_) => {}
            Err(error) => tracing::debug!(
                terminal_id = %earlier.terminal_id,
                stan = %earlier.stan,
                %error,
                "Last completed STAN not applied."
            ),
        }
    }

    /// Answers a retry with the original's answer, once it has one.
    async fn replay(
        &self,
        original: Authorization,
        retry: &SaleCommand,
    ) -> Result<(Authorization, bool), AuthorizationError> {
        let verdict = compare_retry(&self.keyring, &original.digest(), &retry.pan, retry.amount)
            .map_err(|retired| {
                tracing::warn!(
                    terminal_id = %original.key.terminal_id,
                    stan = %original.key.stan,
                    key_id = %retired.0,
                    "Retry of a sale fingerprinted with a retired key refused."
                );
                AuthorizationError::FailedPrecondition(retired.to_string())
            })?;
        if let ReplayVerdict::Modified { field } = verdict {
            tracing::warn!(
                terminal_id = %original.key.terminal_id,
                stan = %original.key.stan,
                field,
                "Modified replay rejected."
            );
            return Err(AuthorizationError::ModifiedReplay { field });
        }
        // The original may be in flight in another replica: wait for its
        // decision, bounded by the issuer timeout plus a margin.
        let deadline = Instant::now() + self.windows.call_timeout + Duration::from_secs(2);
        let mut current = original;
        while current.state.is_in_flight() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(fresh) = self
                .lifecycle
                .journal
                .find_by_id(current.transaction_id)
                .await?
            {
                current = fresh;
            }
        }
        Ok((current, true))
    }

    /// Journals the intent before the issuer is asked: an approval that a
    /// crash interrupts can still be found and reversed.
    async fn begin(
        &self,
        command: &SaleCommand,
        digest: &SaleDigest,
    ) -> Result<Begin, AuthorizationError> {
        let journal = &self.lifecycle.journal;
        let now = self.lifecycle.clock.now();
        let rrn = journal.next_rrn(now.date()).await?;
        let intent = command.intent(rrn, digest.pan_fingerprint.clone());
        journal.begin(intent, now).await
    }

    async fn ask_issuer(
        &self,
        started: Authorization,
        command: &SaleCommand,
    ) -> Result<Authorization, AuthorizationError> {
        let request = pb::IssuerAuthorizeRequest {
            rrn: started.rrn.to_string(),
            stan: started.key.stan.to_string(),
            terminal_id: started.key.terminal_id.to_string(),
            merchant_id: started.merchant_id.to_string(),
            pan: command.pan.expose().to_owned(),
            expiry: command.expiry.expose().to_owned(),
            amount: Some(wire::pb_money(&command.amount)),
        };
        // The call's deadline is the one the lifecycle's rules assume.
        let deadline = self.windows.call_deadline(&started) - self.lifecycle.clock.now();
        let deadline = Duration::try_from(deadline).unwrap_or(self.windows.call_timeout);
        let sent = Instant::now();
        let outcome = self.issuer.authorize(request, deadline).await;
        let latency_ms = u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX);
        let verdict = match outcome {
            IssuerOutcome::Answered(answer) => {
                IssuerVerdict::read(&answer.response_code, &answer.approval_code).unwrap_or_else(
                    |error| {
                        // An answer we cannot read leaves whether money moved
                        // unknown, exactly like silence.
                        tracing::error!(rrn = %started.rrn, %error, "Unusable issuer answer.");
                        IssuerVerdict::Unknown
                    },
                )
            }
            IssuerOutcome::NoAnswer { reason, late } => {
                tracing::warn!(rrn = %started.rrn, %reason, "No usable issuer answer.");
                if let Some(late) = late {
                    self.await_late_answer(started.transaction_id, late);
                }
                IssuerVerdict::Unknown
            }
        };
        let now = self.lifecycle.clock.now();
        let command = Command::IssuerDecided(verdict);
        let decision = decide(&started, command.clone(), now).map_err(|refusal| {
            AuthorizationError::Refused {
                target: started.transaction_id.to_string(),
                refusal,
            }
        })?;
        let decided = if decision.is_announcement_only() {
            // The common case: group-committed with its announcement.
            let announcement = self.lifecycle.announcer.messages(&decision, now).pop();
            let decided = self
                .lifecycle
                .journal
                .record_decision(
                    decision,
                    announcement,
                    i32::try_from(latency_ms).unwrap_or(i32::MAX),
                    now,
                )
                .await?;
            self.lifecycle.relay.wake();
            decided
        } else {
            // An approval the switch does not accept also enqueues its
            // reversal: the general path, which writes every effect.
            self.lifecycle
                .execute(store::Target::Id(started.transaction_id), command)
                .await?
        };
        let outcome = KeyValue::new("outcome", decided.state.as_str());
        self.decisions.add(1, std::slice::from_ref(&outcome));
        self.issuer_latency.record(latency_ms, &[outcome]);
        tracing::info!(
            transaction_id = %decided.transaction_id,
            terminal_id = %decided.key.terminal_id,
            stan = %decided.key.stan,
            rrn = %decided.rrn,
            masked_pan = %decided.masked_pan,
            amount = %decided.amount,
            state = decided.state.as_str(),
            latency_ms,
            "Authorization decided."
        );
        Ok(decided)
    }
}

impl AuthorizationApi {
    /// Records an answer the issuer sends after the switch stopped waiting.
    /// It never resurrects the authorization; a late approval means money
    /// is held, so it is reversed (idempotently, whatever else is under way).
    fn await_late_answer(&self, transaction_id: TransactionId, late: LateAnswer) {
        let lifecycle = self.lifecycle.clone();
        self.late_answers.spawn(async move {
            let Ok(Some((answer, took))) = late.await else {
                return;
            };
            let latency_ms = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
            tracing::warn!(
                %transaction_id,
                response_code = %answer.response_code,
                latency_ms,
                "Late issuer response recorded; the authorization stays timed out."
            );
            let late = Command::LateIssuerAnswer {
                response_code: answer.response_code,
                approval_code: answer.approval_code,
                latency_ms,
            };
            if let Err(error) = lifecycle
                .execute(store::Target::Id(transaction_id), late)
                .await
            {
                tracing::error!(%transaction_id, %error, "Late issuer response not recorded.");
            }
        });
    }
}

#[tonic::async_trait]
impl AuthorizationService for AuthorizationApi {
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let span = server_span("authorization.authorize", request.metadata());
        async move {
            let command =
                wire::sale_command(request.get_ref()).map_err(AuthorizationError::from)?;
            let (authorization, duplicate) = self.authorize(command).await?;
            Ok(Response::new(pb::AuthorizeResponse {
                authorization: Some(wire::record(&authorization)),
                duplicate,
            }))
        }
        .instrument(span)
        .await
    }

    async fn reverse(
        &self,
        request: Request<pb::ReverseRequest>,
    ) -> Result<Response<pb::ReverseResponse>, Status> {
        let span = server_span("authorization.reverse", request.metadata());
        async move {
            let request = request.into_inner();
            let reason = wire::reversal_reason(&request).map_err(AuthorizationError::from)?;
            let journal = &self.lifecycle.journal;
            let original = match &request.target {
                Some(Target::TransactionId(id)) => {
                    let id = TransactionId::parse(id).map_err(AuthorizationError::from)?;
                    journal
                        .find_by_id(id)
                        .await?
                        .ok_or_else(|| AuthorizationError::NotFound(id.to_string()))?
                }
                Some(Target::Key(key)) => {
                    let key = wire::request_key(Some(key)).map_err(AuthorizationError::from)?;
                    match journal.find_by_key(&key).await? {
                        Some(original) => original,
                        None => {
                            // The switch never saw it (the request was lost on
                            // the way in): nothing to reverse, but recorded.
                            let now = self.lifecycle.clock.now();
                            let announcement =
                                self.lifecycle.announcer.unmatched_reversal(&key, now);
                            journal
                                .record_unmatched_reversal(&key, &announcement, now)
                                .await?;
                            self.lifecycle.relay.wake();
                            tracing::info!(
                                terminal_id = %key.terminal_id,
                                stan = %key.stan,
                                "Terminal reversal for an unknown transaction recorded."
                            );
                            return Ok(Response::new(pb::ReverseResponse {
                                authorization: None,
                                original_found: false,
                            }));
                        }
                    }
                }
                None => {
                    return Err(AuthorizationError::from(switch_core::InvalidField::new(
                        "target",
                        "give a transaction_id or a key",
                    ))
                    .into());
                }
            };
            let reversed = self
                .lifecycle
                .execute(
                    store::Target::Id(original.transaction_id),
                    Command::RequestReversal { reason },
                )
                .await?;
            tracing::info!(
                transaction_id = %reversed.transaction_id,
                reason = reason.as_str(),
                state = reversed.state.as_str(),
                "Reversal requested."
            );
            Ok(Response::new(pb::ReverseResponse {
                authorization: Some(wire::record(&reversed)),
                original_found: true,
            }))
        }
        .instrument(span)
        .await
    }

    async fn confirm(
        &self,
        request: Request<pb::ConfirmRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        let span = server_span("authorization.confirm", request.metadata());
        async move {
            let request = request.into_inner();
            let id =
                TransactionId::parse(&request.transaction_id).map_err(AuthorizationError::from)?;
            let evidence =
                wire::confirmation_evidence(&request).map_err(AuthorizationError::from)?;
            let confirmed = self
                .lifecycle
                .execute(store::Target::Id(id), Command::Confirm { evidence })
                .await?;
            Ok(Response::new(wire::record(&confirmed)))
        }
        .instrument(span)
        .await
    }

    async fn redrive(
        &self,
        request: Request<pb::RedriveRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        let span = server_span("authorization.redrive", request.metadata());
        async move {
            let request = request.into_inner();
            let id =
                TransactionId::parse(&request.transaction_id).map_err(AuthorizationError::from)?;
            let operator = switch_core::operator_text("operator", &request.operator)
                .map_err(AuthorizationError::from)?;
            let reason = switch_core::operator_text("reason", &request.reason)
                .map_err(AuthorizationError::from)?;
            let action = store::OperatorAction {
                action: "redrive",
                operator,
                reason,
            };
            let (redriven, _) = self
                .lifecycle
                .execute_as(store::Target::Id(id), Command::Redrive, Some(action))
                .await?;
            tracing::warn!(
                transaction_id = %id,
                rrn = %redriven.rrn,
                operator,
                reason,
                "Dead-lettered reversal redriven by an operator."
            );
            Ok(Response::new(wire::record(&redriven)))
        }
        .instrument(span)
        .await
    }

    async fn list_dead_lettered(
        &self,
        request: Request<pb::ListDeadLetteredRequest>,
    ) -> Result<Response<pb::ListDeadLetteredResponse>, Status> {
        let span = server_span("authorization.list_dead_lettered", request.metadata());
        async move {
            let request = request.into_inner();
            let limit = wire::list_limit(request.limit).map_err(AuthorizationError::from)?;
            let after = wire::parse_dead_letter_cursor(&request.cursor)
                .map_err(AuthorizationError::from)?;
            // One more than the page: whether another page follows.
            let mut page = self
                .lifecycle
                .journal
                .dead_lettered(after, i64::from(limit) + 1)
                .await?;
            let more = page.len() > limit as usize;
            page.truncate(limit as usize);
            let next_cursor = match page.last() {
                Some(last) if more => wire::dead_letter_cursor(last),
                _ => String::new(),
            };
            Ok(Response::new(pb::ListDeadLetteredResponse {
                reversals: page.iter().map(wire::dead_lettered).collect(),
                next_cursor,
            }))
        }
        .instrument(span)
        .await
    }

    async fn get_authorization(
        &self,
        request: Request<pb::GetAuthorizationRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        let span = server_span("authorization.get", request.metadata());
        async move {
            let found = match &request.get_ref().by {
                Some(By::TransactionId(id)) => {
                    let id = TransactionId::parse(id).map_err(AuthorizationError::from)?;
                    (self.lifecycle.journal.find_by_id(id).await?, id.to_string())
                }
                Some(By::Key(key)) => {
                    let key = wire::request_key(Some(key)).map_err(AuthorizationError::from)?;
                    (
                        self.lifecycle.journal.find_by_key(&key).await?,
                        key.to_string(),
                    )
                }
                None => {
                    return Err(AuthorizationError::from(switch_core::InvalidField::new(
                        "by",
                        "give a transaction_id or a key",
                    ))
                    .into());
                }
            };
            match found {
                (Some(authorization), _) => Ok(Response::new(wire::record(&authorization))),
                (None, what) => Err(AuthorizationError::NotFound(what).into()),
            }
        }
        .instrument(span)
        .await
    }

    async fn last_for_terminal(
        &self,
        request: Request<pb::LastForTerminalRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        let span = server_span("authorization.last_for_terminal", request.metadata());
        async move {
            let terminal_id = TerminalId::parse(&request.get_ref().terminal_id)
                .map_err(AuthorizationError::from)?;
            match self
                .lifecycle
                .journal
                .last_for_terminal(&terminal_id)
                .await?
            {
                Some(authorization) => Ok(Response::new(wire::record(&authorization))),
                None => Err(AuthorizationError::NotFound(format!("terminal {terminal_id}")).into()),
            }
        }
        .instrument(span)
        .await
    }

    async fn acknowledge(
        &self,
        request: Request<pb::TerminalKey>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        let span = server_span("authorization.acknowledge", request.metadata());
        async move {
            let key =
                wire::request_key(Some(request.get_ref())).map_err(AuthorizationError::from)?;
            let acknowledge = Command::Acknowledge {
                evidence: Evidence::TerminalAcknowledgement,
            };
            let acknowledged = self
                .lifecycle
                .execute_grouped(store::Target::Key(&key), acknowledge)
                .await?;
            Ok(Response::new(wire::record(&acknowledged)))
        }
        .instrument(span)
        .await
    }

    // QR payments (ADR 29): the shell in `crate::qr` does the work.
    async fn qr_pay(
        &self,
        request: Request<pb::QrPayRequest>,
    ) -> Result<Response<pb::QrPaymentResponse>, Status> {
        let span = server_span("authorization.qr_pay", request.metadata());
        let qr = self.qr()?;
        async move { Ok(Response::new(qr.pay(request.get_ref()).await?)) }
            .instrument(span)
            .await
    }

    async fn qr_order(
        &self,
        request: Request<pb::QrOrderRequest>,
    ) -> Result<Response<pb::QrPaymentResponse>, Status> {
        let span = server_span("authorization.qr_order", request.metadata());
        let qr = self.qr()?;
        async move { Ok(Response::new(qr.order(request.get_ref()).await?)) }
            .instrument(span)
            .await
    }

    async fn qr_status(
        &self,
        request: Request<pb::QrStatusRequest>,
    ) -> Result<Response<pb::QrPaymentRecord>, Status> {
        let qr = self.qr()?;
        Ok(Response::new(qr.status(request.get_ref()).await?))
    }

    async fn qr_acknowledge(
        &self,
        request: Request<pb::QrAcknowledgeRequest>,
    ) -> Result<Response<pb::QrPaymentRecord>, Status> {
        let span = server_span("authorization.qr_acknowledge", request.metadata());
        let qr = self.qr()?;
        async move { Ok(Response::new(qr.acknowledge(request.get_ref()).await?)) }
            .instrument(span)
            .await
    }

    async fn qr_refund(
        &self,
        request: Request<pb::QrRefundRequest>,
    ) -> Result<Response<pb::QrRefundResponse>, Status> {
        let span = server_span("authorization.qr_refund", request.metadata());
        let qr = self.qr()?;
        async move { Ok(Response::new(qr.refund(request.get_ref()).await?)) }
            .instrument(span)
            .await
    }

    async fn qr_redrive(
        &self,
        request: Request<pb::QrRedriveRequest>,
    ) -> Result<Response<pb::QrRedriveResponse>, Status> {
        let span = server_span("authorization.qr_redrive", request.metadata());
        let qr = self.qr()?;
        async move { Ok(Response::new(qr.redrive(request.get_ref()).await?)) }
            .instrument(span)
            .await
    }
}
