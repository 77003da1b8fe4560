//! Cluster mode's shared counters: several `RedisCounters` on one Redis and
//! one key prefix, each standing for a gateway node. Every test uses a prefix
//! of its own, so they run side by side on one Redis.

use crate::support::redis_url;
use keyward_core::{Budget, BudgetScope, KeyId, Micros, Period, ProjectId};
use keyward_gateway::error::GatewayError;
use keyward_gateway::limits::budgets::{Account, CostBound, ThresholdCrossed};
use keyward_gateway::limits::counters::{Charge, Charged, Refusal};
use keyward_gateway::limits::held::{Permit, Reservation};
use keyward_gateway::limits::rate::{Limits, Subject};
use keyward_gateway::limits::shared::SharedCountersError;
use keyward_gateway::limits::{Counters, LocalCounters, RedisCounters};
use keyward_gateway::metrics::Metrics;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A key prefix no other test (or test run) uses.
fn prefix() -> String {
    format!("kwtest:{}", keyward_core::base62::random(12))
}

/// Crossed thresholds, as a node's alerts receive them.
type Crossings = Arc<Mutex<Vec<ThresholdCrossed>>>;

/// One node's counters, its metrics and the thresholds it raised.
struct Node {
    counters: Arc<RedisCounters>,
    metrics: Arc<Metrics>,
    crossed: Crossings,
}

impl Node {
    async fn start(url: &str, prefix: &str, lease: Duration) -> Node {
        let metrics = Arc::new(Metrics::default());
        let crossed: Crossings = Arc::default();
        let sink = crossed.clone();
        let counters = RedisCounters::connect(
            url,
            prefix,
            lease,
            metrics.clone(),
            Box::new(move |c| sink.lock().unwrap().extend(c)),
        )
        .await
        .expect("connect to the test Redis");
        Node {
            counters: Arc::new(counters),
            metrics,
            crossed,
        }
    }

    /// A node that takes shares of the limits, each for `ttl`.
    async fn sharing(url: &str, prefix: &str, ttl: Duration) -> Node {
        let mut node = Node::start(url, prefix, Duration::from_secs(30)).await;
        let counters = Arc::into_inner(node.counters).expect("only this one");
        node.counters = Arc::new(counters.with_shares(ttl));
        node
    }

    /// Waits until every share of this node was given back and applied.
    async fn shares_given_back(&self) {
        while self.counters.shares_open() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.counters.flush().await;
    }

    fn dyn_counters(&self) -> Arc<dyn Counters> {
        self.counters.clone()
    }
}

/// `n` nodes on one prefix, or `None` when the tests are skipped.
async fn cluster(n: usize, lease: Duration) -> Option<(Vec<Node>, String)> {
    let url = redis_url()?;
    let prefix = prefix();
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Node::start(&url, &prefix, lease).await);
    }
    Some((nodes, prefix))
}

/// A raw connection, for what a test does to Redis behind the nodes' backs.
async fn raw() -> redis::aio::MultiplexedConnection {
    let url = redis_url().expect("checked by cluster()");
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Deletes every key under `prefix`: Redis restarted empty, as far as these
/// counters can tell (a real FLUSHALL would wipe the tests running beside).
async fn wipe(prefix: &str) {
    let mut con = raw().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut con)
        .await
        .unwrap();
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut con)
            .await
            .unwrap();
    }
}

fn budget(scope: BudgetScope, amount: i64, thresholds: Vec<u32>) -> Arc<Budget> {
    Arc::new(Budget {
        scope,
        amount_micros: Micros(amount),
        period: Period::Day,
        soft_thresholds: thresholds,
    })
}

fn project_scope() -> BudgetScope {
    BudgetScope::Project(ProjectId::generate().to_string())
}

/// A bound of exactly `micros` (a fixed route cost).
fn fixed(micros: i64) -> CostBound {
    CostBound {
        input_e6: i128::from(micros) * 1_000_000,
        output_price: 0,
        requested_output: Some(0),
        model_max_output: None,
    }
}

fn key_subject(limits: Limits) -> Vec<(Subject, Limits)> {
    vec![(Subject::Key(KeyId::generate()), limits)]
}

/// Charges, loading unloaded accounts (with `spent`) as admission does.
async fn charge_loading(
    counters: &dyn Counters,
    charge: Charge<'_>,
    spent: i64,
) -> Result<Charged, Refusal> {
    for _ in 0..3 {
        match counters.charge(charge).await {
            Err(Refusal::Unloaded(ids)) => {
                for id in ids {
                    counters.load(id, spent, charge.now_ms).await;
                }
            }
            other => return other,
        }
    }
    panic!("accounts loaded three times and still unloaded");
}

