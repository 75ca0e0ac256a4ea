//! The link to the issuer host over gRPC (`IssuerService`), with the
//! switch's timeout. It reports what happened on the wire; deciding what
//! that means for the authorization is the state machine's job.
//!
//! A call the switch stops waiting for is not cancelled: it may still be
//! answered until its deadline (the late window), and that late answer is
//! handed back so it can be recorded (and an approval reversed) rather than
//! lost. The deadline travels with the call, so the issuer does not act on
//! it later: the lifecycle's rules rely on that (`IssuerWindows`).

use std::time::{Duration, Instant};
use tracing::Instrument;

use switch_platform::service::{GrpcClient, ServeError, TracedChannel};
use switch_proto::v1::issuer_service_client::IssuerServiceClient;
use switch_proto::v1::{IssuerAuthorizeRequest, IssuerReverseRequest, Money};
use tokio::task::JoinHandle;

type Client = IssuerServiceClient<TracedChannel>;

/// An issuer's answer: response code and approval code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub response_code: String,
    pub approval_code: String,
}

/// An answer that may still arrive after the switch stopped waiting, with
/// the time it took.
pub type LateAnswer = JoinHandle<Option<(Answer, Duration)>>;

/// What the issuer call produced.
#[derive(Debug)]
pub enum IssuerOutcome {
    Answered(Answer),
    /// No usable answer: a timeout, a refused or broken call. Even a refusal
    /// may come from a proxy after the issuer acted, so whether money moved
    /// is unknown and the authorization must be treated as such (reversed
    /// later); an unneeded reversal costs nothing, a missing one charges a
    /// shopper for nothing.
    NoAnswer {
        reason: String,
        late: Option<LateAnswer>,
    },
}

#[derive(Clone)]
pub struct GrpcIssuerLink {
    client: Client,
    timeout: Duration,
}

impl GrpcIssuerLink {
    /// Connects lazily, so the switch starts (and answers terminals with a
    /// clear "issuer unavailable") even while the issuer is down.
    pub fn connect(
        endpoint: &str,
        internal_tls: &switch_platform::internal_tls::InternalTlsConfig,
        timeout: Duration,
    ) -> Result<Self, ServeError> {
        let channel = GrpcClient::new(endpoint)
            .internal(crate::SERVICE_NAME, internal_tls)
            .connect_timeout(timeout)
            .traced()?;
        Ok(GrpcIssuerLink {
            client: IssuerServiceClient::new(channel),
            timeout,
        })
    }

    /// Asks the issuer; the call's deadline at the issuer is `deadline`
    /// from now, the switch itself waits only for its own timeout.
    pub async fn authorize(
        &self,
        request: IssuerAuthorizeRequest,
        deadline: Duration,
    ) -> IssuerOutcome {
        let mut client = self.client.clone();
        let mut request = tonic::Request::new(request);
        request.set_timeout(deadline);
        let sent = Instant::now();
        // The call is its own task (a late answer outlives the wait), so it
        // carries its span, the client side of the issuer's: the traced
        // channel sends the issuer this span's context.
        let span = tracing::info_span!(
            "issuer.authorize",
            otel.kind = "client",
            rpc.service = "switch.v1.IssuerService"
        );
        let mut call = tokio::spawn(
            async move {
                client
                    .authorize(request)
                    .await
                    .map(|response| {
                        let answer = response.into_inner();
                        Answer {
                            response_code: answer.response_code,
                            approval_code: answer.approval_code,
                        }
                    })
                    .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
            }
            .instrument(span),
        );
        match tokio::time::timeout(self.timeout, &mut call).await {
            Ok(Ok(Ok(answer))) => IssuerOutcome::Answered(answer),
            Ok(Ok(Err(reason))) => IssuerOutcome::NoAnswer { reason, late: None },
            Ok(Err(join_error)) => IssuerOutcome::NoAnswer {
                reason: join_error.to_string(),
                late: None,
            },
            Err(_) => IssuerOutcome::NoAnswer {
                reason: format!("no answer within {:?}", self.timeout),
                late: Some(tokio::spawn(async move {
                    match call.await {
                        Ok(Ok(answer)) => Some((answer, sent.elapsed())),
                        _ => None,
                    }
                })),
            },
        }
    }

    /// Sends one reversal attempt; the issuer's response code, or why there
    /// was none.
    pub async fn reverse(
        &self,
        rrn: &str,
        stan: &str,
        amount: Money,
        repeat: bool,
    ) -> Result<String, String> {
        let mut client = self.client.clone();
        let mut request = tonic::Request::new(IssuerReverseRequest {
            rrn: rrn.to_owned(),
            stan: stan.to_owned(),
            amount: Some(amount),
            repeat,
        });
        request.set_timeout(self.timeout);
        let span = tracing::info_span!(
            "issuer.reverse",
            otel.kind = "client",
            rpc.service = "switch.v1.IssuerService"
        );
        match tokio::time::timeout(self.timeout, client.reverse(request))
            .instrument(span)
            .await
        {
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            Ok(Ok(response)) => Ok(response.into_inner().response_code),
            Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}
