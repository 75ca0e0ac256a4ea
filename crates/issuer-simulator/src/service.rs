//! The gRPC services: `IssuerService` (the issuer host itself) and
//! `IssuerControl` (fault injection and counters for tests).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use switch_core::ResponseCode;
use switch_proto::v1::issuer_control_server::IssuerControl;
use switch_proto::v1::issuer_service_server::IssuerService;
use switch_proto::v1::{
    FaultPlan, FaultPlanAck, FundsRequest, FundsResponse, FundsState, IssuerAuthorizeRequest,
    IssuerAuthorizeResponse, IssuerReverseRequest, IssuerReverseResponse, IssuerStats, Money,
    StatsRequest,
};
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug};

use crate::faults::{Fault, Faults, RpcKind};
use crate::ledger::{Funds, Ledger, LedgerError};
use crate::rules::{self, APPROVED, Decision, FORMAT_ERROR};

/// Message of the UNAVAILABLE status returned during a simulated outage.
pub const OUTAGE_MESSAGE: &str = "issuer outage (simulated)";

/// `"<minor units> <currency>"`, or `"none"` when the request carries no amount.
fn amount_for_log(amount: Option<&Money>) -> String {
    amount.map_or_else(
        || "none".to_owned(),
        |m| format!("{} {}", m.minor_units, m.currency),
    )
}

