//! OpenTelemetry end to end (issue 16, part 5): every service a `switchd`
//! process exporting OTLP to a real OTLP/gRPC receiver in this test (the
//! collector's own protocol, `opentelemetry-proto`'s servers). One sale
//! through the gateway that the terminal never acknowledges becomes an
//! orphan the reversal handler reverses; its spans arrive from the gateway,
//! authorization, the issuer (both calls), and the reversal handler, in one
//! trace whose every span's parent is in it (the context crossed gRPC
//! metadata and Kafka), and the SLO metrics arrive with their names, kinds
//! and units.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dev_certs::{DEFAULT_TERMINALS, DevPki};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::resource::v1::Resource;
use switch_e2e::v1::terminal_service_client::TerminalServiceClient;
use switch_e2e::v1::{AuthorizationStatus, FaultPlan};
use switch_e2e::{
    SwitchdProcess, VISA, database_url, free_address, sale, switchd_env, unique_suffix,
};
use switch_platform::db::DatabaseConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status};

/// One exported span, with the service that exported it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

/// One exported metric: service, name, unit and kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReceivedMetric {
    service: String,
    name: String,
    unit: String,
    kind: &'static str,
}

#[derive(Default, Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    metrics: Arc<Mutex<HashSet<ReceivedMetric>>>,
}

