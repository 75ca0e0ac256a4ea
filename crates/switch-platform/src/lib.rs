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
//! - [`grpc`]: tonic servers with rustls TLS, health and reflection;
//! - [`shutdown`]: the SIGTERM / Ctrl-C signal every `serve` stops on.

pub mod config;
pub mod consumer;
pub mod db;
pub mod grpc;
pub mod kafka;
pub mod outbox;
pub mod shutdown;
pub mod telemetry;
pub mod timestamps;
