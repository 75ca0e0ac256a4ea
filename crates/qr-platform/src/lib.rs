//! The QR payment platform's protocol, as the acquirer (the switch) and the
//! platform (the simulator, `crates/qr-simulator`) both speak it: the JSON
//! messages ([`messages`]), their HMAC signatures ([`signature`]) and the
//! acquirer's HTTPS client with the check of a notification ([`client`]).
//! It is modelled on WeChat Pay, Alipay and UnionPay QR: consumer-presented
//! payments (`/v1/pay` with the shopper's scanned payment code) and
//! merchant-presented orders (`/v1/orders`, whose answer carries the code's
//! content), then query, cancel (reverse), close and refund, and signed
//! asynchronous notifications when an order is paid.
//!
//! This crate owns the wire shape and what a call's outcome means; it runs
//! no server and decides nothing about a payment's lifecycle (that is
//! `switch_core`'s). ADR 0024 records the choices.

pub mod client;
pub mod messages;
pub mod signature;

pub use client::{
    CallError, ClientBuildError, ClientConfig, NotificationError, QrClient, Unknown,
    VerifiedNotification, verify_notification,
};
pub use messages::*;
pub use signature::{
    DEFAULT_TOLERANCE_S, NONCE_HEADER, SIGNATURE_HEADER, SignatureError, Signed, TIMESTAMP_HEADER,
    Verified,
};
