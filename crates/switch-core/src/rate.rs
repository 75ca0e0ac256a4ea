//! The request-rate rule of the terminal edge: a token bucket per terminal.
//!
//! A terminal may send `burst` requests at once and `per_second` on average
//! after that. The bucket is a value and [`TokenBucket::take`] a pure
//! function of it, the rule and the time (milliseconds on a monotonic clock
//! the caller owns), so the gRPC edge, the ISO 8583 edge and the tests all
//! run the same rule. Tokens are counted in thousandths so refilling needs
//! no floating point: `per_second` tokens a second is exactly `per_second`
//! thousandths a millisecond.

/// Thousandths of a token in one token.
const MILLI: u64 = 1_000;

/// How fast a terminal may call: `per_second` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRule {
    per_second: u32,
    burst: u32,
}

/// Why a [`RateRule`] cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RateRuleError {
    /// A bucket that never refills would refuse a terminal forever.
    #[error("per_second must be at least 1")]
    NoRefill,
    /// A bucket holding no token would refuse every request.
    #[error("burst must be at least 1")]
    NoBurst,
}

impl RateRule {
    pub fn new(per_second: u32, burst: u32) -> Result<RateRule, RateRuleError> {
        if per_second == 0 {
            return Err(RateRuleError::NoRefill);
        }
        if burst == 0 {
            return Err(RateRuleError::NoBurst);
        }
        Ok(RateRule { per_second, burst })
    }

    pub fn per_second(self) -> u32 {
        self.per_second
    }

    pub fn burst(self) -> u32 {
        self.burst
    }

    fn capacity(self) -> u64 {
        u64::from(self.burst) * MILLI
    }
}

/// What the bucket says to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Refused; one token is back after `retry_after_ms`.
    Limited {
        retry_after_ms: u64,
    },
}

/// One terminal's bucket: the tokens it held (in thousandths) at `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    millitokens: u64,
    at_ms: u64,
}

impl TokenBucket {
    /// The bucket of a terminal not seen before: full, so a terminal that
    /// just connected is never refused its first `burst` requests.
    pub fn full(rule: RateRule, now_ms: u64) -> TokenBucket {
        TokenBucket {
            millitokens: rule.capacity(),
            at_ms: now_ms,
        }
    }

    /// Whole tokens held at the last decision.
    pub fn tokens(self) -> u64 {
        self.millitokens / MILLI
    }

