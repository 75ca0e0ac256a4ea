//! Calls a terminal abandons: the part of HTTP/2 "rapid reset"
//! (CVE-2023-44487) that hyper's own limit does not see.
//!
//! hyper closes a connection once more than `max_pending_reset_streams`
//! streams were reset *before the server took them*. A server that keeps
//! up takes every stream as it arrives, so a client that opens and resets
//! streams one at a time is never counted there, and each of its streams
//! still costs a task, a service call and its cancellation, as fast as the
//! client can send them. So the edge counts the other half itself: every
//! call the client abandoned takes a token from its connection's bucket
//! ([`ClientResets`]), and an empty bucket closes the connection. A call is
//! abandoned when its request body ends in the client's reset (the usual
//! case in a flood: tonic reads the body first, sees the reset and answers
//! an error nobody receives) or when hyper drops it before its answer (a
//! reset while the handler ran). A terminal whose deadline expires now and
//! then stays far below it; a flood is cut after `burst` calls.
//!
//! [`CountResets`] wraps the generated server and counts; the edge's
//! [`EdgeStream`](crate::edge::EdgeStream) owns the bucket and closes the
//! socket when told to.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};
use switch_core::{Admission, RateRule, TokenBucket};
use switch_platform::service::MessageLimits;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::server::NamedService;

use crate::edge::EdgeConnectInfo;
use crate::metrics::Metrics;

/// The abandoned-call bucket of one connection, and the switch that closes
/// it.
#[derive(Clone)]
pub struct ClientResets {
    inner: Arc<Inner>,
}

struct Inner {
    rule: RateRule,
    bucket: Mutex<TokenBucket>,
    epoch: Instant,
    close: CancellationToken,
    metrics: Metrics,
    listener_name: &'static str,
}

impl ClientResets {
    pub fn new(rule: RateRule, metrics: Metrics, listener_name: &'static str) -> ClientResets {
        ClientResets {
            inner: Arc::new(Inner {
                rule,
                bucket: Mutex::new(TokenBucket::full(rule, 0)),
                epoch: Instant::now(),
                close: CancellationToken::new(),
                metrics,
                listener_name,
            }),
        }
    }

    /// Counts one call dropped before its answer; past the rule, the
    /// connection is to be closed (once).
    pub fn abandoned(&self, terminal_id: Option<&str>) {
        let now_ms = u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.abandoned_at(now_ms, terminal_id);
    }

    /// [`ClientResets::abandoned`] at `now_ms` since the connection opened.
    fn abandoned_at(&self, now_ms: u64, terminal_id: Option<&str>) {
        let inner = &self.inner;
        let admission = {
            let mut bucket = inner.bucket.lock().unwrap_or_else(PoisonError::into_inner);
            let (next, admission) = bucket.take(inner.rule, now_ms);
            *bucket = next;
            admission
        };
        if let Admission::Limited { .. } = admission
            && !inner.close.is_cancelled()
        {
            inner.close.cancel();
            inner
                .metrics
                .connection_refused(inner.listener_name, "client_resets");
            tracing::info!(
                terminal_id = terminal_id.unwrap_or("unknown"),
                per_second = inner.rule.per_second(),
                burst = inner.rule.burst(),
                "Connection closed: its client abandons calls faster than gateway.client_reset_limit allows."
            );
        }
    }

    /// Cancelled once the connection is to be closed.
    pub fn close_signal(&self) -> CancellationToken {
        self.inner.close.clone()
    }
}

/// A generated server whose calls, when dropped before their answer,
/// count against their connection's [`ClientResets`].
#[derive(Clone)]
pub struct CountResets<S> {
    inner: S,
}

impl<S> CountResets<S> {
    pub fn new(inner: S) -> Self {
        CountResets { inner }
    }
}

impl<S: NamedService> NamedService for CountResets<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: MessageLimits> MessageLimits for CountResets<S> {
    fn with_message_limits(self, decoding: usize, encoding: usize) -> Self {
        CountResets {
            inner: self.inner.with_message_limits(decoding, encoding),
        }
    }
}

