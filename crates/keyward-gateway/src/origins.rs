//! The web origins some key lets browsers call from: what a CORS preflight,
//! which carries no key, is answered by.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//! cannot name its key, so it is answered for an origin that any active
//! standard key lists; the request that follows carries the key and is
//! refused unless that key lists the origin (see `limits::admission`). The set
//! is read from storage and trusted for `ttl_ms`, and dropped at once when a
//! key's origins change (on another node: when its invalidation arrives, see
//! `crate::cluster`; without the bus, within `ttl_ms`).
//! Storage failures fail closed: no origin is listed.

use keyward_store::SharedStore;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

/// Origins listed by active keys, briefly cached.
pub struct ListedOrigins {
    store: SharedStore,
    ttl_ms: i64,
    cached: RwLock<Cached>,
}

#[derive(Default)]
struct Cached {
    loaded: Option<Loaded>,
    /// Bumped by every invalidation: a set read from storage before one is
    /// not kept after it.
    generation: u64,
}

struct Loaded {
    origins: Arc<BTreeSet<String>>,
    at_ms: i64,
}

impl ListedOrigins {
    /// Reads from `store`; a read is trusted for `ttl_ms` milliseconds.
    pub fn new(store: SharedStore, ttl_ms: i64) -> Self {
        Self {
            store,
            ttl_ms,
            cached: RwLock::default(),
        }
    }

    /// Does some active key list `origin` (canonical, as browsers send it)?
    pub async fn contains(&self, origin: &str, now_ms: i64) -> bool {
        self.current(now_ms).await.contains(origin)
    }

    /// Forgets the cached set; the next question reads storage.
    pub fn invalidate(&self) {
        let mut cached = self.cached.write().unwrap_or_else(|e| e.into_inner());
        cached.loaded = None;
        cached.generation += 1;
    }

    async fn current(&self, now_ms: i64) -> Arc<BTreeSet<String>> {
        let generation = {
            let cached = self.cached.read().unwrap_or_else(|e| e.into_inner());
            if let Some(l) = cached
                .loaded
                .as_ref()
                .filter(|l| now_ms - l.at_ms < self.ttl_ms)
            {
                return l.origins.clone();
            }
            cached.generation
        };
        let origins = match self.store.listed_origins(now_ms).await {
            Ok(list) => Arc::new(list.into_iter().collect::<BTreeSet<_>>()),
            Err(e) => {
                tracing::warn!(error = %e, "reading the keys' allowed origins failed; answering no preflight");
                return Arc::default();
            }
        };
        let mut cached = self.cached.write().unwrap_or_else(|e| e.into_inner());
        if cached.generation == generation {
            cached.loaded = Some(Loaded {
                origins: origins.clone(),
                at_ms: now_ms,
            });
        }
        origins
    }
}
