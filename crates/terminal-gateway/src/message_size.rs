//! Request size limits per method of `TerminalService`.
//!
//! tonic sets one decoding limit for a whole service; a sale is a few
//! hundred bytes while a batch upload can list thousands of transactions.
//! So the service's own limit is the larger one (`UploadBatch`'s), and
//! [`MethodLimits`] reads the length prefix of every request message as it
//! streams in and refuses one announcing more than its method's limit:
//! the call is answered `RESOURCE_EXHAUSTED`, naming the method, the limit
//! and its configuration key, before the message is buffered.

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
                limit,
                method,
                key,
                prefix: Prefix::default(),
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
        "QrPay" => "QrPay",
        "QrOrder" => "QrOrder",
        "QrStatus" => "QrStatus",
        "QrAcknowledge" => "QrAcknowledge",
        _ => "unknown",
    }
}

/// A request body that fails as soon as a message announces (in its gRPC
/// length prefix) more than `limit` bytes, before the message is read.
struct Capped {
    inner: Body,
    limit: usize,
    method: &'static str,
    /// The configuration key of the limit, so the refusal says what to
    /// raise.
    key: &'static str,
    prefix: Prefix,
}

/// Where the body is in its sequence of length-prefixed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    /// Reading a prefix; `filled` of its 5 bytes are in `bytes`.
    Reading {
        bytes: [u8; FRAME_PREFIX],
        filled: usize,
    },
    /// Inside a message, `remaining` bytes of it still to come.
    Message { remaining: usize },
}

impl Default for Prefix {
    fn default() -> Self {
        Prefix::Reading {
            bytes: [0; FRAME_PREFIX],
            filled: 0,
        }
    }
}

impl Prefix {
    /// Follows `data`; the announced length of the first message over
    /// `limit`, if one is.
    fn follow(&mut self, mut data: &[u8], limit: usize) -> Result<(), usize> {
        while !data.is_empty() {
            match self {
                Prefix::Message { remaining } => {
                    let taken = (*remaining).min(data.len());
                    *remaining -= taken;
                    data = &data[taken..];
                    if *remaining == 0 {
                        *self = Prefix::default();
                    }
                }
                Prefix::Reading { bytes, filled } => {
                    let taken = (FRAME_PREFIX - *filled).min(data.len());
                    bytes[*filled..*filled + taken].copy_from_slice(&data[..taken]);
                    *filled += taken;
                    data = &data[taken..];
                    if *filled == FRAME_PREFIX {
                        let announced =
                            u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
                        let announced = usize::try_from(announced).unwrap_or(usize::MAX);
                        if announced > limit {
                            return Err(announced);
                        }
                        *self = if announced == 0 {
                            Prefix::default()
                        } else {
                            Prefix::Message {
                                remaining: announced,
                            }
                        };
                    }
                }
            }
        }
        Ok(())
    }
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
                if let Some(data) = frame.data_ref()
                    && let Err(announced) = this.prefix.follow(data, this.limit)
                {
                    return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                        "{} requests may be at most {} bytes ({}); this one has {announced}",
                        this.method, this.limit, this.key
                    )))));
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

    fn prefix(flag: u8, len: u32) -> Vec<u8> {
        let mut bytes = vec![flag];
        bytes.extend(len.to_be_bytes());
        bytes
    }

    #[test]
    fn a_prefix_over_the_limit_is_caught_however_the_bytes_are_split() {
        let mut body = prefix(0, 10);
        body.extend([7; 10]);
        body.extend(prefix(0, 0));
        body.extend(prefix(0, 11));
        for split in 1..body.len() {
            let mut state = Prefix::default();
            let result = body
                .chunks(split)
                .try_for_each(|chunk| state.follow(chunk, 10));
            assert_eq!(result, Err(11), "split {split}");
        }
        let mut state = Prefix::default();
        assert_eq!(state.follow(&body[..20], 10), Ok(()));
    }

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
