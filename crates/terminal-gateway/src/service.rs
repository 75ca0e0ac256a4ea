//! `TerminalService`: checks who is calling (the certificate, not revoked,
//! the terminal not suspended, within its request rate), bounds every list
//! in the request, then forwards to the authorization service (or, for
//! batches, the settlement batcher), passing its answers (and its precise
//! errors) through unchanged. `Subscribe` and `AcknowledgeMessage` are
//! answered here, from the terminal backlog ([`crate::push`]). The
//! forwarding itself (`forward_*`, taking the caller's identity) is shared
//! with the ISO 8583 listeners ([`crate::iso`]), so both edges reach
//! authorization and the batcher the same way.

use std::time::Duration;

use switch_platform::service::{GrpcClient, ServeError, TracedChannel};
use switch_proto::v1::authorization_service_client::AuthorizationServiceClient;
use switch_proto::v1::settlement_service_client::SettlementServiceClient;
use switch_proto::v1::terminal_service_server::TerminalService;
use switch_proto::v1::{
    self as pb, AuthorizationRecord, get_authorization_request::By, reverse_request::Target,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::edge::{Edge, Refusal};
use crate::identity::TerminalIdentity;
use crate::limits::{RateLimited, RateLimiter};
use crate::metrics::{Metrics, grpc_outcome};
use crate::push::{self, Push};
use crate::store::{self, Acknowledged};

/// Messages a subscription may have sent ahead of what the terminal has
/// read.
const STREAM_BUFFER: usize = 16;

type AuthorizationClient = AuthorizationServiceClient<TracedChannel>;
type SettlementClient = SettlementServiceClient<TracedChannel>;

pub struct TerminalApi {
    authorization: AuthorizationClient,
    settlement: SettlementClient,
    timeout: Duration,
    push: Push,
    guard: Guard,
}

/// What every call passes before it is served.
pub struct Guard {
    /// The CRL and the terminal registry, as last reloaded.
    pub edge: Edge,
    pub rate: RateLimiter,
    pub metrics: Metrics,
    pub max_upload_transactions: usize,
    pub max_batch_totals: usize,
}

/// Why a request of a known terminal is not served, whatever edge it came
/// through; each edge answers it in its own protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotAdmitted {
    /// Revoked or suspended since its connection opened.
    Refused(Refusal),
    /// Over its request rate.
    OverRate(RateLimited),
}

impl Guard {
    /// Whether `identity` may be served one more request now, on
    /// `listener`'s `method`: its certificate neither revoked nor its
    /// terminal suspended (both may have changed since the connection
    /// opened), and within the terminal's rate (one bucket per terminal
    /// for every edge). Counted.
    pub(crate) fn admit_terminal(
        &self,
        identity: &TerminalIdentity,
        listener: &'static str,
        method: &'static str,
    ) -> Result<(), NotAdmitted> {
        if let Some(refusal) = self.edge.refusal(identity) {
            self.metrics.request_refused(refusal.reason());
            return Err(NotAdmitted::Refused(refusal));
        }
        self.rate
            .check(
                &identity.terminal_id,
                &identity.merchant_id,
                self.edge.merchant_rate(&identity.merchant_id),
            )
            .map_err(|limited| {
                self.metrics.rate_limited(listener, method);
                NotAdmitted::OverRate(limited)
            })
    }

    /// The caller's identity, once [`Guard::admit_terminal`] admits it.
    fn admit<T>(
        &self,
        request: &Request<T>,
        method: &'static str,
    ) -> Result<TerminalIdentity, Status> {
        let identity = TerminalIdentity::of(request)?;
        match self.admit_terminal(&identity, "grpc", method) {
            Ok(()) => {}
            Err(NotAdmitted::Refused(refusal)) => {
                return Err(Status::permission_denied(refusal.to_string()));
            }
            Err(NotAdmitted::OverRate(limited)) => {
                let mut status = Status::resource_exhausted(format!(
                    "terminal {} is over its request rate ({} a second, {} at once); retry in {} ms",
                    identity.terminal_id,
                    limited.rule.per_second(),
                    limited.rule.burst(),
                    limited.retry_after_ms
                ));
                if let Ok(value) = limited.retry_after_ms.to_string().parse() {
                    status.metadata_mut().insert("retry-after-ms", value);
                }
                return Err(status);
            }
        }
        Ok(identity)
    }
}

/// Refuses a list longer than `limit`, naming the field.
fn bounded(field: &str, len: usize, limit: usize) -> Result<(), Status> {
    if len > limit {
        Err(Status::invalid_argument(format!(
            "{field} lists {len} entries; at most {limit} are accepted"
        )))
    } else {
        Ok(())
    }
}

