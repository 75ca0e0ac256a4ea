//! The link to the issuer host over gRPC (`IssuerService`), with the
//! switch's timeout. It reports what happened on the wire; deciding what
//! that means for the authorization is the state machine's job.

use std::time::Duration;

use switch_proto::v1::IssuerAuthorizeRequest;
use switch_proto::v1::issuer_service_client::IssuerServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

type InterceptorFn = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// What the issuer call produced.
#[derive(Debug)]
pub enum IssuerOutcome {
    Answered {
        response_code: String,
        approval_code: String,
    },
    /// No usable answer: a timeout, a refused or broken call. Even a refusal
    /// may come from a proxy after the issuer acted, so whether money moved
    /// is unknown and the authorization must be treated as such (reversed
    /// later); an unneeded reversal costs nothing, a missing one charges a
    /// shopper for nothing.
    NoAnswer(String),
}

#[derive(Clone)]
pub struct GrpcIssuerLink {
    client: IssuerServiceClient<InterceptedService<Channel, InterceptorFn>>,
    timeout: Duration,
}

impl GrpcIssuerLink {
    /// Connects lazily, so the switch starts (and answers terminals with a
    /// clear "issuer unavailable") even while the issuer is down.
    pub fn connect(endpoint: &str, timeout: Duration) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(endpoint.to_owned())?
            .tcp_nodelay(true)
            .connect_timeout(timeout)
            .connect_lazy();
        let interceptor: InterceptorFn = switch_platform::telemetry::propagate_trace_context;
        Ok(GrpcIssuerLink {
            client: IssuerServiceClient::with_interceptor(channel, interceptor),
            timeout,
        })
    }

    pub async fn authorize(&self, request: IssuerAuthorizeRequest) -> IssuerOutcome {
        let mut client = self.client.clone();
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, client.authorize(request)).await {
            Err(_) => IssuerOutcome::NoAnswer(format!("no answer within {:?}", self.timeout)),
            Ok(Ok(response)) => {
                let answer = response.into_inner();
                IssuerOutcome::Answered {
                    response_code: answer.response_code,
                    approval_code: answer.approval_code,
                }
            }
            Ok(Err(status)) => {
                IssuerOutcome::NoAnswer(format!("{:?}: {}", status.code(), status.message()))
            }
        }
    }
}
