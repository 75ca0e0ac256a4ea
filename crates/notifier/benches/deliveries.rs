//! Delivery throughput of the notifier's worker against a local hyper
//! server on the real PostgreSQL (no broker: the deliveries are inserted
//! straight into the schema, all due at once).
//!
//! 1. `one_endpoint`: N deliveries to one endpoint (at most
//!    `max_in_flight_per_endpoint` = 8 requests at once).
//! 2. `fifty_endpoints`: N deliveries spread over 50 fast endpoints.
//! 3. `fifty_endpoints_and_a_slow_one`: the same, plus one endpoint that
//!    takes 5 s per request with a backlog of its own; the fast endpoints'
//!    throughput is compared with run 2.
//!
//! Each run prints one JSON line: deliveries per second (until the last one
//! is recorded as delivered) and the p50/p99 of the HTTP attempt (request
//! sent → 2xx answer, as recorded). `cargo bench -p notifier --bench
//! deliveries`; `NOTIFIER_BENCH_N` changes N (default 20,000).

// The report's percentages and rounding only; no money is computed here.
#![allow(clippy::float_arithmetic)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use notifier::{EndpointConfig, NotifierConfig, SERVICE_NAME, Worker};
use sqlx::PgPool;
use switch_platform::config::Secret;
use switch_platform::db::DatabaseConfig;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const FAST_ENDPOINTS: usize = 50;
const SLOW_REQUEST: Duration = Duration::from_secs(5);
const SLOW_BACKLOG: usize = 200;

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
}

