//! A real HTTP server (hyper) standing in for a merchant's webhook
//! endpoint: it records every request it receives and answers with the
//! status the test chooses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as the endpoint saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub signature: String,
    pub event_id: String,
    pub body: Vec<u8>,
    pub at: Instant,
    /// What the endpoint answered.
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a webhook body is JSON")
    }
}

#[derive(Clone)]
pub struct WebhookReceiver {
    pub address: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    /// How long each answer is held back, in ms.
    delay_ms: Arc<AtomicU64>,
    /// Requests that arrived, answered or not yet.
    arrived: Arc<AtomicUsize>,
}

impl WebhookReceiver {
    /// Listens on a free local port; answers 200 until told otherwise.
    pub async fn start() -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let receiver = WebhookReceiver {
            address: listener.local_addr().expect("a bound address"),
            received: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::default(),
            arrived: Arc::default(),
        };
        let serving = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let serving = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let serving = serving.clone();
                        async move { Ok::<_, Infallible>(serving.answer(request).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        receiver
    }

    pub fn url(&self) -> String {
        format!("http://{}/webhooks", self.address)
    }

    /// The status every following request is answered with.
    pub fn answer_with(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Holds every following answer back by `delay`: a slow merchant.
    pub fn answer_after(&self, delay: std::time::Duration) {
        self.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// How many requests arrived, whether answered yet or not.
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("not poisoned").clone()
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (signature, event_id) = (header("switch-signature"), header("switch-event-id"));
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes().to_vec(),
            Err(_) => Vec::new(),
        };
        let status = self.status.load(Ordering::SeqCst);
        self.received.lock().expect("not poisoned").push(Received {
            signature,
            event_id,
            body,
            at: Instant::now(),
            status,
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        response
    }
}