fn service_of(resource: Option<&Resource>) -> String {
    resource
        .into_iter()
        .flat_map(|r| &r.attributes)
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|value| match value {
            Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = service_of(resource.resource.as_ref());
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut metrics = self.metrics.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            let service = service_of(resource.resource.as_ref());
            for scope in resource.scope_metrics {
                for metric in scope.metrics {
                    let kind = match &metric.data {
                        Some(Data::Sum(sum)) if sum.is_monotonic => "counter",
                        Some(Data::Sum(_)) => "up_down_counter",
                        Some(Data::Gauge(_)) => "gauge",
                        Some(Data::Histogram(_)) => "histogram",
                        Some(Data::ExponentialHistogram(_)) => "exponential_histogram",
                        Some(Data::Summary(_)) => "summary",
                        None => "none",
                    };
                    metrics.insert(ReceivedMetric {
                        service: service.clone(),
                        name: metric.name,
                        unit: metric.unit,
                        kind,
                    });
                }
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn start_receiver(stop: &CancellationToken) -> (std::net::SocketAddr, Receiver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let receiver = Receiver::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .add_service(MetricsServiceServer::new(receiver.clone()))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        );
    tokio::spawn(server);
    (address, receiver)
}

async fn within<T>(what: &str, seconds: u64, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orphaned_sale_is_one_trace_across_every_service_and_the_slo_metrics_arrive() {
    let prefix = unique_suffix();
    let stop = CancellationToken::new();
    let (otlp, receiver) = start_receiver(&stop).await;
    let certs = std::env::temp_dir().join(format!("telemetry-{prefix}"));
    let pki = DevPki::generate().unwrap();
    pki.write_dev_layout(&certs, DEFAULT_TERMINALS).unwrap();
    let path = |name: &str| certs.join(name).display().to_string();
    let (issuer, authorization, gateway, handler) = (
        free_address().await,
        free_address().await,
        free_address().await,
        free_address().await,
    );
    let env = switchd_env(
        &prefix,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500".to_owned()),
            ("SWITCH__TELEMETRY__LOG_LEVEL", "info".to_owned()),
            ("SWITCH__ISSUER_SIMULATOR__LISTEN", issuer.to_string()),
            ("SWITCH__AUTHORIZATION__LISTEN", authorization.to_string()),
            (
                "SWITCH__AUTHORIZATION__ISSUER_ENDPOINT",
                format!("http://{issuer}"),
            ),
            (
                "SWITCH__AUTHORIZATION__OUTBOX__POLL_INTERVAL_MS",
                "100".to_owned(),
            ),
            (
                "SWITCH__AUTHORIZATION__REVERSAL__POLL_INTERVAL_MS",
                "50".to_owned(),
            ),
            ("SWITCH__GATEWAY__LISTEN", gateway.to_string()),
            (
                "SWITCH__GATEWAY__AUTHORIZATION_ENDPOINT",
                format!("http://{authorization}"),
            ),
            ("SWITCH__GATEWAY__TLS__CERT_PATH", path("server.pem")),
            ("SWITCH__GATEWAY__TLS__KEY_PATH", path("server.key")),
            ("SWITCH__GATEWAY__TLS__CLIENT_CA_PATH", path("ca.pem")),
            ("SWITCH__REVERSAL_HANDLER__LISTEN", handler.to_string()),
            (
                "SWITCH__REVERSAL_HANDLER__AUTHORIZATION_ENDPOINT",
                format!("http://{authorization}"),
            ),
            ("SWITCH__REVERSAL_HANDLER__ACK_WINDOW_MS", "1000".to_owned()),
            (
                "SWITCH__REVERSAL_HANDLER__SWEEP_INTERVAL_MS",
                "50".to_owned(),
            ),
        ],
    );
    let mut processes = Vec::new();
    for (service, address, health) in [
        ("issuer-simulator", issuer, ""),
        ("authorization", authorization, ""),
        ("terminal-gateway", gateway, ""),
        ("reversal-handler", handler, ""),
    ] {
        let mut process = SwitchdProcess::spawn(service, &env);
        if service != "terminal-gateway" {
            process.wait_until_healthy(address, health).await;
        }
        processes.push(process);
    }
    // No fault: the issuer approves at once.
    switch_e2e::v1::issuer_control_client::IssuerControlClient::connect(format!("http://{issuer}"))
        .await
        .unwrap()
        .set_faults(FaultPlan::default())
        .await
        .unwrap();

    let cert = pki.terminal_cert("TERM0001", "MERCHANT0000001").unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_cert_pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
    let mut terminal = TerminalServiceClient::new(
        Endpoint::from_shared(format!("https://127.0.0.1:{}", gateway.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_lazy(),
    );
    let record = within("the gateway to serve a sale", 60, async || {
        terminal
            .sale(sale("TERM0001", "000501", VISA, 4_200))
            .await
            .ok()
            .and_then(|response| response.into_inner().authorization)
    })
    .await;
    assert_eq!(record.status(), AuthorizationStatus::Approved);

    // Never acknowledged: reversed once its window has passed.
    let database = DatabaseConfig {
        url: database_url(),
        schema_prefix: format!("{prefix}_"),
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for(authorization::SERVICE_NAME);
    let journal = switch_platform::db::connect(&database, &schema)
        .await
        .unwrap();
    within("the orphan reversed", 60, async || {
        let state: String =
            sqlx::query_scalar("SELECT state FROM authorizations WHERE transaction_id = $1::uuid")
                .bind(&record.transaction_id)
                .fetch_one(&journal)
                .await
                .unwrap();
        (state == "reversed").then_some(())
    })
    .await;

    // The sale's trace: the gateway's server span is its root.
    let wanted: [(&str, &str); 9] = [
        ("terminal-gateway", "gateway.sale"),
        ("authorization", "authorization.authorize"),
        ("authorization", "issuer.authorize"),
        ("issuer-simulator", "issuer_simulator.authorize"),
        // From the approval's event on Kafka to the handler's request.
        ("reversal-handler", "reversal_handler.request"),
        ("authorization", "authorization.reverse"),
        ("authorization", "authorization.reversal_attempt"),
        ("authorization", "issuer.reverse"),
        ("issuer-simulator", "issuer_simulator.reverse"),
    ];
    let trace = within("every span of the sale's trace", 30, async || {
        let spans = receiver.spans.lock().unwrap().clone();
        let root = spans
            .iter()
            .find(|s| s.service == "terminal-gateway" && s.name == wanted[0].1)?;
        let trace: Vec<ReceivedSpan> = spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .cloned()
            .collect();
        wanted
            .iter()
            .all(|(service, name)| {
                trace
                    .iter()
                    .any(|s| s.service == *service && s.name == *name)
            })
            .then_some(trace)
    })
    .await;
    let ids: HashSet<&[u8]> = trace.iter().map(|s| s.span_id.as_slice()).collect();
    let roots: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(
        roots.len(),
        1,
        "one root, the terminal's request: {roots:#?}"
    );
    assert_eq!(roots[0].name, wanted[0].1);
    for span in &trace {
        assert!(
            span.parent_span_id.is_empty() || ids.contains(span.parent_span_id.as_slice()),
            "{}'s span {} has a parent {} outside the trace {}",
            span.service,
            span.name,
            hex(&span.parent_span_id),
            hex(&span.trace_id)
        );
    }
    // The issuer's side is the child of the switch's call to it.
    let by_id: HashMap<&[u8], &ReceivedSpan> =
        trace.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    for (client, server) in [
        ("issuer.authorize", "issuer_simulator.authorize"),
        ("issuer.reverse", "issuer_simulator.reverse"),
    ] {
        let served = trace
            .iter()
            .find(|s| s.service == "issuer-simulator" && s.name == server)
            .unwrap();
        assert_eq!(
            by_id[served.parent_span_id.as_slice()].name,
            client,
            "{server} is the child of {client}"
        );
    }

    // The SLO metrics, with their kinds and units.
    let expected = [
        ("authorization", "authorization.decisions", "", "counter"),
        (
            "authorization",
            "authorization.issuer.latency",
            "ms",
            "histogram",
        ),
        (
            "authorization",
            "authorization.reversal.attempts",
            "",
            "counter",
        ),
        (
            "reversal-handler",
            "reversal_handler.orphans_detected",
            "",
            "counter",
        ),
        (
            "reversal-handler",
            "reversal_handler.orphans_reversed",
            "",
            "counter",
        ),
        (
            "reversal-handler",
            "reversal_handler.deadline_to_reversed",
            "ms",
            "histogram",
        ),
        (
            "reversal-handler",
            "reversal_handler.orphans_overdue",
            "",
            "gauge",
        ),
        // What a terminal waits, and the gauges of what is owed, queued
        // and behind (issue 16, part 5).
        (
            "terminal-gateway",
            "gateway.request.duration",
            "ms",
            "histogram",
        ),
        (
            "authorization",
            "authorization.reversal.oldest_pending",
            "ms",
            "gauge",
        ),
        (
            "authorization",
            "authorization.reversal.dead_lettered",
            "",
            "gauge",
        ),
        ("authorization", "outbox.backlog", "", "gauge"),
        ("authorization", "outbox.oldest_unpublished", "ms", "gauge"),
        ("reversal-handler", "consumer.lag", "", "gauge"),
        (
            "reversal-handler",
            "consumer.dead_letters.open",
            "",
            "gauge",
        ),
    ];
    let received = |metrics: &HashSet<ReceivedMetric>, (service, name, unit, kind)| {
        metrics.contains(&ReceivedMetric {
            service: String::from(service),
            name: String::from(name),
            unit: String::from(unit),
            kind,
        })
    };
    // Exported every 500 ms; the assertions below name what is missing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let metrics = receiver.metrics.lock().unwrap().clone();
        if expected.iter().all(|m| received(&metrics, *m)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = receiver.metrics.lock().unwrap().clone();
    for (service, name, unit, kind) in expected {
        assert!(
            received(&metrics, (service, name, unit, kind)),
            "{service} exported {name} ({kind}, unit {unit:?}); got {:#?}",
            metrics
                .iter()
                .filter(|m| m.name == name)
                .collect::<Vec<_>>()
        );
    }

    for mut process in processes {
        assert!(process.terminate().success(), "{} exits", process.service);
    }
    stop.cancel();
    journal.close().await;
    let _ = std::fs::remove_dir_all(&certs);
    for service in [
        authorization::SERVICE_NAME,
        terminal_gateway::SERVICE_NAME,
        reversal_handler::SERVICE_NAME,
    ] {
        let _ =
            switch_platform::db::drop_schema(&database.url, &database.schema_for(service)).await;
    }
}
