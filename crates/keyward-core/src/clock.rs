//! Time as the rest of keyward sees it: UTC, milliseconds since the Unix epoch.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// A source of the current time, injectable so tests can move time without sleeping.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    fixed: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self { fixed: None }
    }

    /// A clock frozen at `now_ms` that tests move with [`Clock::advance`].
    pub fn manual(now_ms: i64) -> Self {
        Self {
            fixed: Some(Arc::new(AtomicI64::new(now_ms))),
        }
    }

    /// Moves a manual clock forward; no effect on the system clock.
    pub fn advance(&self, ms: i64) {
        if let Some(t) = &self.fixed {
            t.fetch_add(ms, Ordering::SeqCst);
        }
    }

    /// Milliseconds since the Unix epoch, UTC.
    pub fn now_ms(&self) -> i64 {
        match &self.fixed {
            Some(t) => t.load(Ordering::SeqCst),
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        }
    }
}

/// Start of the UTC hour containing `ms`.
pub fn hour_start(ms: i64) -> i64 {
    ms - ms.rem_euclid(3_600_000)
}

/// Start of the UTC day containing `ms`.
pub fn day_start(ms: i64) -> i64 {
    ms - ms.rem_euclid(86_400_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance(500);
        assert_eq!(c.now_ms(), 1_500);
    }

    #[test]
    fn buckets_align_to_utc() {
        // 2026-11-26T18:15:03.123Z
        let t = 1_795_716_903_123;
        assert_eq!(hour_start(t), 1_795_716_000_000);
        assert_eq!(day_start(t), 1_795_651_200_000);
    }
}
