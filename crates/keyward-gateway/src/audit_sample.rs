//! Audit events that a caller can cause at will (rejected unauthenticated
//! requests, token mints) are folded: the first of a kind in a window is written,
//! the rest of that window are only counted and reported with the next written
//! one. A flood then costs a few rows, not one per request, and cannot push real
//! events out of the audit list; metrics still count every occurrence.

use crate::FastMap as HashMap;
use std::sync::Mutex;

/// Most kinds tracked at once; past it, kinds whose window is over are dropped.
const MAX_KINDS: usize = 4096;

/// Folds events by kind over a window.
pub struct AuditSampler {
    window_ms: i64,
    slots: Mutex<HashMap<String, Slot>>,
}

struct Slot {
    window_start: i64,
    folded: u64,
}

impl AuditSampler {
    /// A sampler that writes at most one event per kind per `window_ms`.
    pub fn new(window_ms: i64) -> Self {
        Self {
            window_ms,
            slots: Mutex::default(),
        }
    }

    /// Whether to write an event of `kind` now. `Some(n)`: write it, and say that
    /// `n` events of the same kind were folded since the last one written.
    /// `None`: only count it. `kind` is chosen by the server (an action, maybe
    /// with an id), never by the caller, so the map stays small.
    pub fn sample(&self, kind: &str, now_ms: i64) -> Option<u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(kind) {
            if now_ms - slot.window_start < self.window_ms {
                slot.folded += 1;
                return None;
            }
            let folded = slot.folded;
            *slot = Slot {
                window_start: now_ms,
                folded: 0,
            };
            return Some(folded);
        }
        if slots.len() >= MAX_KINDS {
            let window = self.window_ms;
            slots.retain(|_, s| now_ms - s.window_start < window);
        }
        slots.insert(
            kind.to_owned(),
            Slot {
                window_start: now_ms,
                folded: 0,
            },
        );
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_one_event_per_window_and_reports_the_rest() {
        let s = AuditSampler::new(1000);
        assert_eq!(s.sample("leak.rejected", 0), Some(0));
        for t in 1..500 {
            assert_eq!(s.sample("leak.rejected", t), None);
        }
        assert_eq!(s.sample("other", 10), Some(0), "kinds are independent");
        assert_eq!(s.sample("leak.rejected", 1000), Some(499));
        assert_eq!(s.sample("leak.rejected", 1001), None);
    }

    #[test]
    fn the_map_of_kinds_stays_bounded() {
        let s = AuditSampler::new(10);
        for i in 0..(3 * MAX_KINDS) {
            s.sample(&format!("k{i}"), (i as i64) * 10);
        }
        assert!(s.slots.lock().unwrap().len() <= MAX_KINDS);
    }
}