impl TerminalApi {
    pub fn connect(
        authorization_endpoint: &str,
        settlement_endpoint: &str,
        internal_tls: &switch_platform::internal_tls::InternalTlsConfig,
        timeout: Duration,
        push: Push,
        guard: Guard,
    ) -> Result<Self, ServeError> {
        Ok(TerminalApi {
            authorization: AuthorizationServiceClient::new(
                GrpcClient::new(authorization_endpoint)
                    .internal(crate::SERVICE_NAME, internal_tls)
                    .traced()?,
            ),
            settlement: SettlementServiceClient::new(
                GrpcClient::new(settlement_endpoint)
                    .internal(crate::SERVICE_NAME, internal_tls)
                    .traced()?,
            ),
            timeout,
            push,
            guard,
        })
    }

    /// Runs a gRPC call of a terminal and records how long it waited for
    /// the answer (`gateway.request.duration`), whatever the answer.
    async fn timed<T>(
        &self,
        method: &'static str,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = std::time::Instant::now();
        let answer = call.await;
        let code = answer
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.guard
            .metrics
            .request_answered("grpc", method, grpc_outcome(code), started.elapsed());
        answer
    }

    /// What every request passes, for the edges that are not gRPC.
    pub(crate) fn guard(&self) -> &Guard {
        &self.guard
    }

    fn outbound<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// A sale on behalf of `identity`, whichever edge it came through: the
    /// merchant is the certificate's, the key the terminal's.
    pub(crate) async fn forward_sale(
        &self,
        identity: &TerminalIdentity,
        sale: pb::SaleRequest,
    ) -> Result<pb::SaleResponse, Status> {
        identity.authorize(&sale.terminal_id)?;
        let forwarded = pb::AuthorizeRequest {
            key: Some(key(&sale.terminal_id, &sale.stan, &sale.local_date)),
            merchant_id: identity.merchant_id.clone(),
            pan: sale.pan,
            expiry: sale.expiry,
            amount: sale.amount,
            last_completed_stan: sale.last_completed_stan,
            channel: sale.channel,
        };
        let answer = self
            .authorization
            .clone()
            .authorize(self.outbound(forwarded))
            .await?
            .into_inner();
        Ok(pb::SaleResponse {
            authorization: answer.authorization,
            duplicate: answer.duplicate,
        })
    }

    /// The terminal's acknowledgement (gRPC `Acknowledge`, ISO 0220).
    pub(crate) async fn forward_acknowledge(
        &self,
        identity: &TerminalIdentity,
        ack: pb::AcknowledgeRequest,
    ) -> Result<pb::AcknowledgeResponse, Status> {
        identity.authorize(&ack.terminal_id)?;
        let record = self
            .authorization
            .clone()
            .acknowledge(self.outbound(key(&ack.terminal_id, &ack.stan, &ack.local_date)))
            .await?
            .into_inner();
        Ok(pb::AcknowledgeResponse {
            authorization: Some(record),
        })
    }

    /// A terminal-requested reversal (gRPC `Reverse`, ISO 0400/0420 and
    /// their repeats).
    pub(crate) async fn forward_reverse(
        &self,
        identity: &TerminalIdentity,
        reversal: pb::TerminalReverseRequest,
    ) -> Result<pb::TerminalReverseResponse, Status> {
        identity.authorize(&reversal.terminal_id)?;
        let answer = self
            .authorization
            .clone()
            .reverse(self.outbound(pb::ReverseRequest {
                target: Some(Target::Key(key(
                    &reversal.terminal_id,
                    &reversal.stan,
                    &reversal.local_date,
                ))),
                reason: pb::ReversalReason::TerminalRequested.into(),
            }))
            .await?
            .into_inner();
        Ok(pb::TerminalReverseResponse {
            authorization: answer.authorization,
            original_found: answer.original_found,
        })
    }

    /// A batch close (gRPC `CloseBatch`, ISO 0500); the merchant is the
    /// certificate's, whatever the request says.
    pub(crate) async fn forward_close_batch(
        &self,
        identity: &TerminalIdentity,
        mut close: pb::CloseBatchRequest,
    ) -> Result<pb::CloseBatchResponse, Status> {
        identity.authorize(&close.terminal_id)?;
        bounded("totals", close.totals.len(), self.guard.max_batch_totals)?;
        close.merchant_id = identity.merchant_id.clone();
        Ok(self
            .settlement
            .clone()
            .close_batch(self.outbound(close))
            .await?
            .into_inner())
    }
}