    /// Refills the bucket up to `now_ms`, then takes one token if there is
    /// one. A time before the last decision refills nothing (the clock is
    /// monotonic; this only keeps a confused caller from minting tokens).
    /// The rule may differ from the previous call's (a merchant override
    /// reloaded): the bucket is then clamped to the new capacity.
    pub fn take(self, rule: RateRule, now_ms: u64) -> (TokenBucket, Admission) {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        let gained = elapsed.saturating_mul(u64::from(rule.per_second));
        let millitokens = self.millitokens.saturating_add(gained).min(rule.capacity());
        let at_ms = self.at_ms.max(now_ms);
        if millitokens >= MILLI {
            (
                TokenBucket {
                    millitokens: millitokens - MILLI,
                    at_ms,
                },
                Admission::Admitted,
            )
        } else {
            let missing = MILLI - millitokens;
            let per_ms = u64::from(rule.per_second);
            (
                TokenBucket { millitokens, at_ms },
                Admission::Limited {
                    retry_after_ms: missing.div_ceil(per_ms),
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(per_second: u32, burst: u32) -> RateRule {
        RateRule::new(per_second, burst).unwrap()
    }

    #[test]
    fn a_rule_must_refill_and_hold_a_token() {
        assert_eq!(RateRule::new(0, 5), Err(RateRuleError::NoRefill));
        assert_eq!(RateRule::new(5, 0), Err(RateRuleError::NoBurst));
    }

    #[test]
    fn a_full_bucket_admits_its_burst_then_says_when_to_retry() {
        let rule = rule(10, 3);
        let mut bucket = TokenBucket::full(rule, 1_000);
        for _ in 0..3 {
            let (next, admission) = bucket.take(rule, 1_000);
            assert_eq!(admission, Admission::Admitted);
            bucket = next;
        }
        let (bucket, admission) = bucket.take(rule, 1_000);
        // 10 a second: one token every 100 ms.
        assert_eq!(
            admission,
            Admission::Limited {
                retry_after_ms: 100
            }
        );
        assert!(!bucket.take(rule, 1_099).1.is_admitted());
        assert_eq!(bucket.take(rule, 1_100).1, Admission::Admitted);
    }

    #[test]
    fn a_smaller_override_clamps_a_fuller_bucket() {
        let generous = rule(100, 100);
        let strict = rule(1, 2);
        let bucket = TokenBucket::full(generous, 0);
        let (bucket, _) = bucket.take(strict, 0);
        assert_eq!(bucket.tokens(), 1);
    }

    #[test]
    fn time_going_backwards_mints_nothing() {
        let rule = rule(1, 1);
        let (bucket, first) = TokenBucket::full(rule, 5_000).take(rule, 5_000);
        assert_eq!(first, Admission::Admitted);
        assert!(!bucket.take(rule, 0).1.is_admitted());
    }

    impl Admission {
        fn is_admitted(self) -> bool {
            self == Admission::Admitted
        }
    }

    proptest! {
        /// However requests are spread, no window admits more than the
        /// burst plus what the window refilled.
        #[test]
        fn admissions_never_exceed_burst_plus_refill(
            per_second in 1_u32..2_000,
            burst in 1_u32..200,
            gaps in proptest::collection::vec(0_u64..50, 1..400),
        ) {
            let rule = rule(per_second, burst);
            let start = 10_000;
            let mut now = start;
            let mut bucket = TokenBucket::full(rule, now);
            let mut admitted = 0_u64;
            for gap in gaps {
                now += gap;
                let (next, admission) = bucket.take(rule, now);
                bucket = next;
                if admission == Admission::Admitted {
                    admitted += 1;
                }
                let refilled = (now - start) * u64::from(per_second) / MILLI;
                prop_assert!(admitted <= u64::from(burst) + refilled);
                prop_assert!(bucket.tokens() <= u64::from(burst));
            }
        }

        /// A refusal's `retry_after_ms` is exact: a request then is
        /// admitted, and (when the wait is more than a millisecond) one a
        /// millisecond earlier is not.
        #[test]
        fn retry_after_is_exact(
            per_second in 1_u32..5_000,
            burst in 1_u32..20,
            at in 0_u64..1_000_000,
        ) {
            let rule = rule(per_second, burst);
            let mut bucket = TokenBucket::full(rule, at);
            for _ in 0..burst {
                bucket = bucket.take(rule, at).0;
            }
            let (bucket, admission) = bucket.take(rule, at);
            let Admission::Limited { retry_after_ms } = admission else {
                return Err(TestCaseError::fail("an empty bucket admitted a request"));
            };
            prop_assert!(retry_after_ms >= 1);
            prop_assert_eq!(bucket.take(rule, at + retry_after_ms).1, Admission::Admitted);
            if retry_after_ms > 1 {
                prop_assert!(!bucket.take(rule, at + retry_after_ms - 1).1.is_admitted());
            }
        }

        /// A terminal that waits long enough always gets its whole burst
        /// back, and never more.
        #[test]
        fn an_idle_terminal_gets_exactly_its_burst_back(
            per_second in 1_u32..1_000,
            burst in 1_u32..100,
            idle_ms in 0_u64..10_000_000,
        ) {
            let rule = rule(per_second, burst);
            let mut bucket = TokenBucket::full(rule, 0);
            for _ in 0..burst {
                bucket = bucket.take(rule, 0).0;
            }
            let later = idle_ms + u64::from(burst) * MILLI;
            let mut admitted = 0_u32;
            loop {
                let (next, admission) = bucket.take(rule, later);
                bucket = next;
                if admission != Admission::Admitted {
                    break;
                }
                admitted += 1;
            }
            prop_assert_eq!(admitted, burst);
        }
    }
}