/// Answers 200 at once, or after [`SLOW_REQUEST`] on `/slow`.
async fn start_server(counters: Arc<Counters>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counters = counters.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let counters = counters.clone();
                    async move {
                        let slow = request.uri().path() == "/slow";
                        let _ = request.into_body().collect().await;
                        counters.requests.fetch_add(1, Ordering::Relaxed);
                        if slow {
                            tokio::time::sleep(SLOW_REQUEST).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

struct Run {
    name: &'static str,
    /// (path, deliveries) per endpoint.
    endpoints: Vec<(String, usize)>,
}

#[derive(Debug)]
struct Report {
    fast_delivered: u64,
    fast_elapsed_ms: u64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn measure(addr: std::net::SocketAddr, run: &Run) -> Report {
    let database = DatabaseConfig {
        url: std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
        schema_prefix: format!("bench_{}_", &Uuid::new_v4().simple().to_string()[..8]),
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for(SERVICE_NAME);
    let pool = switch_platform::db::connect(&database, &schema)
        .await
        .unwrap();
    notifier::MIGRATOR.run(&pool).await.unwrap();
    let endpoints: Vec<EndpointConfig> = run
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, (path, _))| EndpointConfig {
            merchant_id: format!("BENCH{i:04}"),
            url: format!("http://{addr}{path}"),
            secret: Secret::new("whsec_benchmark_secret_0000000000"),
        })
        .collect();
    notifier::seed_endpoints(&pool, &endpoints).await.unwrap();
    for (i, (_, count)) in run.endpoints.iter().enumerate() {
        insert_due(&pool, &format!("BENCH{i:04}"), *count).await;
    }
    let fast_total: i64 = run
        .endpoints
        .iter()
        .filter(|(path, _)| path != "/slow")
        .map(|(_, n)| i64::try_from(*n).unwrap())
        .sum();

    let config = NotifierConfig::default();
    let stop = CancellationToken::new();
    let worker_pool = notifier::worker_pool(&pool).await.unwrap();
    let worker = Worker::new(
        worker_pool.clone(),
        config,
        Arc::new(Notify::new()),
        switch_core::SystemClock::shared(),
    )
    .unwrap();
    let started = Instant::now();
    let task = tokio::spawn(worker.run(stop.clone()));
    let fast_elapsed = loop {
        let delivered: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries d JOIN endpoints e USING (endpoint_id) \
             WHERE d.state = 'delivered' AND e.url NOT LIKE '%/slow'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if delivered >= fast_total {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{}: too slow",
            run.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.cancel();
    task.await.unwrap();
    worker_pool.close().await;
    let (p50, p99): (f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) \
         FROM (SELECT (EXTRACT(EPOCH FROM (delivered_at - last_attempt_at)) * 1000)::float8 AS ms \
               FROM deliveries d JOIN endpoints e USING (endpoint_id) \
               WHERE d.state = 'delivered' AND e.url NOT LIKE '%/slow') AS t",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    switch_platform::db::drop_schema(&database.url, &schema)
        .await
        .unwrap();
    Report {
        fast_delivered: u64::try_from(fast_total).unwrap(),
        fast_elapsed_ms: u64::try_from(fast_elapsed.as_millis()).unwrap().max(1),
        p50_ms: p50,
        p99_ms: p99,
    }
}

async fn insert_due(pool: &PgPool, merchant_id: &str, count: usize) {
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, merchant_id, endpoint_id, body, \
             occurred_at, next_attempt_at) \
         SELECT gen_random_uuid(), 'payment.reversed', $1, e.endpoint_id, \
                '{\"id\":\"' || gen_random_uuid() || '\",\"type\":\"payment.reversed\",\
\"created_at\":\"2026-11-24T16:00:00Z\",\"merchant_id\":\"' || $1 || '\",\"data\":{}}', \
                now(), now() \
         FROM endpoints e, generate_series(1, $2) \
         WHERE e.merchant_id = $1",
    )
    .bind(merchant_id)
    .bind(i32::try_from(count).unwrap())
    .execute(pool)
    .await
    .unwrap();
}

fn per_second(delivered: u64, elapsed_ms: u64) -> u64 {
    delivered * 1_000 / elapsed_ms
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`:
    // only check that it builds then, instead of running for a minute.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("deliveries: benchmark skipped (run it with `cargo bench`)");
        return;
    }
    let n: usize = std::env::var("NOTIFIER_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let counters = Arc::new(Counters::default());
    let addr = start_server(counters.clone()).await;
    let fast: Vec<(String, usize)> = (0..FAST_ENDPOINTS)
        .map(|i| (format!("/fast/{i}"), n / FAST_ENDPOINTS))
        .collect();
    let mut with_slow = fast.clone();
    with_slow.push(("/slow".to_owned(), SLOW_BACKLOG));
    let runs = [
        Run {
            name: "one_endpoint",
            endpoints: vec![("/one".to_owned(), n)],
        },
        Run {
            name: "fifty_endpoints",
            endpoints: fast,
        },
        Run {
            name: "fifty_endpoints_and_a_slow_one",
            endpoints: with_slow,
        },
    ];
    let mut baseline = None;
    for run in &runs {
        let report = measure(addr, run).await;
        let throughput = per_second(report.fast_delivered, report.fast_elapsed_ms);
        let mut line = serde_json::json!({
            "run": run.name,
            "deliveries": report.fast_delivered,
            "elapsed_ms": report.fast_elapsed_ms,
            "deliveries_per_s": throughput,
            "p50_ms": (report.p50_ms * 100.0).round() / 100.0,
            "p99_ms": (report.p99_ms * 100.0).round() / 100.0,
        });
        match run.name {
            "fifty_endpoints" => baseline = Some(throughput),
            "fifty_endpoints_and_a_slow_one" => {
                if let Some(baseline) = baseline {
                    line["fast_endpoints_per_s_without_slow"] = baseline.into();
                    line["fast_endpoints_per_s_with_slow"] = throughput.into();
                    // Negative: the fast endpoints lost throughput to the slow one.
                    let change = (throughput as f64 / baseline.max(1) as f64 - 1.0) * 100.0;
                    line["fast_throughput_change_pct"] = ((change * 10.0).round() / 10.0).into();
                }
            }
            _ => {}
        }
        println!("{line}");
    }
}