#[tokio::test]
async fn all_or_nothing_across_nodes_and_rate_limited_wins_over_exhausted() {
    let Some((nodes, _)) = cluster(2, Duration::from_secs(30)).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let subjects = vec![
        (
            Subject::Key(KeyId::generate()),
            Limits {
                rpm: Some(1),
                max_concurrent: Some(1),
                ..Limits::default()
            },
        ),
        (
            Subject::Project(ProjectId::generate()),
            Limits {
                rpm: Some(10),
                ..Limits::default()
            },
        ),
    ];
    let project = budget(project_scope(), 1_000_000, vec![]);
    let budgets = [(project.clone(), 0)];
    let id = (project.scope.clone(), 0);
    let charge = |micros| Charge {
        subjects: &subjects,
        estimated_tokens: 0,
        reserve: Some((&budgets, fixed(micros))),
        now_ms: 0,
    };
    // Unloaded on one node, loaded there, and the other node sees it loaded.
    let unloaded = a.counters.charge(charge(1)).await.err();
    assert!(
        matches!(&unloaded, Some(Refusal::Unloaded(ids)) if *ids == [id.clone()]),
        "{unloaded:?}"
    );
    a.counters.load(id.clone(), 999_999, 0).await;
    // A second load (another node read storage at the same time) changes nothing.
    b.counters.load(id.clone(), 0, 0).await;
    assert_eq!(
        b.counters.account(&id).await,
        Account {
            spent: 999_999,
            reserved: 0
        }
    );
    // Two micro-dollars do not fit in the one left: refused on node B, and
    // neither the key's one request a minute nor its slot is consumed.
    let over = b.counters.charge(charge(2)).await.err();
    assert!(
        matches!(&over, Some(Refusal::Exhausted(e)) if e.remaining == 1 && e.needed == 2 && e.scope == project.scope),
        "{over:?}"
    );
    let charged = a.counters.charge(charge(1)).await.expect("fits");
    assert_eq!(charged.held, 1);
    assert_eq!(charged.headers.requests.map(|r| r.remaining), Some(0));
    assert_eq!(
        b.counters.account(&id).await,
        Account {
            spent: 999_999,
            reserved: 1
        }
    );
    // Both rate-limited (one a minute, slot held) and over budget: told it
    // is rate-limited, and the project's allowance is untouched.
    let both = b.counters.charge(charge(5)).await.err();
    let Some(Refusal::RateLimited(r)) = both else {
        panic!("{both:?}")
    };
    assert_eq!(
        r.message,
        "Rate limit reached for this key: 1 requests per minute."
    );
    assert_eq!(r.retry_after_ms, 60_000);
    let project_only = vec![subjects[1].clone()];
    let alone = b
        .counters
        .charge(Charge {
            subjects: &project_only,
            estimated_tokens: 0,
            reserve: None,
            now_ms: 0,
        })
        .await
        .expect("the project has nine left");
    assert_eq!(alone.headers.requests.map(|r| r.remaining), Some(8));
}

/// A small deterministic generator, so a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn limit(&mut self, max: u64) -> Option<u32> {
        (self.below(3) > 0).then(|| 1 + self.below(max) as u32)
    }
}

/// What one admitted request holds, on both implementations.
struct Held {
    local: (Permit, Option<Reservation>),
    shared: (Permit, Option<Reservation>),
}

#[tokio::test]
async fn shared_counters_answer_as_local_counters_do() {
    let Some((nodes, _)) = cluster(2, Duration::from_secs(30)).await else {
        return;
    };
    let local: Arc<dyn Counters> = Arc::new(LocalCounters::default());
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..40 {
        let key = Subject::Key(KeyId::generate());
        let project = Subject::Project(ProjectId::generate());
        let key_limits = Limits {
            rpm: rng.limit(5),
            tpm: rng.limit(400),
            max_concurrent: rng.limit(3),
        };
        let project_limits = Limits {
            rpm: rng.limit(8),
            tpm: rng.limit(600),
            max_concurrent: rng.limit(4),
        };
        let mut subjects = vec![(key, key_limits), (project, project_limits)];
        subjects.retain(|(_, l)| !l.is_empty());
        let budgets: Vec<(Arc<Budget>, i64)> = (0..rng.below(3))
            .map(|_| {
                let amount = rng.below(3_000) as i64;
                (
                    budget(project_scope(), amount, vec![25, 50, 80, 100]),
                    86_400_000,
                )
            })
            .collect();
        let spent_before = rng.below(500) as i64;
        let mut now = 1_800_000_000_000_i64;
        let mut open: Vec<Held> = Vec::new();
        for step in 0..30 {
            now += rng.below(8_000) as i64;
            let estimated = rng.below(200) as i64;
            let bound = CostBound {
                input_e6: i128::from(rng.below(300)) * 1_000_000 + i128::from(rng.below(1_000_000)),
                output_price: [0, 1, 3_000_000, 7_777_777][rng.below(4) as usize],
                requested_output: (rng.below(2) == 0).then(|| rng.below(100) as i64),
                model_max_output: (rng.below(2) == 0).then(|| rng.below(400) as i64),
            };
            let reserve = (!budgets.is_empty()).then_some((budgets.as_slice(), bound));
            let charge = Charge {
                subjects: &subjects,
                estimated_tokens: estimated,
                reserve,
                now_ms: now,
            };
            let node = &nodes[step % 2];
            let want = charge_loading(local.as_ref(), charge, spent_before).await;
            let got = charge_loading(node.counters.as_ref(), charge, spent_before).await;
            assert_eq!(
                format!("{got:?}"),
                format!("{want:?}"),
                "round {round} step {step}"
            );
            if let (Ok(w), Ok(g)) = (want, got) {
                let hold = |c: Arc<dyn Counters>, held: i64| {
                    (
                        Permit::new(c.clone(), subjects.clone(), estimated, w.headers),
                        reserve.map(|_| Reservation::new(c, budgets.clone(), held)),
                    )
                };
                open.push(Held {
                    local: hold(local.clone(), w.held),
                    shared: hold(node.dyn_counters(), g.held),
                });
            }
            // End some of the open requests, the same way on both.
            while !open.is_empty() && rng.below(3) == 0 {
                let i = rng.below(open.len() as u64) as usize;
                let held = open.swap_remove(i);
                let how = rng.below(3);
                let used = rng.below(300) as i64;
                let cost = rng.below(400) as i64;
                for (mut permit, reservation) in [held.local, held.shared] {
                    match how {
                        0 => drop((permit, reservation)), // refused upstream
                        _ => {
                            permit.commit();
                            permit.finish(used);
                            if let Some(r) = reservation {
                                r.settle(cost);
                            }
                        }
                    }
                }
            }
            for node in &nodes {
                node.counters.flush().await;
            }
            for (b, start) in &budgets {
                let id = (b.scope.clone(), *start);
                assert_eq!(
                    nodes[1 - step % 2].counters.account(&id).await,
                    local.account(&id).await,
                    "round {round} step {step}"
                );
            }
        }
    }
    for node in &nodes {
        assert_eq!(node.metrics.redis_errors.get(), 0, "no disagreement logged");
    }
}

