//! Fault injection: what the platform does wrong until told otherwise. Set
//! in-process through [`Faults::set`] or over HTTPS with
//! `POST /control/faults` (the same JSON); an all-default plan clears.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

/// Who wins when the shopper's payment and a close arrive together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaceWinner {
    /// The order is paid first: the close is refused `ORDERPAID` and the
    /// order stays paid (and is notified).
    Payment,
    /// The order is closed first: the shopper's payment bounces.
    Close,
}

/// The active faults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultPlan {
    /// Every platform endpoint answers 503 `SYSTEMERROR` (control does not).
    pub outage: bool,
    /// New connections are closed as soon as they are accepted.
    pub refuse_connections: bool,
    /// `/v1/query` never answers: the caller's deadline fires.
    pub query_hangs: bool,
    /// A notification due is dropped for good: never delivered, never
    /// retried; only a query finds the payment.
    pub lose_notifications: bool,
    /// Each notification attempt is sent twice.
    pub duplicate_notifications: bool,
    /// A new notification's first attempt waits this long more.
    pub notification_delay_ms: u64,
    /// A close of an unpaid order races the shopper's payment; `None`: the
    /// shopper follows the amount's rule.
    pub close_races_payment: Option<RaceWinner>,
}

/// The shared plan; cloning shares it. The std mutex is held only to copy
/// or replace the plan, never across an `.await`.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    plan: Arc<Mutex<FaultPlan>>,
}

impl Faults {
    /// Replaces the plan.
    pub fn set(&self, plan: FaultPlan) {
        *self.lock() = plan;
    }

    /// Changes part of the plan.
    pub fn update(&self, change: impl FnOnce(&mut FaultPlan)) {
        change(&mut self.lock());
    }

    /// A copy of the plan now.
    pub fn current(&self) -> FaultPlan {
        self.lock().clone()
    }

    /// The plan is replaced whole: a poisoned lock holds a whole plan.
    fn lock(&self) -> MutexGuard<'_, FaultPlan> {
        self.plan.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_parses_from_json_strictly_and_an_empty_one_clears() {
        let faults = Faults::default();
        let plan: FaultPlan =
            serde_json::from_str(r#"{"outage":true,"close_races_payment":"payment"}"#)
                .expect("parses");
        faults.set(plan);
        let current = faults.current();
        assert!(current.outage);
        assert_eq!(current.close_races_payment, Some(RaceWinner::Payment));
        assert!(serde_json::from_str::<FaultPlan>(r#"{"outgae":true}"#).is_err());
        faults.set(serde_json::from_str("{}").expect("parses"));
        assert_eq!(faults.current(), FaultPlan::default());
    }
}