impl TerminalApi {
    /// A batch upload (gRPC `UploadBatch`, ISO 0320 once the gateway has
    /// gathered the upload); bounded, and the merchant is the
    /// certificate's, whatever the request says.
    pub(crate) async fn forward_upload_batch(
        &self,
        identity: &TerminalIdentity,
        mut upload: pb::UploadBatchRequest,
    ) -> Result<pb::UploadBatchResponse, Status> {
        identity.authorize(&upload.terminal_id)?;
        bounded(
            "transactions",
            upload.transactions.len(),
            self.guard.max_upload_transactions,
        )?;
        upload.merchant_id = identity.merchant_id.clone();
        Ok(self
            .settlement
            .clone()
            .upload_batch(self.outbound(upload))
            .await?
            .into_inner())
    }
}

fn key(terminal_id: &str, stan: &str, local_date: &str) -> pb::TerminalKey {
    pb::TerminalKey {
        terminal_id: terminal_id.to_owned(),
        stan: stan.to_owned(),
        local_date: local_date.to_owned(),
    }
}

#[tonic::async_trait]
impl TerminalService for TerminalApi {
    type SubscribeStream = ReceiverStream<Result<pb::TerminalMessage, Status>>;

    #[tracing::instrument(name = "gateway.sale", skip_all, fields(terminal_id, stan))]
    async fn sale(
        &self,
        request: Request<pb::SaleRequest>,
    ) -> Result<Response<pb::SaleResponse>, Status> {
        self.timed("Sale", async {
            let identity = self.guard.admit(&request, "Sale")?;
            let sale = request.into_inner();
            let span = tracing::Span::current();
            span.record("terminal_id", sale.terminal_id.as_str());
            span.record("stan", sale.stan.as_str());
            self.forward_sale(&identity, sale).await.map(Response::new)
        })
        .await
    }

    #[tracing::instrument(name = "gateway.inquiry", skip_all)]
    async fn inquiry(
        &self,
        request: Request<pb::InquiryRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        self.timed("Inquiry", async {
            let identity = self.guard.admit(&request, "Inquiry")?;
            let inquiry = request.into_inner();
            identity.authorize(&inquiry.terminal_id)?;
            let lookup = pb::GetAuthorizationRequest {
                by: Some(By::Key(key(
                    &inquiry.terminal_id,
                    &inquiry.stan,
                    &inquiry.local_date,
                ))),
            };
            self.authorization
                .clone()
                .get_authorization(self.outbound(lookup))
                .await
        })
        .await
    }

    #[tracing::instrument(name = "gateway.reprint_last", skip_all)]
    async fn reprint_last(
        &self,
        request: Request<pb::ReprintLastRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        self.timed("ReprintLast", async {
            let identity = self.guard.admit(&request, "ReprintLast")?;
            let reprint = request.into_inner();
            identity.authorize(&reprint.terminal_id)?;
            self.authorization
                .clone()
                .last_for_terminal(self.outbound(pb::LastForTerminalRequest {
                    terminal_id: reprint.terminal_id,
                }))
                .await
        })
        .await
    }

