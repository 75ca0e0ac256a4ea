//! Plumbing every service of the switch uses the same way, so that each
//! service crate is a thin shell around `switch-core`:
//!
//! - [`config`]: layered configuration (defaults → file → `SWITCH__…`
//!   environment → validation naming the bad key) and `--dump-config`;
//! - [`telemetry`]: tracing, OpenTelemetry export over OTLP, and W3C trace
//!   context carried in gRPC metadata and Kafka headers;
//! - [`db`]: the PostgreSQL pool bound to one service's own schema;
//! - [`kafka`]: producer settings and idempotent topic creation;
//! - [`outbox`]: the transactional outbox and its relay to Kafka;
//! - [`consumer`]: Kafka consumers whose effects are idempotent on the event id;
//! - [`internal_tls`]: mutual TLS between services and the table of who
//!   may call which internal RPC (ADR 27);
//! - [`mtls`]: the internal servers' and clients' rustls configurations,
//!   reloaded when the certificate, key or service CA files change;
//! - [`reload`]: files loaded into one state, replaced when they change;
//! - [`grpc`]: rustls TLS files, reflection and the listener plumbing;
//! - [`service`]: the service kit: one gRPC server builder (TLS, health,
//!   reflection, limits, graceful drain with a grace timeout), one client
//!   builder (endpoint, timeouts, TLS, trace propagation) and the one
//!   `ServeError` of every service's `serve`;
//! - [`shutdown`]: the SIGTERM / Ctrl-C signal every `serve` stops on.

pub mod config;
pub mod consumer;
pub mod db;
pub mod every;
pub mod grpc;
pub mod internal_tls;
pub mod kafka;
pub mod mtls;
pub mod outbox;
pub mod reload;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod timestamps;