/// Counters behind `IssuerControl.Stats`.
#[derive(Debug, Default)]
struct Counters {
    authorizations: AtomicU64,
    reversals: AtomicU64,
    approved: AtomicU64,
    declined: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> IssuerStats {
        IssuerStats {
            authorizations: self.authorizations.load(Ordering::Relaxed),
            reversals: self.reversals.load(Ordering::Relaxed),
            approved: self.approved.load(Ordering::Relaxed),
            declined: self.declined.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The simulator's state, shared by both services (cloning shares it).
#[derive(Debug, Clone, Default)]
pub struct Simulator {
    faults: Faults,
    counters: Arc<Counters>,
    /// The issuer's ledger: every RRN it decided, and what it holds for it.
    /// A reversal of an RRN it never decided is answered "25".
    ledger: Ledger,
}

impl Simulator {
    /// A simulator with no faults, no history, zeroed counters and its
    /// ledger in memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// A simulator whose ledger is `ledger`.
    pub fn with_ledger(ledger: Ledger) -> Self {
        Simulator {
            ledger,
            ..Self::default()
        }
    }

    /// Records what a decision holds before it is answered; a repeated
    /// authorization of the same RRN keeps the first entry. A ledger that
    /// cannot record means no decision: the issuer is unavailable.
    async fn record(
        &self,
        request: &IssuerAuthorizeRequest,
        decision: &Decision,
        amount: i64,
    ) -> Result<(), Status> {
        let funds = match decision {
            Decision::Approve { .. } => Funds::Held(amount),
            Decision::ApprovePartially {
                held_minor_units, ..
            } => Funds::Held(*held_minor_units),
            Decision::Decline { .. } => Funds::Declined,
        };
        self.ledger
            .record(&request.rrn, &request.stan, funds, decision.response_code())
            .await
            .map_err(unavailable)
    }

    /// Applies the non-answer parts of a fault: latency first, then outage
    /// (UNAVAILABLE) or no response (pending until the caller gives up, which
    /// drops this future). Returns the fault for the caller to apply
    /// `decline_code`.
    async fn apply_fault(&self, fault: Option<Fault>) -> Result<Option<Fault>, Status> {
        let Some(fault) = fault else {
            return Ok(None);
        };
        if !fault.latency.is_zero() {
            tokio::time::sleep(fault.latency).await;
        }
        if fault.outage {
            Counters::bump(&self.counters.dropped);
            return Err(Status::unavailable(OUTAGE_MESSAGE));
        }
        if fault.no_response {
            Counters::bump(&self.counters.dropped);
            std::future::pending::<()>().await;
        }
        Ok(Some(fault))
    }
}

/// The ledger could not be read or written: the issuer cannot decide.
fn unavailable(error: LedgerError) -> Status {
    tracing::warn!(%error, "issuer ledger unavailable");
    Status::unavailable(error.to_string())
}

#[tonic::async_trait]
impl IssuerService for Simulator {
    async fn authorize(
        &self,
        request: Request<IssuerAuthorizeRequest>,
    ) -> Result<Response<IssuerAuthorizeResponse>, Status> {
        let span = switch_platform::telemetry::server_span(
            "issuer_simulator.authorize",
            request.metadata(),
        );
        async move {
            let request = request.into_inner();
            Counters::bump(&self.counters.authorizations);
            let amount = amount_for_log(request.amount.as_ref());
            let fault = self
                .faults
                .for_request(RpcKind::Authorization, &request.stan);
            let faulted = fault.is_some();
            let fault = match self.apply_fault(fault).await {
                Ok(fault) => fault,
                Err(status) => {
                    debug!(
                        rrn = %request.rrn,
                        stan = %request.stan,
                        %amount,
                        pan_last4 = rules::pan_last4(&request.pan),
                        decision = "outage",
                        "authorization"
                    );
                    return Err(status);
                }
            };
            let amount_minor = request.amount.as_ref().map_or(0, |m| m.minor_units);
            let decision = match &fault {
                Some(fault) if !fault.decline_code.is_empty() => Decision::Decline {
                    response_code: fault.decline_code.clone(),
                },
                Some(fault) if fault.partial_approval => {
                    rules::decide(&request).partially(amount_minor)
                }
                _ => rules::decide(&request),
            };
            if !request.rrn.is_empty() {
                self.record(&request, &decision, amount_minor).await?;
            }
            let code = decision.response_code();
            let holds = ResponseCode::parse(code).is_ok_and(|c| c.holds_funds());
            if holds {
                Counters::bump(&self.counters.approved);
            } else {
                Counters::bump(&self.counters.declined);
            }
            if holds && fault.as_ref().is_some_and(|f| f.approve_then_hang) {
                // Approved and held; the answer is lost.
                Counters::bump(&self.counters.dropped);
                debug!(rrn = %request.rrn, stan = %request.stan, decision = code, "authorization approved, answer lost");
                std::future::pending::<()>().await;
            }
            debug!(
                rrn = %request.rrn,
                stan = %request.stan,
                %amount,
                pan_last4 = rules::pan_last4(&request.pan),
                decision = code,
                approval_code = decision.approval_code(),
                faulted,
                "authorization"
            );
            Ok(Response::new(IssuerAuthorizeResponse {
                response_code: code.to_owned(),
                approval_code: decision.approval_code().to_owned(),
            }))
        }
        .instrument(span)
        .await
    }

    async fn reverse(
        &self,
        request: Request<IssuerReverseRequest>,
    ) -> Result<Response<IssuerReverseResponse>, Status> {
        let span =
            switch_platform::telemetry::server_span("issuer_simulator.reverse", request.metadata());
        async move {
            let request = request.into_inner();
            Counters::bump(&self.counters.reversals);
            let amount = amount_for_log(request.amount.as_ref());
            let fault = self.faults.for_request(RpcKind::Reversal, &request.stan);
            let faulted = fault.is_some();
            let fault = match self.apply_fault(fault).await {
                Ok(fault) => fault,
                Err(status) => {
                    debug!(
                        rrn = %request.rrn,
                        stan = %request.stan,
                        %amount,
                        repeat = request.repeat,
                        decision = "outage",
                        "reversal"
                    );
                    return Err(status);
                }
            };
            let (code, already_reversed) = match fault {
                Some(fault) if !fault.decline_code.is_empty() => (fault.decline_code, false),
                _ if request.rrn.is_empty() => (FORMAT_ERROR.as_str().to_owned(), false),
                _ => match self
                    .ledger
                    .reverse(&request.rrn, request.repeat)
                    .await
                    .map_err(unavailable)?
                {
                    // No original to reverse: it never arrived, or has not been
                    // decided yet (it may still be).
                    None => (
                        ResponseCode::UNABLE_TO_LOCATE_RECORD.as_str().to_owned(),
                        false,
                    ),
                    Some(already_reversed) => (APPROVED.as_str().to_owned(), already_reversed),
                },
            };
            debug!(
                rrn = %request.rrn,
                stan = %request.stan,
                %amount,
                repeat = request.repeat,
                already_reversed,
                decision = %code,
                faulted,
                "reversal"
            );
            Ok(Response::new(IssuerReverseResponse {
                response_code: code,
            }))
        }
        .instrument(span)
        .await
    }
}

#[tonic::async_trait]
impl IssuerControl for Simulator {
    async fn set_faults(
        &self,
        request: Request<FaultPlan>,
    ) -> Result<Response<FaultPlanAck>, Status> {
        let plan = request.into_inner();
        debug!(?plan, "fault plan replaced");
        self.faults.set(plan);
        Ok(Response::new(FaultPlanAck {}))
    }

    async fn stats(
        &self,
        _request: Request<StatsRequest>,
    ) -> Result<Response<IssuerStats>, Status> {
        Ok(Response::new(self.counters.snapshot()))
    }

    async fn funds(
        &self,
        request: Request<FundsRequest>,
    ) -> Result<Response<FundsResponse>, Status> {
        let entry = self
            .ledger
            .entry(&request.get_ref().rrn)
            .await
            .map_err(unavailable)?;
        let (state, held_minor_units) = match entry.map(|e| e.funds) {
            None => (FundsState::Unknown, 0),
            Some(Funds::Held(held)) => (FundsState::Held, held),
            Some(Funds::Released(held)) => (FundsState::Released, held),
            Some(Funds::Declined) => (FundsState::Declined, 0),
        };
        Ok(Response::new(FundsResponse {
            state: state.into(),
            held_minor_units,
            reversal_requests: entry.map_or(0, |e| e.reversal_requests),
            unflagged_repeats: entry.map_or(0, |e| e.unflagged_repeats),
        }))
    }
}