impl<S> tower::Service<http::Request<Body>> for CountResets<S>
where
    S: tower::Service<http::Request<Body>>,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Only the edge's connections carry a bucket (a test may serve the
        // API on a plain listener).
        let call = request.extensions().get::<EdgeConnectInfo>().map(|info| {
            Arc::new(Call {
                resets: info.resets.clone(),
                terminal_id: info.terminal_id(),
                counted: AtomicBool::new(false),
            })
        });
        let request = match &call {
            Some(call) => {
                let call = call.clone();
                request.map(|body| Body::new(Watched { inner: body, call }))
            }
            None => request,
        };
        Counted {
            inner: self.inner.call(request),
            call,
        }
    }
}

/// One call of a connection with a bucket, counted at most once however
/// its abandonment shows.
struct Call {
    resets: ClientResets,
    terminal_id: Option<Arc<str>>,
    counted: AtomicBool,
}

impl Call {
    fn abandoned(&self) {
        if !self.counted.swap(true, Ordering::Relaxed) {
            self.resets.abandoned(self.terminal_id.as_deref());
        }
    }
}

/// A call's answer, counted as abandoned if dropped before it is ready.
pub struct Counted<F> {
    inner: F,
    /// `None` once answered.
    call: Option<Arc<Call>>,
}

impl<F: Future + Unpin> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let answer = std::task::ready!(Pin::new(&mut this.inner).poll(cx));
        this.call = None;
        Poll::Ready(answer)
    }
}

impl<F> Drop for Counted<F> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.abandoned();
        }
    }
}

/// A request body that counts its call as abandoned when it ends in the
/// client's reset of the stream.
struct Watched {
    inner: Body,
    call: Arc<Call>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(status))) = &polled
            && reset_by_client(status)
        {
            this.call.abandoned();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `status` comes from an HTTP/2 RST_STREAM the client sent,
/// whatever reason code it gave (the code is the client's to choose).
fn reset_by_client(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_reset() && h2.is_remote();
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resets(per_second: u32, burst: u32) -> ClientResets {
        ClientResets::new(
            RateRule::new(per_second, burst).unwrap(),
            Metrics::new(),
            "grpc",
        )
    }

    #[test]
    fn a_connection_is_closed_once_its_client_abandons_more_than_the_burst() {
        let resets = resets(10, 5);
        let close = resets.close_signal();
        for _ in 0..5 {
            resets.abandoned_at(0, Some("TERM0001"));
        }
        assert!(!close.is_cancelled(), "the burst is allowed");
        resets.abandoned_at(0, Some("TERM0001"));
        assert!(close.is_cancelled(), "one more closes the connection");
    }

    #[test]
    fn a_terminal_that_abandons_a_call_now_and_then_is_never_closed() {
        let resets = resets(10, 5);
        // One every 100 ms is the refill rate itself: never ahead of it.
        for n in 0..1_000 {
            resets.abandoned_at(n * 100, Some("TERM0001"));
        }
        assert!(!resets.close_signal().is_cancelled());
        // Faster than the refill, the burst runs out.
        for n in 0..10 {
            resets.abandoned_at(100_000 + n, Some("TERM0001"));
        }
        assert!(resets.close_signal().is_cancelled());
    }

    #[tokio::test]
    async fn an_answered_call_is_not_counted_and_an_abandoned_one_once() {
        let resets = resets(1, 1);
        let call = || {
            Some(Arc::new(Call {
                resets: resets.clone(),
                terminal_id: None,
                counted: AtomicBool::new(false),
            }))
        };
        for _ in 0..2 {
            let answered = Counted {
                inner: std::future::ready(()),
                call: call(),
            };
            answered.await;
        }
        assert!(
            !resets.close_signal().is_cancelled(),
            "answers take no token"
        );
        // A call seen abandoned twice (its body's reset, then its drop)
        // takes one token: the burst of one.
        let twice = call();
        twice.as_ref().expect("a call").abandoned();
        drop(Counted {
            inner: std::future::pending::<()>(),
            call: twice,
        });
        assert!(!resets.close_signal().is_cancelled(), "the burst of one");
        drop(Counted {
            inner: std::future::pending::<()>(),
            call: call(),
        });
        assert!(resets.close_signal().is_cancelled());
    }

    #[test]
    fn only_a_reset_the_client_sent_counts() {
        let remote: h2::Error = h2::Reason::NO_ERROR.into();
        // An h2::Error built from a reason is the library's own (local),
        // like a stream the server itself reset.
        assert!(!reset_by_client(&Status::from_error(Box::new(remote))));
        assert!(!reset_by_client(&Status::cancelled("deadline")));
    }
}
