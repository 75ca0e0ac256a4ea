//! Logs, traces and metrics.
//!
//! Logs go to stdout as text or JSON through `tracing`. Spans are also
//! OpenTelemetry spans, exported over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and metrics likewise. Trace context
//! crosses process boundaries as W3C `traceparent` in gRPC metadata, Kafka
//! headers and the event envelope, so one trace links a terminal's request,
//! its authorization and every event it caused.

use std::collections::HashMap;
use std::io;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::ConfigError;

/// Environment variable that switches OTLP export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// An `EnvFilter` directive, e.g. `info` or `info,authorization=debug`.
    pub log_level: String,
    pub log_format: LogFormat,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_level: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

impl TelemetryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        EnvFilter::try_new(&self.log_level)
            .map(|_| ())
            .map_err(|e| ConfigError::invalid("telemetry.log_level", e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter could not be built: {0}")]
    Exporter(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Flushes and shuts the exporters down when dropped, so the last spans of
/// a stopping service are not lost.
pub struct TelemetryGuard {
    tracer_provider: SdkTracerProvider,
    meter_provider: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.tracer_provider.shutdown();
        if let Some(meters) = &self.meter_provider {
            let _ = meters.shutdown();
        }
    }
}

/// Installs the global subscriber writing to stdout.
pub fn init(
    service_name: &str,
    config: &TelemetryConfig,
) -> Result<TelemetryGuard, TelemetryError> {
    init_with_writer(service_name, config, io::stdout)
}

/// Installs the global subscriber writing to `writer`; tests use it to
/// capture every log line (to prove no card number is ever logged).
pub fn init_with_writer<W>(
    service_name: &str,
    config: &TelemetryConfig,
    writer: W,
) -> Result<TelemetryGuard, TelemetryError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let export = std::env::var(OTLP_ENDPOINT_ENV).is_ok_and(|v| !v.is_empty());

    let mut tracer_builder = SdkTracerProvider::builder().with_resource(resource.clone());
    let mut meter_provider = None;
    if export {
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        tracer_builder = tracer_builder.with_batch_exporter(spans);
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let meters = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_periodic_exporter(metrics)
            .build();
        opentelemetry::global::set_meter_provider(meters.clone());
        meter_provider = Some(meters);
    }
    let tracer_provider = tracer_builder.build();
    let tracer = tracer_provider.tracer(service_name.to_owned());
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());

    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt_layer = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_target(true)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    if export {
        tracing::info!(service = service_name, "OTLP export enabled.");
    }
    Ok(TelemetryGuard {
        tracer_provider,
        meter_provider,
    })
}

/// The W3C trace context of the current span: (`traceparent`, `tracestate`).
/// Empty strings when there is no sampled span.
pub fn current_trace_context() -> (String, String) {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    (
        carrier.remove("traceparent").unwrap_or_default(),
        carrier.remove("tracestate").unwrap_or_default(),
    )
}

/// Makes `span` a child of the context carried in a `traceparent` string
/// (from a Kafka header or an event envelope).
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str, tracestate: &str) {
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if !tracestate.is_empty() {
        carrier.insert("tracestate".to_owned(), tracestate.to_owned());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}

/// Links `span` to the context carried in a `traceparent` string: how a
/// span that applies many events at once (a batch) stays reachable from
/// each event's trace, where it cannot be every event's child.
pub fn link_traceparent(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::TraceContextExt as _;
    if traceparent.is_empty() || span.is_disabled() {
        return;
    }
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    let linked = TraceContextPropagator::new().extract(&carrier);
    let context = linked.span().span_context().clone();
    if context.is_valid() {
        span.add_link(context);
    }
}

/// A span for one gRPC call received, already a child of the caller's span
/// (from the request metadata). The parent must be set before the span is
/// entered — OpenTelemetry refuses to re-parent a started span — so create
/// it with this and run the handler inside it (`.instrument(span)`).
pub fn server_span(rpc: &'static str, metadata: &MetadataMap) -> tracing::Span {
    let span = tracing::info_span!("grpc.server", otel.name = rpc, rpc);
    let parent = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    let _ = span.set_parent(parent);
    span
}

/// A tonic client interceptor that sends the current trace context along.
pub fn propagate_trace_context(
    mut request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    TraceContextPropagator::new().inject_context(
        &tracing::Span::current().context(),
        &mut MetadataInjector(request.metadata_mut()),
    );
    Ok(request)
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|entry| match entry {
                KeyAndValueRef::Ascii(key, _) => Some(key.as_str()),
                KeyAndValueRef::Binary(..) => None,
            })
            .collect()
    }
}
