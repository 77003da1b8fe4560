//! Sign-in throttling shared by a cluster: failures counted through one node's
//! `RedisThrottleCounters` slow the same account down on another, spraying is
//! seen across nodes, and Redis out of reach falls back to counting per node.
//! Needs `KEYWARD_TEST_REDIS_URL` (skips with one line without it; fails
//! under `CI=true`).

use crate::support::redis_url;
use keyward_auth::throttle::{Decision, Throttle, ThrottleCounters};
use keyward_core::Clock;
use keyward_gateway::accounts::shared_throttle::RedisThrottleCounters;
use keyward_gateway::metrics::Metrics;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "kwtest:throttle:{}:{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn node(url: &str, prefix: &str) -> (Throttle, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let counters = RedisThrottleCounters::connect(url, prefix, metrics.clone()).unwrap();
    (Throttle::new(Arc::new(counters), Clock::system()), metrics)
}

#[tokio::test]
async fn guesses_spread_over_nodes_are_throttled_as_one() {
    let Some(url) = redis_url() else { return };
    let prefix = prefix();
    let (a, _) = node(&url, &prefix);
    let (b, _) = node(&url, &prefix);
    let source: IpAddr = "203.0.113.7".parse().unwrap();
    // Five free failures in all, wherever they land.
    for i in 0..5 {
        let on = if i % 2 == 0 { &a } else { &b };
        assert_eq!(on.check("alice@example.com", source).await, Decision::Allow);
        on.record_failure("alice@example.com", source).await;
    }
    a.record_failure("alice@example.com", source).await;
    assert!(
        matches!(
            b.check("alice@example.com", source).await,
            Decision::Throttled { .. }
        ),
        "the other node sees the account's failures"
    );
    // A right password on one node clears the account's count for all.
    b.record_success("alice@example.com", source).await;
    let other: IpAddr = "198.51.100.9".parse().unwrap();
    assert_eq!(a.check("alice@example.com", other).await, Decision::Allow);
}

#[tokio::test]
async fn spraying_from_one_source_is_seen_across_nodes() {
    let Some(url) = redis_url() else { return };
    let prefix = prefix();
    let metrics = Arc::new(Metrics::default());
    let a = RedisThrottleCounters::connect(&url, &prefix, metrics.clone()).unwrap();
    let b = RedisThrottleCounters::connect(&url, &prefix, metrics).unwrap();
    let now = Clock::system().now_ms();
    assert_eq!(a.add_distinct("spray", "acct-1", now, 60_000).await, 1);
    assert_eq!(b.add_distinct("spray", "acct-2", now, 60_000).await, 2);
    assert_eq!(a.add_distinct("spray", "acct-1", now, 60_000).await, 2);
    assert_eq!(b.distinct("spray", now).await, 2);
    // Members expire on the caller's clock.
    assert_eq!(b.distinct("spray", now + 60_001).await, 0);
    let f = a.add_failure("acct:x", now, 1_000).await;
    assert_eq!(f.count, 1);
    assert_eq!(b.add_failure("acct:x", now + 10, 1_000).await.count, 2);
    assert_eq!(a.failures("acct:x", now + 500).await.count, 2);
    assert_eq!(a.failures("acct:x", now + 2_000).await.count, 0, "expired");
    assert_eq!(
        b.add_failure("acct:x", now + 2_000, 1_000).await.count,
        1,
        "counts again from zero"
    );
}

#[tokio::test]
async fn redis_out_of_reach_counts_on_this_node_and_says_so() {
    // Nothing listens on port 1.
    let metrics = Arc::new(Metrics::default());
    let counters = RedisThrottleCounters::connect(
        "redis://:hunter2@127.0.0.1:1",
        "kwtest:down:",
        metrics.clone(),
    )
    .unwrap();
    let now = Clock::system().now_ms();
    assert_eq!(counters.add_failure("acct:y", now, 60_000).await.count, 1);
    assert_eq!(counters.add_failure("acct:y", now, 60_000).await.count, 2);
    assert_eq!(
        counters.failures("acct:y", now).await.count,
        2,
        "still throttled"
    );
    assert!(metrics.redis_errors.get() >= 3);
}

#[tokio::test]
async fn redis_keys_hold_no_email_address() {
    let Some(url) = redis_url() else { return };
    let prefix = prefix();
    let (a, _) = node(&url, &prefix);
    a.record_failure("carol@example.com", "192.0.2.1".parse().unwrap())
        .await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for k in keys {
        assert!(!k.contains("carol") && !k.contains("192.0.2.1"), "{k}");
    }
}
