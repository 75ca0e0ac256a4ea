//! Domain core of the payment switch.
//!
//! This crate owns the vocabulary every other crate speaks: money and
//! currencies, card data (PAN, expiry, masked and fingerprinted forms),
//! ISO 8583 identifiers and response codes (and, in `iso_response`, the
//! codes the ISO 8583 edge answers with when no authorization decided), the authorization lifecycle (the
//! legal transitions in `authorization`, and in `lifecycle` the decisions:
//! state, command and time in, next state and effects out), the reversal
//! handler's watch of every approval until its deadline (`watch`), the clock port,
//! duplicate (replay) detection, settlement (batch close,
//! upload reconciliation, the ledger's status order and eligibility at the
//! cut-off in `settlement::ledger`, fees) and payout files
//! (CSV and ISO 20022 pain.001 rendering), and who is told of an outcome
//! (`notify`: which webhook and terminal message an event owes, and how a
//! failed delivery is retried; `destination`: which addresses a webhook may
//! reach), the terminal edge's request-rate rule (`rate`: a token bucket
//! per terminal), and the QR payment lifecycle (`qr`: pay, order, query,
//! notification, cancel, close and refund decided for both QR modes, S3's
//! orphans by the merchant's policy). It performs no I/O
//! and has no async code, so every rule here can be tested exhaustively and
//! reused unchanged by the gateway, the authorization service and the tools.

pub mod authorization;
pub mod card;
pub mod clock;
pub mod destination;
pub mod error;
pub mod ids;
pub mod iso_response;
pub mod lifecycle;
pub mod money;
pub mod notify;
pub mod operator;
pub mod orphan;
pub mod payout;
pub mod qr;
pub mod rate;
pub mod replay;
pub mod response_code;
pub mod settlement;
pub mod watch;

pub use authorization::*;
pub use card::*;
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use error::*;
pub use ids::*;
pub use iso_response::{IsoRefusal, ResponseCodes};
pub use money::*;
pub use operator::{MAX_OPERATOR_TEXT, operator_text};
pub use orphan::*;
pub use payout::*;
pub use rate::{Admission, RateRule, RateRuleError, TokenBucket};
pub use replay::*;
pub use response_code::*;
pub use settlement::*;
pub use watch::{
    OrphanFound, Verdict, Watch, WatchCommand, WatchDecision, WatchEffect, WatchOutcome,
    WatchRefusal, WatchRetry,
};
