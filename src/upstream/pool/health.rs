//! Whether a member may take requests: active HTTP checks (thresholds of consecutive
//! results), passive ejection after consecutive failures of real requests (with an
//! exponential back-off and a cap on how much of a pool may be out), an operator's drain,
//! and slow start after a recovery. Also the retry budget that keeps failover from
//! multiplying the load on a sick pool.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::config::{HealthCheckConfig, PassiveHealthConfig};

/// A member's health, behind its lock.
#[derive(Debug, Default)]
pub struct Health {
    /// Out after failing `unhealthy_threshold` active checks in a row.
    pub is_check_down: bool,
    check_passes: u32,
    check_failures: u32,
    /// Consecutive failed requests.
    failures: u32,
    pub ejected_until: Option<Instant>,
    /// Ejections in a row (each one longer), reset by a success after the last one ended.
    ejections: u32,
    /// When the member last came back (from an ejection or failed checks): slow start.
    recovered_at: Option<Instant>,
}

/// What an exchange with a member came to, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// No connection, no complete response head, or a 5xx.
    Failure,
    /// Neither (the request was refused before it was sent, or a client error).
    Neutral,
}

impl Health {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// Effective weight: `weight` scaled from a tenth to whole over `slow_start` after a
    /// recovery, in tenths so that small weights still ramp.
    pub fn effective_weight(&self, weight: u32, slow_start: Duration, now: Instant) -> u64 {
        let whole = u64::from(weight) * 10;
        let Some(since) = self
            .recovered_at
            .map(|at| now.saturating_duration_since(at))
        else {
            return whole;
        };
        if slow_start.is_zero() || since >= slow_start {
            return whole;
        }
        let share = since.as_secs_f64() / slow_start.as_secs_f64();
        ((whole as f64) * share.max(0.1)).ceil() as u64
    }

    /// Records a request's outcome; true when it ejects the member now. `may_eject`: the
    /// pool's cap on ejected members allows one more.
    pub fn record(
        &mut self,
        outcome: Outcome,
        passive: &PassiveHealthConfig,
        may_eject: bool,
        now: Instant,
    ) -> bool {
        match outcome {
            Outcome::Neutral => false,
            Outcome::Success => {
                self.failures = 0;
                if self.ejections > 0 && self.ejected_until.is_some_and(|until| now > until) {
                    self.ejections = 0;
                }
                false
            }
            Outcome::Failure => {
                self.failures += 1;
                let threshold = passive.consecutive_failures;
                if threshold == 0 || self.failures < threshold || self.is_ejected(now) || !may_eject
                {
                    return false;
                }
                self.failures = 0;
                self.ejections += 1;
                let doubling = 2u32.saturating_pow(self.ejections - 1);
                let length = passive
                    .ejection
                    .get()
                    .saturating_mul(doubling)
                    .min(passive.max_ejection.get());
                self.ejected_until = Some(now + length);
                self.recovered_at = Some(now + length);
                true
            }
        }
    }

    /// Records an active check; returns the new up/down state when it changed.
    pub fn record_check(
        &mut self,
        passed: bool,
        check: &HealthCheckConfig,
        now: Instant,
    ) -> Option<bool> {
        if passed {
            self.check_passes += 1;
            self.check_failures = 0;
            if self.is_check_down && self.check_passes >= check.healthy_threshold {
                self.is_check_down = false;
                self.recovered_at = Some(now);
                // A member the checks bring back is not still serving an ejection.
                self.ejected_until = None;
                return Some(true);
            }
        } else {
            self.check_failures += 1;
            self.check_passes = 0;
            if !self.is_check_down && self.check_failures >= check.unhealthy_threshold {
                self.is_check_down = true;
                return Some(false);
            }
        }
        None
    }
}

/// Retries a pool may still make (Finagle's budget): every request deposits `share` of a
/// retry, every retry withdraws a whole one, and the balance never exceeds `reserve`
/// retries. Over any stretch, retries stay within `share` of the requests plus `reserve`.
#[derive(Debug)]
pub struct RetryBudget {
    /// In thousandths of a retry.
    balance: AtomicI64,
    deposit: i64,
    cap: i64,
}

impl RetryBudget {
    pub fn new(share: f64, reserve: u32) -> RetryBudget {
        let cap = i64::from(reserve.max(1)) * 1000;
        RetryBudget {
            balance: AtomicI64::new(cap),
            deposit: (share * 1000.0).round() as i64,
            cap,
        }
    }

    /// A request was sent for the first time.
    pub fn deposit(&self) {
        let _ = self.balance.fetch_update(Relaxed, Relaxed, |balance| {
            Some((balance + self.deposit).min(self.cap))
        });
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_withdraw(&self) -> bool {
        self.balance
            .fetch_update(Relaxed, Relaxed, |balance| {
                (balance >= 1000).then_some(balance - 1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn passive(failures: u32) -> PassiveHealthConfig {
        PassiveHealthConfig {
            consecutive_failures: failures,
            ejection: HumanDuration(Duration::from_secs(10)),
            max_ejection: HumanDuration(Duration::from_secs(25)),
            max_ejected_share: 0.5,
            slow_start: HumanDuration(Duration::from_secs(20)),
        }
    }

    /// Consecutive failures eject; each further ejection doubles, up to the cap; a success
    /// in between starts the count again.
    #[test]
    fn ejections_back_off_exponentially_up_to_the_cap() {
        let config = passive(3);
        let start = Instant::now();
        let mut health = Health::default();
        let fail = |health: &mut Health, at| health.record(Outcome::Failure, &config, true, at);
        assert!(!fail(&mut health, start));
        assert!(!fail(&mut health, start));
        health.record(Outcome::Success, &config, true, start);
        assert!(!fail(&mut health, start));
        assert!(!fail(&mut health, start));
        assert!(fail(&mut health, start));
        assert_eq!(health.ejected_until, Some(start + Duration::from_secs(10)));
        let later = start + Duration::from_secs(11);
        assert!(!health.is_ejected(later));
        for _ in 0..2 {
            fail(&mut health, later);
        }
        assert!(fail(&mut health, later));
        assert_eq!(health.ejected_until, Some(later + Duration::from_secs(20)));
        let again = later + Duration::from_secs(21);
        for _ in 0..2 {
            fail(&mut health, again);
        }
        assert!(fail(&mut health, again));
        assert_eq!(health.ejected_until, Some(again + Duration::from_secs(25)));
        assert!(
            !Health::default().record(Outcome::Failure, &passive(1), false, start),
            "cap"
        );
    }

    /// Slow start: a tenth of the weight at recovery, whole after the ramp.
    #[test]
    fn slow_start_ramps_the_weight() {
        let config = passive(1);
        let start = Instant::now();
        let mut health = Health::default();
        health.record(Outcome::Failure, &config, true, start);
        let back = start + Duration::from_secs(10);
        let slow = config.slow_start.get();
        assert_eq!(health.effective_weight(2, slow, back), 2);
        assert_eq!(
            health.effective_weight(2, slow, back + Duration::from_secs(10)),
            10
        );
        assert_eq!(
            health.effective_weight(2, slow, back + Duration::from_secs(30)),
            20
        );
    }

    /// Retries stay within the share of requests plus the reserve.
    #[test]
    fn the_budget_bounds_retries() {
        let budget = RetryBudget::new(0.2, 10);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.try_withdraw() {
                retries += 1;
            }
        }
        assert!((200..=210).contains(&retries), "{retries}");
    }
}
