//! The active fault plans: which requests each hits and when it expires.

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

impl ActivePlan {
    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|expires_at| now >= expires_at)
    }

    /// Whether the plan matches a `kind` request with `stan`, before its
    /// share is drawn.
    fn matches(&self, kind: RpcKind, stan: &str) -> bool {
        let plan = &self.plan;
        let applies_to_kind = match kind {
            RpcKind::Authorization => !plan.reversals_only || plan.authorizations_only,
            RpcKind::Reversal => !plan.authorizations_only || plan.reversals_only,
        };
        applies_to_kind && (plan.stans.is_empty() || plan.stans.iter().any(|s| s == stan))
    }

    /// Draws whether a matching request is in the plan's share.
    fn drawn(&self) -> bool {
        self.plan.per_mille == 0 || rand::random_range(0..1000) < self.plan.per_mille
    }

    fn fault(&self) -> Fault {
        let plan = &self.plan;
        Fault {
            latency: Duration::from_millis(u64::from(plan.latency_ms)),
            no_response: plan.no_response,
            outage: plan.outage,
            decline_code: plan.decline_code.clone(),
            partial_approval: plan.partial_approval,
            approve_then_hang: plan.approve_then_hang,
        }
    }
}

/// The shared fault plans, in the order they were added. Cloning shares
/// them. The lock is a std mutex held only to read or replace the plans,
/// never across an `.await`.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    active: Arc<Mutex<Vec<ActivePlan>>>,
}

impl Faults {
    /// Replaces the active plans with `plan`, or adds it after them when
    /// it says `add`; an all-default plan clears every fault.
    pub fn set(&self, plan: FaultPlan) {
        let mut active = self.lock();
        if plan == FaultPlan::default() {
            active.clear();
            return;
        }
        if !plan.add {
            active.clear();
        }
        active.push(ActivePlan {
            expires_at: (plan.window_ms > 0)
                .then(|| Instant::now() + Duration::from_millis(u64::from(plan.window_ms))),
            plan,
        });
    }

    /// The fault to apply to a `kind` request with `stan`, if any: the
    /// first plan that matches it and draws it. Expired plans are dropped
    /// on the way.
    pub fn for_request(&self, kind: RpcKind, stan: &str) -> Option<Fault> {
        let mut active = self.lock();
        let now = Instant::now();
        active.retain(|plan| !plan.expired(now));
        active
            .iter()
            .find(|plan| plan.matches(kind, stan) && plan.drawn())
            .map(ActivePlan::fault)
    }

    /// Each plan is replaced or appended whole, so a panicking holder
    /// cannot leave one half updated: a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Vec<ActivePlan>> {
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

    #[test]
    fn added_plans_apply_in_order_and_a_plain_plan_replaces_them() {
        let faults = Faults::default();
        faults.set(FaultPlan {
            stans: vec!["000001".to_owned()],
            decline_code: "05".to_owned(),
            ..FaultPlan::default()
        });
        faults.set(FaultPlan {
            add: true,
            ..plan()
        });
        let code = |stan| {
            faults
                .for_request(RpcKind::Authorization, stan)
                .map(|f| f.decline_code)
        };
        assert_eq!(code("000001").as_deref(), Some("05"));
        assert_eq!(code("000002").as_deref(), Some("91"));
        faults.set(FaultPlan {
            stans: vec!["000001".to_owned()],
            ..plan()
        });
        assert_eq!(code("000001").as_deref(), Some("91"));
        assert_eq!(code("000002"), None);
    }

    #[test]
    fn a_share_applies_to_about_that_many_requests() {
        let faults = Faults::default();
        faults.set(FaultPlan {
            per_mille: 100,
            ..plan()
        });
        let hit = (0..20_000)
            .filter(|_| faults.for_request(RpcKind::Authorization, "1").is_some())
            .count();
        // 10% of 20,000 is 2,000 with a standard deviation of about 42:
        // these bounds are more than 7 deviations away.
        assert!((1_700..=2_300).contains(&hit), "{hit} of 20000 hit");
    }
}