#[tokio::test]
async fn concurrent_charges_from_three_nodes_never_overspend_a_budget() {
    let Some((nodes, _)) = cluster(3, Duration::from_secs(30)).await else {
        return;
    };
    let project = budget(project_scope(), 20_000, vec![]);
    let id = (project.scope.clone(), 0);
    let budgets = Arc::new(vec![(project.clone(), 0)]);
    // Nothing is loaded: the burst also races to load the account.
    let mut burst = Vec::new();
    for i in 0..300 {
        let counters = nodes[i % 3].dyn_counters();
        let budgets = budgets.clone();
        burst.push(tokio::spawn(async move {
            let charge = Charge {
                subjects: &[],
                estimated_tokens: 0,
                reserve: Some((&budgets, fixed(1_000))),
                now_ms: 0,
            };
            match charge_loading(counters.as_ref(), charge, 0).await {
                Ok(c) => Some(Reservation::new(counters, budgets.to_vec(), c.held)),
                Err(Refusal::Exhausted(_)) => None,
                Err(other) => panic!("{other:?}"),
            }
        }));
    }
    let mut admitted = Vec::new();
    for task in burst {
        admitted.extend(task.await.unwrap());
    }
    assert_eq!(admitted.len(), 20, "a budget of 20 requests admits 20");
    assert_eq!(
        nodes[0].counters.account(&id).await,
        Account {
            spent: 0,
            reserved: 20_000
        }
    );
    for r in admitted {
        r.settle(1_000);
    }
    for node in &nodes {
        node.counters.flush().await;
    }
    assert_eq!(
        nodes[2].counters.account(&id).await,
        Account {
            spent: 20_000,
            reserved: 0
        }
    );
    let after = nodes[1]
        .counters
        .charge(Charge {
            subjects: &[],
            estimated_tokens: 0,
            reserve: Some((&budgets, fixed(1))),
            now_ms: 0,
        })
        .await
        .err();
    assert!(matches!(after, Some(Refusal::Exhausted(e)) if e.remaining == 0));
}

/// Charges `subjects` from `n` concurrent tasks spread over the nodes; returns
/// the permits of those admitted.
async fn burst(nodes: &[Node], subjects: &[(Subject, Limits)], n: usize) -> Vec<Permit> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let counters = nodes[i % nodes.len()].dyn_counters();
        let subjects = subjects.to_vec();
        tasks.push(tokio::spawn(async move {
            let charge = Charge {
                subjects: &subjects,
                estimated_tokens: 0,
                reserve: None,
                now_ms: 1_800_000_000_000,
            };
            match counters.charge(charge).await {
                Ok(c) => {
                    let mut p = Permit::new(counters, subjects, 0, c.headers);
                    p.commit();
                    Some(p)
                }
                Err(Refusal::RateLimited(_)) => None,
                Err(other) => panic!("{other:?}"),
            }
        }));
    }
    let mut admitted = Vec::new();
    for t in tasks {
        admitted.extend(t.await.unwrap());
    }
    admitted
}

#[tokio::test]
async fn rate_limit_holds_for_the_cluster_not_per_node() {
    let Some((nodes, _)) = cluster(3, Duration::from_secs(30)).await else {
        return;
    };
    let subjects = key_subject(Limits {
        rpm: Some(10),
        ..Limits::default()
    });
    let admitted = burst(&nodes, &subjects, 30).await;
    assert_eq!(admitted.len(), 10, "10 a minute for the cluster");
    // Finished requests keep counting toward the minute.
    drop(admitted);
    for node in &nodes {
        node.counters.flush().await;
    }
    assert!(burst(&nodes, &subjects, 3).await.is_empty());
}

#[tokio::test]
async fn concurrency_limit_holds_cluster_wide() {
    let Some((nodes, _)) = cluster(3, Duration::from_secs(30)).await else {
        return;
    };
    let subjects = key_subject(Limits {
        max_concurrent: Some(2),
        ..Limits::default()
    });
    let mut admitted = burst(&nodes, &subjects, 30).await;
    assert_eq!(admitted.len(), 2, "two at once in the whole cluster");
    // One ends: exactly one more gets in, whichever node it asks.
    admitted.pop().unwrap().finish(0);
    for node in &nodes {
        node.counters.flush().await;
    }
    let more = burst(&nodes, &subjects, 9).await;
    assert_eq!(more.len(), 1);
}

