//! Request size limits per method of `TerminalService`.
//!
//! tonic sets one decoding limit for a whole service; a sale is a few
//! hundred bytes while a batch upload can list thousands of transactions.
//! So the service's own limit is the larger one (`UploadBatch`'s), and
//! [`MethodLimits`] caps every other method's request body at the smaller
//! one as it streams in: the call is answered `RESOURCE_EXHAUSTED`, naming
//! the method and the limit, before more than the limit is buffered.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};
use switch_platform::service::MessageLimits;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::server::NamedService;

/// The 5-byte prefix (compression flag, length) of every gRPC message.
const FRAME_PREFIX: usize = 5;

/// The method whose limit is the upload limit.
const UPLOAD_METHOD: &str = "UploadBatch";

/// A generated server whose requests are capped per method.
#[derive(Clone)]
pub struct MethodLimits<S> {
    inner: S,
    message_bytes: usize,
    upload_bytes: usize,
}

impl<S> MethodLimits<S> {
    pub fn new(inner: S, message_bytes: usize, upload_bytes: usize) -> Self {
        MethodLimits {
            inner,
            message_bytes,
            upload_bytes,
        }
    }
}

impl<S: NamedService> NamedService for MethodLimits<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: MessageLimits> MessageLimits for MethodLimits<S> {
    fn with_message_limits(self, decoding: usize, encoding: usize) -> Self {
        MethodLimits {
            inner: self.inner.with_message_limits(decoding, encoding),
            ..self
        }
    }
}

impl<S> tower::Service<http::Request<Body>> for MethodLimits<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = method_of(request.uri().path());
        let (limit, key) = if method == UPLOAD_METHOD {
            (self.upload_bytes, "gateway.max_upload_message_bytes")
        } else {
            (self.message_bytes, "gateway.max_message_bytes")
        };
        let request = request.map(|body| {
            Body::new(Capped {
                inner: body,
                remaining: limit.saturating_add(FRAME_PREFIX),
                limit,
                method,
                key,
            })
        });
        self.inner.call(request)
    }
}

/// The method name of a gRPC path (`/switch.v1.TerminalService/Sale`),
/// bounded to the service's methods so a log or error never echoes an
/// arbitrary path.
fn method_of(path: &str) -> &'static str {
    match path.rsplit('/').next().unwrap_or_default() {
        "Sale" => "Sale",
        "Inquiry" => "Inquiry",
        "ReprintLast" => "ReprintLast",
        "Acknowledge" => "Acknowledge",
        "Reverse" => "Reverse",
        "CloseBatch" => "CloseBatch",
        "UploadBatch" => "UploadBatch",
        "Subscribe" => "Subscribe",
        "AcknowledgeMessage" => "AcknowledgeMessage",
        _ => "unknown",
    }
}

/// A request body that fails once more than `limit` message bytes arrive.
struct Capped {
    inner: Body,
    remaining: usize,
    limit: usize,
    method: &'static str,
    /// The configuration key of the limit, so the refusal says what to
    /// raise.
    key: &'static str,
}

impl HttpBody for Capped {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    match this.remaining.checked_sub(data.len()) {
                        Some(left) => this.remaining = left,
                        None => {
                            return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                                "a {} request may be at most {} bytes ({})",
                                this.method, this.limit, this.key
                            )))));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_named_from_a_bounded_set() {
        assert_eq!(method_of("/switch.v1.TerminalService/Sale"), "Sale");
        assert_eq!(
            method_of("/switch.v1.TerminalService/UploadBatch"),
            UPLOAD_METHOD
        );
        assert_eq!(
            method_of("/switch.v1.TerminalService/4111111111111111"),
            "unknown"
        );
    }
}
