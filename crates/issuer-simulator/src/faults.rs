//! The active fault plan: which requests it hits and when it expires.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use switch_proto::v1::FaultPlan;
use tokio::time::Instant;

/// Which RPC a request arrived on, for `reversals_only` / `authorizations_only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcKind {
    /// `IssuerService.Authorize`.
    Authorization,
    /// `IssuerService.Reverse`.
    Reversal,
}

/// What the active plan does to one matching request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fault {
    /// Delay before answering (applied before any other effect).
    pub latency: Duration,
    /// Never answer.
    pub no_response: bool,
    /// Answer UNAVAILABLE.
    pub outage: bool,
    /// Decline with this code instead of the normal rules (empty: no override).
    pub decline_code: String,
    /// Approve for half the amount ("10") where the rules approve.
    pub partial_approval: bool,
    /// Approve, then never answer.
    pub approve_then_hang: bool,
}

/// A plan with the instant it stops applying.
#[derive(Debug)]
struct ActivePlan {
    plan: FaultPlan,
    expires_at: Option<Instant>,
}

/// The shared fault plan. Cloning shares the same plan. The lock is a std
/// mutex held only to copy or replace the plan, never across an `.await`.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    active: Arc<Mutex<Option<ActivePlan>>>,
}

impl Faults {
    /// Replaces the active plan; an all-default plan clears faults.
    pub fn set(&self, plan: FaultPlan) {
        let next = (plan != FaultPlan::default()).then(|| ActivePlan {
            expires_at: (plan.window_ms > 0)
                .then(|| Instant::now() + Duration::from_millis(u64::from(plan.window_ms))),
            plan,
        });
        *self.lock() = next;
    }

    /// The fault to apply to a `kind` request with `stan`, if any. An expired
    /// plan is dropped on the way.
    pub fn for_request(&self, kind: RpcKind, stan: &str) -> Option<Fault> {
        let mut active = self.lock();
        let current = active.as_ref()?;
        if current
            .expires_at
            .is_some_and(|expires_at| Instant::now() >= expires_at)
        {
            *active = None;
            return None;
        }
        let plan = &current.plan;
        let applies_to_kind = match kind {
            RpcKind::Authorization => !plan.reversals_only || plan.authorizations_only,
            RpcKind::Reversal => !plan.authorizations_only || plan.reversals_only,
        };
        let applies_to_stan = plan.stans.is_empty() || plan.stans.iter().any(|s| s == stan);
        (applies_to_kind && applies_to_stan).then(|| Fault {
            latency: Duration::from_millis(u64::from(plan.latency_ms)),
            no_response: plan.no_response,
            outage: plan.outage,
            decline_code: plan.decline_code.clone(),
            partial_approval: plan.partial_approval,
            approve_then_hang: plan.approve_then_hang,
        })
    }

    /// The plan holds no data that a panicking holder could leave half
    /// updated (it is replaced whole), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Option<ActivePlan>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> FaultPlan {
        FaultPlan {
            decline_code: switch_core::ResponseCode::ISSUER_UNAVAILABLE
                .as_str()
                .to_owned(),
            ..FaultPlan::default()
        }
    }

    #[test]
    fn empty_plan_clears() {
        let faults = Faults::default();
        assert_eq!(faults.for_request(RpcKind::Authorization, "1"), None);
        faults.set(plan());
        assert!(faults.for_request(RpcKind::Authorization, "1").is_some());
        faults.set(FaultPlan::default());
        assert_eq!(faults.for_request(RpcKind::Authorization, "1"), None);
    }

    #[test]
    fn rpc_kind_selection() {
        let faults = Faults::default();
        let check = |reversals_only, authorizations_only| {
            faults.set(FaultPlan {
                reversals_only,
                authorizations_only,
                ..plan()
            });
            (
                faults.for_request(RpcKind::Authorization, "1").is_some(),
                faults.for_request(RpcKind::Reversal, "1").is_some(),
            )
        };
        assert_eq!(check(false, false), (true, true));
        assert_eq!(check(true, false), (false, true));
        assert_eq!(check(false, true), (true, false));
        assert_eq!(check(true, true), (true, true));
    }

    #[test]
    fn stan_filter() {
        let faults = Faults::default();
        faults.set(FaultPlan {
            stans: vec!["000007".to_owned(), "000009".to_owned()],
            ..plan()
        });
        assert!(
            faults
                .for_request(RpcKind::Authorization, "000007")
                .is_some()
        );
        assert!(faults.for_request(RpcKind::Reversal, "000009").is_some());
        assert!(
            faults
                .for_request(RpcKind::Authorization, "000008")
                .is_none()
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn window_expires() {
        let faults = Faults::default();
        faults.set(FaultPlan {
            window_ms: 30,
            ..plan()
        });
        assert!(faults.for_request(RpcKind::Authorization, "1").is_some());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(faults.for_request(RpcKind::Authorization, "1").is_none());
    }
}