#[test]
fn crashed_node_leases_expire() {
    let Some(url) = redis_url() else { return };
    let prefix = prefix();
    let lease = Duration::from_secs(2);
    let subjects = key_subject(Limits {
        max_concurrent: Some(1),
        ..Limits::default()
    });
    let other = key_subject(Limits {
        max_concurrent: Some(1),
        ..Limits::default()
    });
    let project = budget(project_scope(), 5_000, vec![]);
    let id = (project.scope.clone(), 0);
    let budgets = vec![(project.clone(), 0)];
    let charge = |subjects| Charge {
        subjects,
        estimated_tokens: 0,
        reserve: Some((&budgets, fixed(5_000))),
        now_ms: 0,
    };

    // The node that dies runs on a runtime of its own, so that its death
    // (the runtime shut down) stops its renewals and its release task.
    let doomed = tokio::runtime::Runtime::new().unwrap();
    let (node, permit, reservation) = doomed.block_on(async {
        let node = Node::start(&url, &prefix, lease).await;
        let c = charge_loading(node.counters.as_ref(), charge(&subjects), 0)
            .await
            .expect("the slot and the whole budget");
        let permit = Permit::new(node.dyn_counters(), subjects.clone(), 0, c.headers);
        let reservation = Reservation::new(node.dyn_counters(), budgets.clone(), c.held);
        (node, permit, reservation)
    });
    doomed.shutdown_background();
    // Its requests end after its death: nothing reaches Redis.
    drop((permit, reservation, node));

    let survivor = tokio::runtime::Runtime::new().unwrap();
    survivor.block_on(async {
        let a = Node::start(&url, &prefix, lease).await;
        let b = Node::start(&url, &prefix, lease).await;
        // A live node's slot outlives many leases: it renews it.
        let c = a.counters.charge(charge(&other)).await;
        assert!(
            matches!(c, Err(Refusal::Exhausted(_))),
            "the dead node's hold is still there: {c:?}"
        );
        let live = a
            .counters
            .charge(Charge {
                subjects: &other,
                estimated_tokens: 0,
                reserve: None,
                now_ms: 0,
            })
            .await
            .expect("a free slot");
        let _live = Permit::new(a.dyn_counters(), other.clone(), 0, live.headers);
        // Polls until the dead node's slot and hold are given back.
        let mut freed = None;
        for _ in 0..600 {
            match b.counters.charge(charge(&subjects)).await {
                Ok(c) => {
                    freed = Some(c);
                    break;
                }
                Err(Refusal::RateLimited(_) | Refusal::Exhausted(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(other) => panic!("{other:?}"),
            }
        }
        let freed = freed.expect("the dead node's lease ran out");
        assert_eq!(freed.held, 5_000, "the whole budget is usable again");
        assert_eq!(
            b.counters.account(&id).await,
            Account {
                spent: 0,
                reserved: 5_000
            }
        );
        // Node A's slot, renewed all along, is still held.
        let busy = b
            .counters
            .charge(Charge {
                subjects: &other,
                estimated_tokens: 0,
                reserve: None,
                now_ms: 0,
            })
            .await;
        assert!(
            matches!(busy, Err(Refusal::RateLimited(_))),
            "a live node's slot is renewed: {busy:?}"
        );
        assert_eq!(a.counters.open_holds(), (1, 0));
    });
}

#[tokio::test]
async fn settle_after_redis_flush_does_not_reset_the_budget() {
    let Some((nodes, prefix)) = cluster(2, Duration::from_millis(300)).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let project = budget(project_scope(), 1_000, vec![]);
    let id = (project.scope.clone(), 0);
    let budgets = vec![(project.clone(), 0)];
    let charge = |micros| Charge {
        subjects: &[],
        estimated_tokens: 0,
        reserve: Some((&budgets, fixed(micros))),
        now_ms: 0,
    };
    // Storage says 500 were spent.
    let settled_later = charge_loading(a.counters.as_ref(), charge(100), 500)
        .await
        .unwrap();
    let settled_later = Reservation::new(a.dyn_counters(), budgets.clone(), settled_later.held);
    let in_flight = a.counters.charge(charge(200)).await.unwrap();
    let _in_flight = Reservation::new(a.dyn_counters(), budgets.clone(), in_flight.held);

    // Redis loses everything; then the first request settles at 80.
    wipe(&prefix).await;
    settled_later.settle(80);
    a.counters.flush().await;
    assert_eq!(
        b.counters.account(&id).await,
        Account::default(),
        "a settlement does not create a partial account"
    );
    let unloaded = b.counters.charge(charge(1)).await.err();
    assert!(
        matches!(&unloaded, Some(Refusal::Unloaded(ids)) if *ids == [id.clone()]),
        "{unloaded:?}"
    );
    // Admission reads the spend from storage, which has the 80 written.
    b.counters.load(id.clone(), 580, 0).await;
    // The request still in flight is held again at node A's next renewal.
    let mut account = Account::default();
    for _ in 0..200 {
        account = b.counters.account(&id).await;
        if account.reserved == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        account,
        Account {
            spent: 580,
            reserved: 200
        }
    );
    // 220 left: 221 is refused, 220 fits.
    let over = b.counters.charge(charge(221)).await.err();
    assert!(matches!(over, Some(Refusal::Exhausted(e)) if e.remaining == 220));
    assert!(b.counters.charge(charge(220)).await.is_ok());
}

#[tokio::test]
async fn thresholds_are_raised_once_by_the_node_that_crosses_them() {
    let Some((nodes, _)) = cluster(2, Duration::from_secs(30)).await else {
        return;
    };
    let project = budget(project_scope(), 100, vec![50, 100]);
    let budgets = vec![(project.clone(), 0)];
    let charge = Charge {
        subjects: &[],
        estimated_tokens: 0,
        reserve: Some((&budgets, fixed(40))),
        now_ms: 0,
    };
    for (node, cost) in [(&nodes[0], 60), (&nodes[1], 40)] {
        let c = charge_loading(node.counters.as_ref(), charge, 0)
            .await
            .unwrap();
        let crossed = Reservation::new(node.dyn_counters(), budgets.clone(), c.held).settle(cost);
        assert!(crossed.is_empty(), "raised by the release task");
        node.counters.flush().await;
    }
    let raised = |n: &Node| -> Vec<(u32, i64)> {
        n.crossed
            .lock()
            .unwrap()
            .iter()
            .map(|c| (c.threshold, c.spent))
            .collect()
    };
    assert_eq!(raised(&nodes[0]), [(50, 60)]);
    assert_eq!(raised(&nodes[1]), [(100, 100)]);
}

#[tokio::test]
async fn redis_unreachable_fails_closed() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let metrics = Arc::new(Metrics::default());
    let url = format!("redis://:hunter2@127.0.0.1:{port}");
    let node = RedisCounters::connect(
        &url,
        "kwtest:down",
        Duration::from_secs(30),
        metrics.clone(),
        Box::new(|_| {}),
    )
    .await
    .expect("a node starts while Redis is down");
    let subjects = key_subject(Limits {
        rpm: Some(10),
        ..Limits::default()
    });
    let refused = node
        .charge(Charge {
            subjects: &subjects,
            estimated_tokens: 0,
            reserve: None,
            now_ms: 0,
        })
        .await
        .err();
    assert!(matches!(refused, Some(Refusal::Unavailable)), "{refused:?}");
    assert!(metrics.redis_errors.get() >= 1);
    assert!(metrics.render().contains("keyward_redis_errors_total"));
    let down = node.reachable().await.expect_err("not reachable");
    assert!(matches!(down, SharedCountersError::Unreachable(_)));
    assert!(!down.to_string().contains("hunter2"), "{down}");
    // A request with nothing to count needs no Redis.
    let free = node
        .charge(Charge {
            subjects: &[],
            estimated_tokens: 0,
            reserve: None,
            now_ms: 0,
        })
        .await;
    assert!(free.is_ok());
    // Releases do not block or panic with Redis gone.
    node.release_rate(&subjects, 0, None);
    node.flush().await;

    // What a client is told.
    use axum::response::IntoResponse;
    let response = GatewayError::LimitsUnavailable.into_response();
    assert_eq!(response.status(), 503);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "limits_unavailable");
    assert_eq!(body["error"]["type"], "api_error");
}

