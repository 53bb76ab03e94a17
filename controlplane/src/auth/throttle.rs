//! A token bucket: lets through `rate` events a second on average and
//! `burst` at once. The auth layer uses it so a flood of unknown tokens
//! cannot turn into a flood of quorum reads, nor rotate the audit history
//! away with 401 lines.

use std::sync::Mutex;
use std::time::Instant;

/// A token bucket, safe to share between requests.
pub struct Bucket {
    rate: f64,
    burst: f64,
    /// (tokens left, when they were counted)
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn new(rate_per_sec: f64, burst: u32) -> Bucket {
        Bucket {
            rate: rate_per_sec,
            burst: f64::from(burst),
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&self) -> bool {
        self.try_take_at(Instant::now())
    }

    fn try_take_at(&self, now: Instant) -> bool {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(g.1).as_secs_f64();
        g.0 = (g.0 + elapsed * self.rate).min(self.burst);
        g.1 = now;
        if g.0 >= 1.0 {
            g.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lets_a_burst_through_then_the_rate() {
        let b = Bucket::new(10.0, 5);
        let t0 = Instant::now();
        let first: usize = (0..100).filter(|_| b.try_take_at(t0)).count();
        assert_eq!(first, 5, "the burst");
        // One second later: ten more (the rate), never more than the burst.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| b.try_take_at(t1)).count(), 5);
        let t2 = t1 + Duration::from_millis(300);
        assert_eq!((0..100).filter(|_| b.try_take_at(t2)).count(), 3);
    }
}
