//! The bucket math: one token bucket per key, kept as GCRA state (the "theoretical arrival time"
//! `tat`, at which the bucket is full again). A bucket of `requests` per `window` refills one token
//! every `window / requests` (the emission interval) and holds at most `requests` tokens; a request
//! of cost `c` fits when the bucket, after taking `c` tokens, is not over-full:
//! `max(tat, now) + c * interval - now <= window`. The same state is what instances share through
//! Redis ([`super::shared`]): consumption anywhere pushes `tat` forward by `c * interval`.

use std::time::{Duration, Instant};

use super::Decision;
use crate::config::RateLimit;

/// One key's bucket.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// When the bucket is full again (at or before now: full).
    pub tat: Instant,
    /// Tokens taken here and not yet reported to Redis.
    pub unsynced: u64,
    /// Last local use, for dropping idle buckets.
    pub used: Instant,
}

impl Bucket {
    /// A bucket that is `ahead` of full at `now` (zero: full).
    pub fn new(now: Instant, ahead: Duration) -> Bucket {
        Bucket { tat: now + ahead, unsynced: 0, used: now }
    }

    /// Takes `cost` tokens at `now` if they fit.
    pub fn take(&mut self, limit: RateLimit, cost: u32, now: Instant) -> Decision {
        self.used = now;
        if cost > limit.requests {
            return Decision::TooLarge;
        }
        let interval = limit.interval();
        let next = self.tat.max(now) + interval * cost;
        let ahead = next - now;
        if ahead > limit.window {
            return Decision::Limited { retry_after: ahead - limit.window };
        }
        self.tat = next;
        self.unsynced += u64::from(cost);
        let room = (limit.window - ahead).as_nanos() / interval.as_nanos();
        Decision::Allowed { remaining: u32::try_from(room).unwrap_or(u32::MAX) }
    }

    /// What [`Bucket::take`] would decide at `now`, leaving the bucket as it is.
    pub fn peek(&self, limit: RateLimit, cost: u32, now: Instant) -> Decision {
        let mut copy = *self;
        copy.take(limit, cost, now)
    }

    /// True when the bucket is full and nothing is left to report: dropping it loses nothing.
    pub fn idle(&self, now: Instant) -> bool {
        self.tat <= now && self.unsynced == 0
    }

    /// Merges the shared state learnt from Redis: the bucket is `ahead` of full at `now` counting
    /// every report so far; the tokens taken here since the report are added on top. The bucket
    /// never moves back (a lost report must not give tokens back twice).
    pub fn merge(&mut self, limit: RateLimit, ahead: Duration, now: Instant) {
        let pending = u32::try_from(self.unsynced).unwrap_or(u32::MAX);
        let shared = now + ahead + limit.interval() * pending;
        self.tat = self.tat.max(shared);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(s: &str) -> RateLimit {
        RateLimit::parse(s).unwrap()
    }

    #[test]
    fn a_full_bucket_allows_its_burst_then_one_token_per_interval() {
        let l = limit("10/15m");
        let t = Instant::now();
        let mut b = Bucket::new(t, Duration::ZERO);
        for i in 0..10 {
            assert_eq!(b.take(l, 1, t), Decision::Allowed { remaining: 9 - i });
        }
        assert_eq!(b.take(l, 1, t), Decision::Limited { retry_after: Duration::from_secs(90) });
        assert_eq!(
            b.take(l, 1, t + Duration::from_secs(89)),
            Decision::Limited { retry_after: Duration::from_secs(1) }
        );
        assert_eq!(b.take(l, 1, t + Duration::from_secs(90)), Decision::Allowed { remaining: 0 });
        assert_eq!(b.unsynced, 11);
        assert!(!b.idle(t + Duration::from_secs(990)));
        b.unsynced = 0;
        assert!(b.idle(t + Duration::from_secs(990)));
    }

    #[test]
    fn a_cost_takes_that_many_tokens_and_a_cost_over_the_burst_never_fits() {
        let l = limit("100/1s");
        let t = Instant::now();
        let mut b = Bucket::new(t, Duration::ZERO);
        assert_eq!(b.take(l, 60, t), Decision::Allowed { remaining: 40 });
        assert_eq!(b.take(l, 41, t), Decision::Limited { retry_after: Duration::from_millis(10) });
        assert_eq!(b.take(l, 40, t), Decision::Allowed { remaining: 0 });
        assert_eq!(b.take(l, 101, t + Duration::from_secs(60)), Decision::TooLarge);
        assert_eq!(b.take(l, 100, t + Duration::from_secs(60)), Decision::Allowed { remaining: 0 });
    }

    #[test]
    fn shared_consumption_merged_from_redis_lowers_the_local_allowance() {
        let l = limit("10/100s");
        let t = Instant::now();
        let mut b = Bucket::new(t, Duration::ZERO);
        assert_eq!(b.take(l, 1, t), Decision::Allowed { remaining: 9 });
        // Reported; Redis answers that all instances together took 6 tokens.
        b.unsynced = 0;
        b.merge(l, Duration::from_secs(60), t);
        // Meanwhile one more was taken here.
        assert_eq!(b.take(l, 1, t), Decision::Allowed { remaining: 3 });
        b.merge(l, Duration::from_secs(60), t);
        assert_eq!(b.take(l, 1, t), Decision::Allowed { remaining: 2 });
        // A Redis answer behind the local state (a lost report) does not give tokens back.
        b.unsynced = 0;
        b.merge(l, Duration::ZERO, t);
        assert_eq!(b.take(l, 3, t), Decision::Limited { retry_after: Duration::from_secs(10) });
    }

    #[test]
    fn a_bucket_created_from_the_shared_state_starts_where_the_others_left_it() {
        let l = limit("10/10m");
        let t = Instant::now();
        let mut b = Bucket::new(t, Duration::from_secs(600));
        assert_eq!(b.take(l, 1, t), Decision::Limited { retry_after: Duration::from_secs(60) });
        assert_eq!(b.unsynced, 0);
    }
}