#[tokio::test]
async fn a_bad_url_or_prefix_is_refused_without_echoing_the_url() {
    let metrics = Arc::new(Metrics::default());
    let connect = |url: &'static str, prefix: &'static str| {
        let metrics = metrics.clone();
        async move {
            RedisCounters::connect(
                url,
                prefix,
                Duration::from_secs(30),
                metrics,
                Box::new(|_| {}),
            )
            .await
            .err()
            .expect("refused")
        }
    };
    let bad = connect("redis://:s3cret@[::1", "p").await;
    assert!(matches!(bad, SharedCountersError::InvalidUrl));
    assert!(!bad.to_string().contains("s3cret"));
    assert!(matches!(
        connect("rediss://:s3cret@example.com", "p").await,
        SharedCountersError::TlsUnsupported
    ));
    assert!(matches!(
        connect("redis://127.0.0.1", "").await,
        SharedCountersError::InvalidPrefix
    ));
}

#[tokio::test]
async fn script_flushed_is_reloaded() {
    let Some((nodes, _)) = cluster(1, Duration::from_secs(30)).await else {
        return;
    };
    let subjects = key_subject(Limits {
        rpm: Some(2),
        ..Limits::default()
    });
    let charge = Charge {
        subjects: &subjects,
        estimated_tokens: 0,
        reserve: None,
        now_ms: 0,
    };
    assert!(nodes[0].counters.charge(charge).await.is_ok());
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut raw().await)
        .await
        .unwrap();
    let again = nodes[0].counters.charge(charge).await.expect("reloaded");
    assert_eq!(again.headers.requests.map(|r| r.remaining), Some(0));
    assert_eq!(nodes[0].metrics.redis_errors.get(), 0);
}

/// A server on its own counters whose key, under a budget of `micros` with
/// no period, has served three requests (their usage in storage), and
/// admission for that key on other counters (a node of the cluster).
struct Budgeted {
    kw: crate::support::Keyward,
    _up: crate::support::Upstream,
    spend: keyward_gateway::limits::SpendControl,
    caller: keyward_gateway::limits::admission::Caller,
    id: String,
    body: Vec<u8>,
}

impl Budgeted {
    async fn start(counters: Arc<dyn Counters>, micros: i64) -> Self {
        use crate::support::{Keyward, Upstream};
        use keyward_gateway::limits::admission::Caller;
        use keyward_gateway::limits::SpendControl;
        use keyward_gateway::ttl_map::TtlMap;
        use serde_json::json;

        let up = Upstream::start().await;
        let kw = Keyward::start(&up.base_url()).await;
        let created = kw.create_key_with(json!({})).await;
        let (id, key) = (
            created["id"].as_str().unwrap().to_owned(),
            created["key"].as_str().unwrap().to_owned(),
        );
        let r = kw
            .admin_put(
                "/api/v1/budgets",
                json!({"key": id, "usd": micros as f64 / 1e6, "period": "none"}),
            )
            .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let body = json!({"model": "gpt-4o-mini-metered", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40});
        // Spend through the server (its own counters): usage goes to storage.
        for _ in 0..3 {
            assert_eq!(kw.chat(&key, body.clone()).await.status(), 200);
        }
        let state = kw.state.clone();
        let spend = SpendControl {
            counters,
            store: state.store.clone(),
            clock: keyward_core::Clock::system(),
            unwritten: Arc::new(state.usage.clone()),
            route_costs: Default::default(),
            projects: TtlMap::new(60_000),
            budgets: TtlMap::new(60_000),
            alerts: state.limits.alerts.clone(),
        };
        let key_id = KeyId::parse(&id).unwrap();
        let caller = Caller {
            key: Arc::new(state.store.get_key(&key_id).await.unwrap().unwrap()),
            parent: None,
        };
        Self {
            kw,
            _up: up,
            spend,
            caller,
            id,
            body: serde_json::to_vec(&body).unwrap(),
        }
    }

