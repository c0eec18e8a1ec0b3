//! Client-side write rate limit: a leaky bucket shared by every write fluxmedic makes, so a
//! storm of failures cannot turn into a storm of API writes.

use std::time::Duration;

use tokio::{sync::Mutex, time::Instant};

pub struct WriteLimiter {
    interval: Duration,
    burst: Duration,
    next: Mutex<Instant>,
}

impl WriteLimiter {
    /// `per_second` writes per second on average, up to `burst` at once.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let interval = Duration::from_secs_f64(1.0 / per_second.max(1) as f64);
        let burst = interval * burst.max(1);
        // Start with a full bucket.
        let now = Instant::now();
        WriteLimiter {
            interval,
            burst,
            next: Mutex::new(now.checked_sub(burst).unwrap_or(now)),
        }
    }

    /// Wait for a write slot; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let wait = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let earliest = now.checked_sub(self.burst).unwrap_or(now);
            let slot = (*next).max(earliest);
            *next = slot + self.interval;
            slot.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_paces() {
        let l = WriteLimiter::new(10, 5);
        let start = Instant::now();
        for _ in 0..5 {
            assert!(l.acquire().await.is_zero(), "the burst passes at once");
        }
        for _ in 0..10 {
            l.acquire().await;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(850) && elapsed <= Duration::from_millis(1100),
            "10 writes past the burst take about a second: {elapsed:?}"
        );
    }
}
