//! Client-side write rate limit: a leaky bucket shared by every write fluxmedic makes, so a
//! storm of failures cannot turn into a storm of API writes. It is also the write gate of
//! leader election: once this replica no longer holds the Lease, every write is refused at
//! its slot, so a pass in progress stops writing at once instead of when it ends.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use tokio::{sync::Mutex, time::Instant};

pub struct WriteLimiter {
    interval: Duration,
    burst: Duration,
    next: Mutex<Instant>,
    allowed: AtomicBool,
}

/// A write refused because this replica is not (or no longer) the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not the leader: writes are held back until this replica holds the Lease")]
pub struct NotLeader;

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
            allowed: AtomicBool::new(true),
        }
    }

    /// Open or close the gate (leader election).
    pub fn set_allowed(&self, allowed: bool) {
        self.allowed.store(allowed, Ordering::SeqCst);
    }

    pub fn allowed(&self) -> bool {
        self.allowed.load(Ordering::SeqCst)
    }

    /// Wait for a write slot; returns how long it waited, or [`NotLeader`] if the gate is
    /// closed before or after the wait.
    pub async fn acquire(&self) -> Result<Duration, NotLeader> {
        if !self.allowed() {
            return Err(NotLeader);
        }
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
        if !self.allowed() {
            return Err(NotLeader);
        }
        Ok(wait)
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
            assert!(
                l.acquire().await.unwrap().is_zero(),
                "the burst passes at once"
            );
        }
        for _ in 0..10 {
            l.acquire().await.unwrap();
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(850) && elapsed <= Duration::from_millis(1100),
            "10 writes past the burst take about a second: {elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_gate_refuses_even_a_write_already_waiting() {
        let l = std::sync::Arc::new(WriteLimiter::new(1, 1));
        // Use up the burst, so the next write waits for its slot.
        while l.acquire().await.unwrap().is_zero() {}
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await }
        });
        tokio::task::yield_now().await;
        l.set_allowed(false);
        assert_eq!(waiting.await.unwrap(), Err(NotLeader));
        assert_eq!(l.acquire().await, Err(NotLeader));
        l.set_allowed(true);
        assert!(l.acquire().await.is_ok());
    }
}