    fn ask(&self) -> keyward_gateway::limits::admission::Ask<'_> {
        keyward_gateway::limits::admission::Ask {
            method: "POST",
            path: "/v1/chat/completions",
            model: Some("gpt-4o-mini-metered"),
            uninspected_body: false,
            client_ip: "127.0.0.1".parse().unwrap(),
            origin: None,
            body: &self.body,
            requested_output: Some(40),
            price: self
                .kw
                .state
                .config
                .prices
                .get("gpt-4o-mini-metered")
                .copied(),
        }
    }

    async fn admit(&self) -> Result<keyward_gateway::limits::admission::Admission, GatewayError> {
        keyward_gateway::limits::admission::admit(&self.spend, &self.caller, &self.ask()).await
    }

    /// The key's spend in storage, once the server's usage is written.
    async fn stored(&self) -> i64 {
        self.kw.state.usage.flush().await;
        self.kw
            .state
            .store
            .usage_totals(&keyward_store::UsageFilter {
                key: KeyId::parse(&self.id),
                ..Default::default()
            })
            .await
            .unwrap()
            .cost_micros
    }

    fn account(&self) -> (BudgetScope, i64) {
        (BudgetScope::Key(self.id.clone()), 0)
    }
}

/// The whole path a node takes after Redis restarted empty: admission finds
/// the account unloaded, flushes the usage not yet written, reads the spend
/// from storage and loads it, so the budget is what storage says, not reset.
#[tokio::test]
async fn admission_rebuilds_a_wiped_budget_from_storage() {
    let Some((nodes, prefix)) = cluster(1, Duration::from_secs(30)).await else {
        return;
    };
    let amount = 400;
    let b = Budgeted::start(nodes[0].dyn_counters(), amount).await;
    let account = b.account();
    let first = b.admit().await.expect("within budget");
    let held = first.reservation.as_ref().unwrap().amount();
    drop(first);
    nodes[0].counters.flush().await;
    let spent = nodes[0].counters.account(&account).await.spent;
    let stored = b.stored().await;
    assert!(spent > 0);
    assert_eq!(spent, stored, "loaded from storage");

    wipe(&prefix).await;
    let mut admitted = Vec::new();
    let refusal = loop {
        match b.admit().await {
            Ok(a) => admitted.push(a),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(refusal, GatewayError::InsufficientQuota(_)),
        "{refusal:?}"
    );
    assert_eq!(
        admitted.len() as i64,
        (amount - spent) / held,
        "the rebuilt budget has what storage says was spent"
    );
    assert!(
        (amount - spent) / held < amount / held,
        "a reset budget would admit more"
    );
    assert_eq!(
        nodes[0].counters.account(&account).await,
        Account {
            spent,
            reserved: held * admitted.len() as i64
        }
    );
}

/// Redis loses a settlement (a failover to a replica that was behind): its
/// spend falls below storage's and the budget would admit more than it has.
/// Reconciliation raises it to storage's; a spend ahead of storage (usage
/// not written yet) is never lowered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_restores_a_lost_settlement_and_never_lowers_a_spend() {
    use keyward_gateway::limits::reconcile;

    let Some((nodes, prefix)) = cluster(1, Duration::from_secs(30)).await else {
        return;
    };
    let b = Budgeted::start(nodes[0].dyn_counters(), 1_000_000).await;
    let account = b.account();
    let redis_key = format!("{prefix}:acct:key:{}:0", b.id);
    let stored = b.stored().await;
    assert!(stored > 0);
    let set_spent = |spent: i64| {
        let key = redis_key.clone();
        async move {
            let _: () = redis::cmd("HSET")
                .arg(&key)
                .arg("spent")
                .arg(spent)
                .query_async(&mut raw().await)
                .await
                .unwrap();
        }
    };

    // Loaded from storage by the first admission; then Redis loses it.
    drop(b.admit().await.expect("within budget"));
    nodes[0].counters.flush().await;
    assert_eq!(nodes[0].counters.account(&account).await.spent, stored);
    set_spent(0).await;
    drop(b.admit().await.expect("within budget"));
    assert_eq!(reconcile::once(&b.spend).await, 1, "one account raised");
    assert_eq!(nodes[0].counters.account(&account).await.spent, stored);

    // Ahead of storage (other nodes' usage not written yet): left alone.
    set_spent(stored + 1_000).await;
    drop(b.admit().await.expect("within budget"));
    assert_eq!(reconcile::once(&b.spend).await, 0);
    assert_eq!(
        nodes[0].counters.account(&account).await.spent,
        stored + 1_000
    );
    // Nothing charged since: nothing to compare.
    assert_eq!(reconcile::once(&b.spend).await, 0);
}