    #[tracing::instrument(name = "gateway.acknowledge", skip_all)]
    async fn acknowledge(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        self.timed("Acknowledge", async {
            let identity = self.guard.admit(&request, "Acknowledge")?;
            self.forward_acknowledge(&identity, request.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    /// S4: the terminal timed out and asks to reverse. Authorization makes
    /// the reversal durable before this answer returns; repeats get the
    /// same answer and cause no second reversal.
    #[tracing::instrument(name = "gateway.reverse", skip_all)]
    async fn reverse(
        &self,
        request: Request<pb::TerminalReverseRequest>,
    ) -> Result<Response<pb::TerminalReverseResponse>, Status> {
        self.timed("Reverse", async {
            let identity = self.guard.admit(&request, "Reverse")?;
            self.forward_reverse(&identity, request.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    /// ISO 8583 0500: the terminal's totals. The merchant is the
    /// certificate's, whatever the request says.
    #[tracing::instrument(name = "gateway.close_batch", skip_all)]
    async fn close_batch(
        &self,
        request: Request<pb::CloseBatchRequest>,
    ) -> Result<Response<pb::CloseBatchResponse>, Status> {
        self.timed("CloseBatch", async {
            let identity = self.guard.admit(&request, "CloseBatch")?;
            self.forward_close_batch(&identity, request.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    /// The batch upload that follows an out-of-balance close.
    #[tracing::instrument(name = "gateway.upload_batch", skip_all)]
    async fn upload_batch(
        &self,
        request: Request<pb::UploadBatchRequest>,
    ) -> Result<Response<pb::UploadBatchResponse>, Status> {
        self.timed("UploadBatch", async {
            let identity = self.guard.admit(&request, "UploadBatch")?;
            self.forward_upload_batch(&identity, request.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    /// The terminal's messages: its backlog in order, then new ones, until
    /// it hangs up.
    #[tracing::instrument(name = "gateway.subscribe", skip_all, fields(terminal_id))]
    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let identity = self.guard.admit(&request, "Subscribe")?;
        let subscribe = request.into_inner();
        identity.authorize(&subscribe.terminal_id)?;
        tracing::Span::current().record("terminal_id", subscribe.terminal_id.as_str());
        let (subscription, replaced_one) = self.push.hub.subscribe(&identity.terminal_id);
        if replaced_one {
            self.push.metrics.subscription_replaced();
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(push::stream_messages(
            self.push.clone(),
            subscription,
            identity,
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    /// The terminal has shown a message; it is never pushed again.
    #[tracing::instrument(name = "gateway.acknowledge_message", skip_all, fields(terminal_id))]
    async fn acknowledge_message(
        &self,
        request: Request<pb::AcknowledgeMessageRequest>,
    ) -> Result<Response<pb::AcknowledgeMessageResponse>, Status> {
        self.timed("AcknowledgeMessage", async {
            let identity = self.guard.admit(&request, "AcknowledgeMessage")?;
            let ack = request.into_inner();
            identity.authorize(&ack.terminal_id)?;
            tracing::Span::current().record("terminal_id", ack.terminal_id.as_str());
            let message_id = Uuid::parse_str(&ack.message_id).map_err(|_| {
                Status::invalid_argument(format!("message_id {:?} is not a UUID", ack.message_id))
            })?;
            let outcome = store::acknowledge(&self.push.pool, &identity.terminal_id, message_id)
                .await
                .map_err(|error| {
                    tracing::warn!(%error, "Acknowledgement of a terminal message failed.");
                    Status::unavailable("the acknowledgement could not be recorded; retry")
                })?;
            match outcome {
                Acknowledged::Now => {
                    self.push.metrics.acknowledged();
                    tracing::debug!(%message_id, "Terminal message acknowledged.");
                    Ok(Response::new(pb::AcknowledgeMessageResponse {
                        already_acknowledged: false,
                    }))
                }
                Acknowledged::Already => Ok(Response::new(pb::AcknowledgeMessageResponse {
                    already_acknowledged: true,
                })),
                Acknowledged::NotFound => Err(Status::not_found(format!(
                    "terminal {} has no message {message_id}",
                    identity.terminal_id
                ))),
            }
        })
        .await
    }

    // QR payments (ADR 29): the terminal is the certificate's, and so is
    // the merchant, whatever the request says.
    #[tracing::instrument(name = "gateway.qr_pay", skip_all, fields(terminal_id, stan))]
    async fn qr_pay(
        &self,
        request: Request<pb::QrPayRequest>,
    ) -> Result<Response<pb::QrPaymentResponse>, Status> {
        self.timed("QrPay", async {
            let identity = self.guard.admit(&request, "QrPay")?;
            let mut pay = request.into_inner();
            identity.authorize(&pay.terminal_id)?;
            let span = tracing::Span::current();
            span.record("terminal_id", pay.terminal_id.as_str());
            span.record("stan", pay.stan.as_str());
            pay.merchant_id = identity.merchant_id.clone();
            self.authorization.clone().qr_pay(self.outbound(pay)).await
        })
        .await
    }

    #[tracing::instrument(name = "gateway.qr_order", skip_all)]
    async fn qr_order(
        &self,
        request: Request<pb::QrOrderRequest>,
    ) -> Result<Response<pb::QrPaymentResponse>, Status> {
        self.timed("QrOrder", async {
            let identity = self.guard.admit(&request, "QrOrder")?;
            let mut order = request.into_inner();
            identity.authorize(&order.terminal_id)?;
            order.merchant_id = identity.merchant_id.clone();
            self.authorization
                .clone()
                .qr_order(self.outbound(order))
                .await
        })
        .await
    }

    #[tracing::instrument(name = "gateway.qr_status", skip_all)]
    async fn qr_status(
        &self,
        request: Request<pb::QrStatusRequest>,
    ) -> Result<Response<pb::QrPaymentRecord>, Status> {
        self.timed("QrStatus", async {
            let identity = self.guard.admit(&request, "QrStatus")?;
            let status = request.into_inner();
            identity.authorize(&status.terminal_id)?;
            self.authorization
                .clone()
                .qr_status(self.outbound(status))
                .await
        })
        .await
    }

    #[tracing::instrument(name = "gateway.qr_acknowledge", skip_all)]
    async fn qr_acknowledge(
        &self,
        request: Request<pb::QrAcknowledgeRequest>,
    ) -> Result<Response<pb::QrPaymentRecord>, Status> {
        self.timed("QrAcknowledge", async {
            let identity = self.guard.admit(&request, "QrAcknowledge")?;
            let acknowledge = request.into_inner();
            identity.authorize(&acknowledge.terminal_id)?;
            self.authorization
                .clone()
                .qr_acknowledge(self.outbound(acknowledge))
                .await
        })
        .await
    }
}
