//! Brute force and spraying, with an injected clock: no test sleeps.

use keyward_auth::throttle::{Decision, LocalThrottleCounters, Throttle};
use keyward_core::Clock;
use std::net::IpAddr;
use std::sync::Arc;

fn throttle() -> (Throttle, Clock) {
    let clock = Clock::manual(1_800_000_000_000);
    (
        Throttle::new(Arc::new(LocalThrottleCounters::default()), clock.clone()),
        clock,
    )
}

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))
}

fn wait(d: Decision) -> u64 {
    match d {
        Decision::Allow => 0,
        Decision::Throttled { retry_after_secs } => retry_after_secs,
    }
}

#[tokio::test]
async fn delays_on_one_account_grow_and_expire_with_time() {
    let (t, clock) = throttle();
    for _ in 0..5 {
        assert_eq!(t.check("ada@example.com", ip(1)).await, Decision::Allow);
        t.record_failure("ada@example.com", ip(1)).await;
    }
    assert_eq!(
        t.check("ada@example.com", ip(1)).await,
        Decision::Allow,
        "five free"
    );
    let mut last = 0;
    for _ in 0..6 {
        t.record_failure("ada@example.com", ip(1)).await;
        let w = wait(t.check("ada@example.com", ip(1)).await);
        assert!(w > last, "{w} after {last}");
        last = w;
        clock.advance(w as i64 * 1_000);
        assert_eq!(t.check("ada@example.com", ip(1)).await, Decision::Allow);
    }
    // The same delay from another address: it is the account that waits.
    t.record_failure("ada@example.com", ip(1)).await;
    assert!(wait(t.check("ada@example.com", ip(2)).await) > 0);
    assert_eq!(t.check("bob@example.com", ip(2)).await, Decision::Allow);
    clock.advance(25 * 3_600_000);
    assert_eq!(
        t.check("ada@example.com", ip(1)).await,
        Decision::Allow,
        "forgotten after a day"
    );
}

#[tokio::test]
async fn one_source_failing_across_many_accounts_is_throttled_as_spraying() {
    let (t, clock) = throttle();
    let mut first_throttle = None;
    for n in 0..30 {
        let account = format!("user{n}@example.com");
        if let Decision::Throttled { retry_after_secs } = t.check(&account, ip(7)).await {
            first_throttle.get_or_insert((n, retry_after_secs));
            clock.advance(retry_after_secs as i64 * 1_000);
        }
        t.record_failure(&account, ip(7)).await;
    }
    let (n, secs) = first_throttle.expect("the sprayer was throttled");
    assert_eq!(
        n, 10,
        "after failing on 10 accounts, well before 20 failures"
    );
    assert!(secs >= 600, "and it waits long: {secs}");
    let w = wait(t.check("fresh@example.com", ip(7)).await);
    assert!(
        w >= 600,
        "the sprayer waits on an account it never tried: {w}"
    );
    assert_eq!(
        t.check("fresh@example.com", ip(8)).await,
        Decision::Allow,
        "others do not"
    );
}

#[tokio::test]
async fn many_sources_failing_on_one_account_throttle_that_account() {
    let (t, _clock) = throttle();
    for n in 0..50 {
        t.record_failure("ada@example.com", ip(100 + n)).await;
    }
    let w = wait(t.check("ada@example.com", ip(999)).await);
    assert!(w >= 600, "{w}");
    assert_eq!(t.check("bob@example.com", ip(999)).await, Decision::Allow);
}

#[tokio::test]
async fn the_account_locks_at_exactly_the_threshold_and_success_resets_the_count() {
    let (t, clock) = throttle();
    for n in 1..=99 {
        assert!(
            !t.record_failure("ada@example.com", ip(n)).await,
            "not yet at {n}"
        );
        clock.advance(1_000);
    }
    t.record_success("ada@example.com", ip(1)).await;
    for n in 1..=99 {
        assert!(!t.record_failure("ada@example.com", ip(n)).await);
    }
    assert!(
        t.record_failure("ada@example.com", ip(100)).await,
        "the 100th in a row locks"
    );
}

#[tokio::test]
async fn ipv6_sources_count_per_64() {
    let (t, _clock) = throttle();
    for n in 0..25u16 {
        let a: IpAddr = format!("2001:db8:1:2::{n:x}").parse().unwrap();
        t.record_failure(&format!("u{n}@example.com"), a).await;
    }
    let other_host_same_64: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
    assert!(wait(t.check("new@example.com", other_host_same_64).await) > 0);
    let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(t.check("new@example.com", other_64).await, Decision::Allow);
}