/// A key limited every way (requests, tokens, in flight) and a project
/// budget, all far from their end, charged `n` times on `node`, each request
/// ended at once with `tokens` tokens and a cost of `cost`. Returns how many
/// were charged from the node's shares.
struct FarFromLimits {
    subjects: Vec<(Subject, Limits)>,
    budgets: Vec<(Arc<Budget>, i64)>,
    id: (BudgetScope, i64),
}

impl FarFromLimits {
    const RPM: u32 = 100_000;
    const TPM: u32 = 10_000_000;

    async fn new(node: &Node, amount: i64) -> Self {
        let project = budget(project_scope(), amount, vec![]);
        let id = (project.scope.clone(), 0);
        let far = FarFromLimits {
            subjects: key_subject(Limits {
                rpm: Some(Self::RPM),
                tpm: Some(Self::TPM),
                max_concurrent: Some(10_000),
            }),
            budgets: vec![(project, 0)],
            id,
        };
        node.counters.load(far.id.clone(), 0, 0).await;
        far
    }

    fn charge(&self, held: i64) -> Charge<'_> {
        Charge {
            subjects: &self.subjects,
            estimated_tokens: 100,
            reserve: Some((&self.budgets, fixed(held))),
            now_ms: 0,
        }
    }

    /// Charges and ends one request; `false` when refused.
    async fn request(&self, node: &Node, held: i64, cost: i64, tokens: i64) -> bool {
        match node.counters.charge(self.charge(held)).await {
            Ok(c) => {
                assert_eq!(c.held, held);
                let mut permit =
                    Permit::new(node.dyn_counters(), self.subjects.clone(), 100, c.headers);
                permit.commit();
                permit.finish(tokens);
                let reservation =
                    Reservation::new(node.dyn_counters(), self.budgets.clone(), c.held);
                assert!(reservation.settle(cost).is_empty());
                true
            }
            Err(Refusal::Exhausted(_) | Refusal::RateLimited(_)) => false,
            Err(other) => panic!("{other:?}"),
        }
    }
}

/// The key's bucket levels in Redis (requests, tokens) and its slots in
/// flight (requests' and shares').
async fn bucket(prefix: &str, subject: &Subject) -> (Option<f64>, Option<f64>, usize) {
    let Subject::Key(id) = subject else {
        unreachable!()
    };
    let mut con = raw().await;
    let (rl, tl): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(format!("{prefix}:rate:k:{id}"))
        .arg("rl")
        .arg("tl")
        .query_async(&mut con)
        .await
        .unwrap();
    let flight = format!("{prefix}:flight:k:{id}");
    let singles: usize = redis::cmd("ZCARD")
        .arg(&flight)
        .query_async(&mut con)
        .await
        .unwrap();
    // A share's slots: one member, `<hold>/s~<slots>`.
    let shares: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{flight}:s"))
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    let flying = singles
        + shares
            .iter()
            .map(|m| m.rsplit_once('~').unwrap().1.parse::<usize>().unwrap())
            .sum::<usize>();
    let level = |l: Option<String>| l.map(|l| l.parse().unwrap());
    (level(rl), level(tl), flying)
}

#[tokio::test]
async fn shares_charge_most_requests_without_redis_and_give_everything_back() {
    let Some(url) = redis_url() else { return };
    let prefix = prefix();
    let node = Node::sharing(&url, &prefix, Duration::from_millis(200)).await;
    let far = FarFromLimits::new(&node, 1_000_000_000).await;
    for _ in 0..500 {
        assert!(far.request(&node, 1_000, 600, 70).await);
    }
    let local = node.counters.local_charges();
    assert!(local >= 400, "only {local} of 500 charged from shares");
    // Once the shares are given back, Redis holds exactly what 500 requests
    // used, as if each had gone to Redis: nothing held, nothing in flight.
    node.shares_given_back().await;
    assert_eq!(
        node.counters.account(&far.id).await,
        Account {
            spent: 500 * 600,
            reserved: 0
        }
    );
    let (rl, tl, flying) = bucket(&prefix, &far.subjects[0].0).await;
    assert_eq!(rl, Some(f64::from(FarFromLimits::RPM) - 500.0));
    assert_eq!(tl, Some(f64::from(FarFromLimits::TPM) - 500.0 * 70.0));
    assert_eq!(flying, 0);
    assert_eq!(node.counters.open_holds(), (0, 0));
}

/// `n` nodes on one prefix taking shares that live 200 ms, or `None` when
/// the tests are skipped.
async fn sharing_cluster(n: usize) -> Option<Vec<Arc<Node>>> {
    let url = redis_url()?;
    let prefix = prefix();
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Arc::new(
            Node::sharing(&url, &prefix, Duration::from_millis(200)).await,
        ));
    }
    Some(nodes)
}

#[tokio::test]
async fn shares_never_let_three_nodes_overspend_a_budget_and_lose_none_of_it() {
    let Some(nodes) = sharing_cluster(3).await else {
        return;
    };
    // 2,000 requests' worth: shares while far from the end, one by one
    // near it.
    let amount = 2_000 * 500;
    let far = Arc::new(FarFromLimits::new(&nodes[0], amount).await);
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..4 {
            let (node, far) = (node.clone(), far.clone());
            tasks.push(tokio::spawn(async move {
                let mut served = 0;
                while far.request(&node, 500, 500, 10).await {
                    served += 1;
                }
                served
            }));
        }
    }
    let mut served = 0;
    for t in tasks {
        served += t.await.unwrap();
    }
    assert!(
        served <= 2_000,
        "{served} requests served on a budget for 2,000"
    );
    let local: u64 = nodes.iter().map(|n| n.counters.local_charges()).sum();
    assert!(local > 0, "no share was taken");
    // What the shares held unused comes back: the rest of the budget is
    // served, to the last micro-dollar.
    for node in &nodes {
        node.shares_given_back().await;
    }
    while far.request(&nodes[0], 500, 500, 10).await {
        served += 1;
    }
    assert_eq!(served, 2_000);
    nodes[0].shares_given_back().await;
    assert_eq!(
        nodes[0].counters.account(&far.id).await,
        Account {
            spent: amount,
            reserved: 0
        }
    );
}

#[tokio::test]
async fn shares_never_let_three_nodes_exceed_a_rate_limit() {
    let Some(nodes) = sharing_cluster(3).await else {
        return;
    };
    // No budget; the clock stands still, so nothing refills.
    let subjects = Arc::new(key_subject(Limits {
        rpm: Some(3_000),
        ..Limits::default()
    }));
    fn charge(subjects: &[(Subject, Limits)]) -> Charge<'_> {
        Charge {
            subjects,
            estimated_tokens: 0,
            reserve: None,
            now_ms: 0,
        }
    }
    let mut tasks = Vec::new();
    for node in &nodes {
        let (node, subjects) = (node.clone(), subjects.clone());
        tasks.push(tokio::spawn(async move {
            let mut served = 0;
            loop {
                match node.counters.charge(charge(&subjects)).await {
                    Ok(c) => {
                        let mut p =
                            Permit::new(node.dyn_counters(), subjects.to_vec(), 0, c.headers);
                        p.commit();
                        served += 1;
                    }
                    Err(Refusal::RateLimited(_)) => return served,
                    Err(other) => panic!("{other:?}"),
                }
            }
        }));
    }
    let mut served = 0;
    for t in tasks {
        served += t.await.unwrap();
    }
    assert!(
        served <= 3_000,
        "{served} requests through a limit of 3,000"
    );
    for node in &nodes {
        node.shares_given_back().await;
    }
    while nodes[1].counters.charge(charge(&subjects)).await.is_ok() {
        served += 1;
    }
    assert_eq!(
        served, 3_000,
        "every request of the minute, and not one more"
    );
}

#[test]
fn a_crashed_node_s_shares_expire_with_its_lease() {
    let Some(url) = redis_url() else { return };
    let prefix = prefix();
    let lease = Duration::from_secs(1);
    let amount = 1_000_000;
    let project = budget(project_scope(), amount, vec![]);
    let id = (project.scope.clone(), 0);
    let budgets = vec![(project, 0)];
    let subjects = key_subject(Limits {
        max_concurrent: Some(1_000),
        ..Limits::default()
    });
    let charge = Charge {
        subjects: &subjects,
        estimated_tokens: 0,
        reserve: Some((&budgets, fixed(100))),
        now_ms: 0,
    };
    let doomed = tokio::runtime::Runtime::new().unwrap();
    doomed.block_on(async {
        let node = Node::start(&url, &prefix, lease).await;
        let counters = Arc::into_inner(node.counters)
            .unwrap()
            .with_shares(Duration::from_secs(10));
        let c = charge_loading(&counters, charge, 0)
            .await
            .expect("far from the end");
        assert_eq!(c.held, 100);
        assert_eq!(counters.shares_open(), 2, "a share of the key and a slab");
        // Dies with its request, its share and its slab open.
        std::mem::forget(counters);
    });
    doomed.shutdown_background();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let a = Node::start(&url, &prefix, lease).await;
        let held = a.counters.account(&id).await.reserved;
        assert!(held > 100, "the slab is held: {held}");
        let (_, _, flying) = bucket(&prefix, &subjects[0].0).await;
        assert!(flying > 1, "the share's slots are in flight: {flying}");
        loop {
            let account = a.counters.account(&id).await;
            let (_, _, flying) = bucket(&prefix, &subjects[0].0).await;
            if account.reserved == 0 && flying == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The whole budget and every slot are usable again.
        let _ = a
            .counters
            .charge(Charge {
                reserve: Some((&budgets, fixed(amount))),
                ..charge
            })
            .await
            .expect("the whole budget");
    });
}

#[tokio::test]
async fn a_threshold_crossed_by_requests_charged_from_a_slab_is_raised_once() {
    let Some(url) = redis_url() else { return };
    let prefix = prefix();
    let node = Node::sharing(&url, &prefix, Duration::from_millis(200)).await;
    let project = budget(project_scope(), 1_000_000, vec![50]);
    let id = (project.scope.clone(), 0);
    let budgets = vec![(project.clone(), 0)];
    node.counters.load(id.clone(), 0, 0).await;
    let charge = Charge {
        subjects: &[],
        estimated_tokens: 0,
        reserve: Some((&budgets, fixed(1_000))),
        now_ms: 0,
    };
    // 600 requests of 1,000: past half the budget, most from slabs.
    for _ in 0..600 {
        let c = node.counters.charge(charge).await.expect("fits");
        let reservation = Reservation::new(node.dyn_counters(), budgets.clone(), c.held);
        assert!(reservation.settle(1_000).is_empty());
    }
    assert!(node.counters.local_charges() > 0);
    node.shares_given_back().await;
    let crossed = node.crossed.lock().unwrap().clone();
    assert_eq!(crossed.len(), 1, "{crossed:?}");
    assert_eq!(crossed[0].threshold, 50);
    assert_eq!(
        node.counters.account(&id).await,
        Account {
            spent: 600_000,
            reserved: 0
        }
    );
}
