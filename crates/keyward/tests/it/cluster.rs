//! Cluster mode through the real binary: three `keyward serve` processes on one
//! PostgreSQL database and one Redis, in front of one recording upstream that
//! counts what it served. The guarantees of one node must hold for the three.
//!
//! Each test makes its own database and runs its own `redis-server` on a free
//! port (so that it can stop it, and restart it empty, without touching other
//! tests). Needs `KEYWARD_TEST_POSTGRES_URL` and `KEYWARD_TEST_REDIS_URL` (the
//! latter says Redis is available on this machine; `redis-server` must be on
//! the PATH); without them each test prints one line and passes, and under
//! `CI=true` it fails.

use crate::support::ServeProcess;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Output tokens the recording upstream reports for every completion (the
/// requests ask for exactly this many, so a reservation holds about what a
/// request costs).
const OUTPUT_TOKENS: i64 = 1000;

/// What the tests need from the machine, or `None` (with one line) to skip.
fn dependencies(test: &str) -> Option<String> {
    let postgres = std::env::var("KEYWARD_TEST_POSTGRES_URL").ok();
    let redis = std::env::var("KEYWARD_TEST_REDIS_URL").ok();
    let has_redis_server = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match (postgres, redis, has_redis_server) {
        (Some(pg), Some(_), true) => Some(pg),
        _ => {
            let why = "needs KEYWARD_TEST_POSTGRES_URL, KEYWARD_TEST_REDIS_URL and redis-server";
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: {why} (CI=true: not skipped)"
            );
            println!("skipping {test}: {why}");
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A database of the test's own, dropped at the end.
struct Database {
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    fn create(admin_url: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "kw_cluster_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_sql(admin_url, &format!("CREATE DATABASE {name}"));
        let base = admin_url.rsplit_once('/').map_or(admin_url, |(b, _)| b);
        Self {
            admin_url: admin_url.to_owned(),
            url: format!("{base}/{name}"),
            name,
        }
    }

    fn query_one(&self, sql: &str) -> i64 {
        block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&mut conn).await.unwrap();
            n
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        run_sql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn run_sql(url: &str, sql: &str) {
    block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    });
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A `redis-server` of the test's own, keeping nothing on disk.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
        };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it at once (its data is gone).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again, empty) on its port and waits until it answers.
    fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        while !self.answers() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The upstream: answers every chat completion with `OUTPUT_TOKENS` output
/// tokens after `delay`, and counts what it served and the most requests it
/// held at once.
struct Recorder {
    url: String,
    served: Arc<AtomicU64>,
    in_flight: Arc<AtomicI64>,
    most_in_flight: Arc<AtomicI64>,
}

impl Recorder {
    fn start(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let served = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicI64::new(0));
        let most_in_flight = Arc::new(AtomicI64::new(0));
        let counters = (served.clone(), in_flight.clone(), most_in_flight.clone());
        std::thread::spawn(move || {
            block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let counters = counters.clone();
                    tokio::spawn(async move {
                        let _ = serve_recorded(stream, delay, counters).await;
                    });
                }
            })
        });
        Self {
            url,
            served,
            in_flight,
            most_in_flight,
        }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

/// One upstream connection: HTTP/1.1 requests with a `Content-Length` body,
/// answered in order.
async fn serve_recorded(
    stream: tokio::net::TcpStream,
    delay: Duration,
    (served, in_flight, most): (Arc<AtomicU64>, Arc<AtomicI64>, Arc<AtomicI64>),
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if read.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        read.read_exact(&mut body).await?;
        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        let answer = json!({
            "id": "chatcmpl-recorded",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": OUTPUT_TOKENS, "total_tokens": OUTPUT_TOKENS + 1}
        })
        .to_string();
        in_flight.fetch_sub(1, Ordering::SeqCst);
        served.fetch_add(1, Ordering::SeqCst);
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        write.write_all(head.as_bytes()).await?;
        write.write_all(answer.as_bytes()).await?;
    }
}

/// Three nodes on one database and one Redis, the first started alone (it
/// creates the first admin key).
struct Cluster {
    nodes: Vec<Option<ServeProcess>>,
    admin_key: String,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    fn start(db: &Database, redis: &Redis, upstream: &Recorder, extra: &[&str]) -> Self {
        let mut dirs = Vec::new();
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            nodes.push(Some(start_node(dir.path(), db, redis, upstream, extra)));
            dirs.push(dir);
        }
        let admin_key = nodes[0].as_ref().unwrap().admin_key();
        Self {
            nodes,
            admin_key,
            _dirs: dirs,
        }
    }

    fn node(&self, i: usize) -> &ServeProcess {
        self.nodes[i].as_ref().expect("a running node")
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().flatten().map(|n| n.url.clone()).collect()
    }

    /// A `keyward` client command through node 0, which must succeed.
    fn cli_json(&self, args: &[&str]) -> Value {
        self.cli_json_with(args, &[], "")
    }

    /// A `keyward` client command through node 0 with more environment
    /// variables and `input` on its stdin, which must succeed.
    fn cli_json_with(&self, args: &[&str], env: &[(&str, &str)], input: &str) -> Value {
        let mut child = crate::support::keyward()
            .args(args)
            .env("KEYWARD_URL", &self.node(0).url)
            .env("KEYWARD_ADMIN_KEY", &self.admin_key)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "keyward {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A key in project `bench` with the given limit flags: (id, secret).
    fn key(&self, name: &str, limits: &[&str]) -> (String, String) {
        let mut args = vec![
            "keys",
            "create",
            "--project",
            "bench",
            "--name",
            name,
            "--json",
        ];
        args.extend_from_slice(limits);
        let k = self.cli_json(&args);
        (
            k["id"].as_str().unwrap().to_owned(),
            k["key"].as_str().unwrap().to_owned(),
        )
    }
}

/// The secrets key every node of a test cluster is given, as an operator
/// gives every node the same one (a node with a key of its own refuses to
/// start on a database set up with another).
fn shared_key_file() -> &'static str {
    static FILE: OnceLock<String> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("keyward-cluster-{}.key", std::process::id()));
        // A test's key: the base64 of 32 bytes (a real one is random).
        std::fs::write(&path, "a2V5d2FyZCB0ZXN0IGNsdXN0ZXI6IG9uZSBrZXkhISE=\n").unwrap();
        path.to_str().unwrap().to_owned()
    })
}

fn start_node(
    dir: &Path,
    db: &Database,
    redis: &Redis,
    upstream: &Recorder,
    extra: &[&str],
) -> ServeProcess {
    let redis_url = redis.url();
    let mut args = vec![
        "--database",
        &db.url,
        "--redis",
        &redis_url,
        "--upstream-no-key",
        "--secrets-key-file",
        shared_key_file(),
    ];
    args.extend_from_slice(extra);
    ServeProcess::start_full("127.0.0.1:0", &upstream.url, dir, &args, "info")
}

/// `count` chat completions at once, spread over `urls` in turn: each answer's
/// status and body, in the order sent.
fn burst(urls: &[String], key: &str, count: usize) -> Vec<(u16, String)> {
    block_on(async {
        let client = reqwest::Client::new();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..count {
            let client = client.clone();
            let url = format!("{}/v1/chat/completions", urls[i % urls.len()]);
            let key = key.to_owned();
            set.spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(key)
                    .json(&json!({
                        "model": "gpt-4o-mini",
                        "max_tokens": OUTPUT_TOKENS,
                        "messages": [{"role": "user", "content": "hi"}]
                    }))
                    .send()
                    .await;
                // A node killed mid-request answers nothing: status 0.
                match r {
                    Ok(r) => (i, r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => (i, 0, e.to_string()),
                }
            });
        }
        let mut answers = set.join_all().await;
        answers.sort_by_key(|(i, _, _)| *i);
        answers.into_iter().map(|(_, s, b)| (s, b)).collect()
    })
}

fn statuses(answers: &[(u16, String)], status: u16) -> usize {
    answers.iter().filter(|(s, _)| *s == status).count()
}

/// A key's spend so far, in micro-dollars, from the usage API.
fn spent_micros(cluster: &Cluster, key_id: &str) -> i64 {
    let usage = cluster.cli_json(&["usage", "--key", key_id, "--json"]);
    usage["cost_micros"]
        .as_i64()
        .unwrap_or_else(|| panic!("no cost_micros in {usage}"))
}

/// The cost of one recorded completion, in micro-dollars, measured through a
/// key without limits.
fn cost_of_one(cluster: &Cluster) -> i64 {
    let (id, key) = cluster.key("calibration", &[]);
    let answers = burst(&cluster.urls()[..1], &key, 1);
    assert_eq!(answers[0].0, 200, "{}", answers[0].1);
    wait_for_spend(cluster, &id, 1)
}

/// A key's spend once `requests` of its requests are in storage.
fn wait_for_spend(cluster: &Cluster, key_id: &str, requests: i64) -> i64 {
    loop {
        let usage = cluster.cli_json(&["usage", "--key", key_id, "--json"]);
        if usage["requests"].as_i64() == Some(requests) {
            return spent_micros(cluster, key_id);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_burst_over_three_nodes_never_overspends_a_budget() {
    let Some(pg) = dependencies("a_burst_over_three_nodes_never_overspends_a_budget") else {
        return;
    };
    let db = Database::create(&pg);
    let redis = Redis::start();
    let upstream = Recorder::start(Duration::from_millis(5));
    let cluster = Cluster::start(&db, &redis, &upstream, &[]);
    cluster.cli_json(&["projects", "create", "bench", "--json"]);
    let one = cost_of_one(&cluster);
    assert!(one > 0);
    let served_before = upstream.served();
    // A budget that pays for exactly 20 requests.
    let budget_micros = 20 * one;
    let budget_usd = format!(
        "{}.{:06}",
        budget_micros / 1_000_000,
        budget_micros % 1_000_000
    );
    let (id, key) = cluster.key("budgeted", &["--budget-usd", &budget_usd]);

    let answers = burst(&cluster.urls(), &key, 300);
    let ok = statuses(&answers, 200);
    let served = upstream.served() - served_before;
    assert_eq!(
        ok as u64, served,
        "every 200 was served upstream, nothing else was"
    );
    assert!(
        served <= 20,
        "the upstream served {served} requests; the budget pays for 20"
    );
    assert!(
        served >= 15,
        "a burst should get close to the 20 the budget pays for, got {served}"
    );
    for (status, body) in &answers {
        assert!(
            *status == 200 || (*status == 429 && body.contains("insufficient_quota")),
            "{status} {body}"
        );
    }
    let spent = wait_for_spend(&cluster, &id, 300);
    assert_eq!(
        spent,
        served as i64 * one,
        "the spend recorded is what was served"
    );
    assert!(spent <= budget_micros);
}

#[test]
fn a_rate_limit_holds_for_the_cluster_not_per_node() {
    let Some(pg) = dependencies("a_rate_limit_holds_for_the_cluster_not_per_node") else {
        return;
    };
    let db = Database::create(&pg);
    let redis = Redis::start();
    let upstream = Recorder::start(Duration::ZERO);
    let cluster = Cluster::start(&db, &redis, &upstream, &[]);
    cluster.cli_json(&["projects", "create", "bench", "--json"]);
    let (_, key) = cluster.key("ten-a-minute", &["--rpm", "10"]);
    let answers = burst(&cluster.urls(), &key, 30);
    assert_eq!(statuses(&answers, 200), 10, "{answers:?}");
    assert_eq!(statuses(&answers, 429), 20);
    assert_eq!(upstream.served(), 10);
}

#[test]
fn a_concurrency_limit_holds_for_the_cluster() {
    let Some(pg) = dependencies("a_concurrency_limit_holds_for_the_cluster") else {
        return;
    };
    let db = Database::create(&pg);
    let redis = Redis::start();
    // Slow answers, so that requests overlap.
    let upstream = Recorder::start(Duration::from_millis(300));
    let cluster = Cluster::start(&db, &redis, &upstream, &[]);
    cluster.cli_json(&["projects", "create", "bench", "--json"]);
    let (_, key) = cluster.key("two-at-once", &["--max-concurrent", "2"]);
    let answers = burst(&cluster.urls(), &key, 12);
    let ok = statuses(&answers, 200);
    assert!(ok >= 2, "{answers:?}");
    assert_eq!(ok + statuses(&answers, 429), 12, "{answers:?}");
    assert!(
        upstream.most_in_flight.load(Ordering::SeqCst) <= 2,
        "the upstream held {} of the key's requests at once",
        upstream.most_in_flight.load(Ordering::SeqCst)
    );
    assert_eq!(upstream.in_flight.load(Ordering::SeqCst), 0);
}

#[test]
fn a_killed_nodes_slots_and_holds_expire_after_its_lease() {
    let Some(pg) = dependencies("a_killed_nodes_slots_and_holds_expire_after_its_lease") else {
        return;
    };
    let db = Database::create(&pg);
    let redis = Redis::start();
    // The upstream holds each request long enough to kill the node mid-way.
    let upstream = Recorder::start(Duration::from_secs(3));
    let mut cluster = Cluster::start(&db, &redis, &upstream, &["--redis-lease-ms", "1500"]);
    cluster.cli_json(&["projects", "create", "bench", "--json"]);
    let (id, key) = cluster.key(
        "one-at-once",
        &["--max-concurrent", "1", "--budget-usd", "5"],
    );
    // A request in flight on node 2, which then dies.
    let victim = cluster.node(2).url.clone();
    let in_flight = {
        let key = key.clone();
        std::thread::spawn(move || burst(&[victim], &key, 1))
    };
    while upstream.in_flight.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    cluster.nodes[2].take().unwrap().kill_9();
    let cut = in_flight.join().unwrap();
    assert_eq!(
        cut[0].0, 0,
        "the client of the killed node got no answer: {cut:?}"
    );
    // Its slot is held until its lease ends, then usable from the others.
    let survivors = cluster.urls();
    let started = Instant::now();
    let mut refused = 0;
    loop {
        let answer = burst(&survivors[..1], &key, 1).remove(0);
        if answer.0 == 200 {
            break;
        }
        assert_eq!(answer.0, 429, "{answer:?}");
        if refused == 0 {
            println!("refused while the dead node's slot is held: {}", answer.1);
        }
        refused += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // The admitted request itself spent the upstream's 3 s.
    println!(
        "slot usable again about {:?} after the kill ({refused} refusals before)",
        started.elapsed().saturating_sub(Duration::from_secs(3))
    );
    // Spend recorded: what the upstream served and the nodes lived to meter;
    // the killed node's request was served but never metered (it died before
    // its usage was written), so storage holds at most what was served.
    let served = upstream.served() as i64;
    let usage = cluster.cli_json(&["usage", "--key", &id, "--json"]);
    let metered = usage["requests"].as_i64().unwrap() - usage["errors"].as_i64().unwrap();
    assert!(metered <= served, "{usage}");
}

#[test]
fn redis_down_refuses_limited_keys_and_redis_back_empty_rebuilds_budgets() {
    let Some(pg) =
        dependencies("redis_down_refuses_limited_keys_and_redis_back_empty_rebuilds_budgets")
    else {
        return;
    };
    let db = Database::create(&pg);
    let mut redis = Redis::start();
    let upstream = Recorder::start(Duration::ZERO);
    let cluster = Cluster::start(&db, &redis, &upstream, &[]);
    cluster.cli_json(&["projects", "create", "bench", "--json"]);
    let one = cost_of_one(&cluster);
    // A budget that pays for 4 requests and a half (a request holds a little
    // more than it costs: its input is bounded by its size); 3 are spent
    // before Redis goes.
    let budget = 4 * one + one / 2;
    let budget_usd = format!("{}.{:06}", budget / 1_000_000, budget % 1_000_000);
    let (id, limited) = cluster.key("limited", &["--budget-usd", &budget_usd]);
    let (_, free) = cluster.key("free", &[]);
    for _ in 0..3 {
        assert_eq!(burst(&cluster.urls(), &limited, 1)[0].0, 200);
    }
    wait_for_spend(&cluster, &id, 3);

    redis.kill();
    let urls = cluster.urls();
    let (status, body) = burst(&urls[..1], &limited, 1).remove(0);
    assert_eq!(status, 503, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "limits_unavailable", "{body}");
    assert_eq!(
        burst(&urls[..1], &free, 1)[0].0,
        200,
        "a key without limits keeps working"
    );
    let ready = readyz(&urls[0]);
    assert_eq!(ready.0, 503, "{ready:?}");
    assert_eq!(ready.1["redis"], "down");

    // Back, empty: the budget is read again from PostgreSQL, not reset: one
    // more request fits, the next does not.
    redis.restart();
    let answers = loop {
        let a = burst(&urls[1..2], &limited, 1);
        if a[0].0 != 503 {
            break a;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(answers[0].0, 200, "{answers:?}");
    // Each node reconnects by itself; node 0 may still be on its way.
    let (status, body) = loop {
        let answer = burst(&urls[..1], &limited, 1).remove(0);
        if answer.0 != 503 {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 429, "the rebuilt budget is spent: {body}");
    while readyz(&urls[0]).0 != 200 {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(upstream.served(), 1 + 3 + 1 + 1);
}

#[test]
fn two_nodes_starting_at_once_on_an_empty_database_apply_migrations_once() {
    let Some(pg) =
        dependencies("two_nodes_starting_at_once_on_an_empty_database_apply_migrations_once")
    else {
        return;
    };
    let db = Database::create(&pg);
    let redis = Redis::start();
    let upstream = Recorder::start(Duration::ZERO);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let starts = [a.path().to_owned(), b.path().to_owned()].map(|dir| {
        let db_url = db.url.clone();
        let redis_url = redis.url();
        let upstream_url = upstream.url.clone();
        std::thread::spawn(move || {
            ServeProcess::start_full(
                "127.0.0.1:0",
                &upstream_url,
                &dir,
                &[
                    "--database",
                    &db_url,
                    "--redis",
                    &redis_url,
                    "--upstream-no-key",
                    "--secrets-key-file",
                    shared_key_file(),
                ],
                "info",
            )
        })
    });
    let nodes: Vec<ServeProcess> = starts.map(|t| t.join().expect("both nodes start")).into();
    let migrations = db.query_one("SELECT COUNT(*) FROM _sqlx_migrations");
    let distinct = db.query_one("SELECT COUNT(DISTINCT version) FROM _sqlx_migrations");
    assert!(migrations > 0);
    assert_eq!(migrations, distinct, "each migration applied once");
    for node in &nodes {
        assert_eq!(readyz(&node.url).0, 200);
    }
}

/// `/readyz`: status and body.
fn readyz(url: &str) -> (u16, Value) {
    block_on(async {
        let r = reqwest::get(format!("{url}/readyz")).await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    })
}

/// The public URL the nodes of the account tests are started with: a load
/// balancer's address in front of the three, the origin browsers send
/// (nothing listens there; the nodes only compare it with `Origin`).
const PUBLIC_URL: &str = "http://127.0.0.1:9";

/// A dashboard user's password.
const PASSWORD: &str = "a long enough passphrase 7";

/// The channel the nodes publish invalidations on and listen to (the default
/// Redis prefix).
const INVALIDATIONS: &str = "keyward:invalidations";

/// A cluster whose three nodes are subscribed to invalidations, and a
/// subscriber of the test's own on the same channel. Fields drop in order:
/// the nodes first, the database last.
struct Watched {
    cluster: Cluster,
    channel: Channel,
    _upstream: Recorder,
    _redis: Redis,
    _db: Database,
}

impl Watched {
    fn start(pg: &str, extra: &[&str]) -> Self {
        let db = Database::create(pg);
        let redis = Redis::start();
        let upstream = Recorder::start(Duration::ZERO);
        // Caches trusted for a minute: only the bus can end a credential on
        // another node within the second.
        let mut args = vec!["--cache-ttl-ms", "60000"];
        args.extend_from_slice(extra);
        let cluster = Cluster::start(&db, &redis, &upstream, &args);
        // Ready means subscribed (and each node's caches dropped once).
        for url in cluster.urls() {
            while readyz(&url).0 != 200 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let channel = Channel::watch(&redis);
        // The three nodes and the watcher: every node listens where the
        // others publish.
        assert_eq!(
            channel.listeners(&redis),
            4,
            "the nodes and the watcher on {INVALIDATIONS}"
        );
        Self {
            cluster,
            channel,
            _upstream: upstream,
            _redis: redis,
            _db: db,
        }
    }
}

/// Every message published on the invalidation channel, as JSON: each test
/// checks that the change it made was published (what ends the credential on
/// the other nodes).
struct Channel {
    messages: Arc<Mutex<Vec<Value>>>,
}

impl Channel {
    fn watch(redis: &Redis) -> Self {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
        let mut con = client.get_connection().unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let kept = messages.clone();
        let (subscribed, ready) = std::sync::mpsc::channel();
        // Until Redis stops.
        std::thread::spawn(move || {
            let mut pubsub = con.as_pubsub();
            pubsub.subscribe(INVALIDATIONS).unwrap();
            subscribed.send(()).unwrap();
            while let Ok(pushed) = pubsub.get_message() {
                let payload: String = pushed.get_payload().unwrap();
                let message =
                    serde_json::from_str(&payload).unwrap_or_else(|e| panic!("{e}: {payload}"));
                kept.lock().unwrap().push(message);
            }
        });
        ready.recv().unwrap();
        Self { messages }
    }

    /// Whether a message of `kind` naming `id` was published.
    fn saw(&self, kind: &str, id: &str) -> bool {
        self.messages.lock().unwrap().iter().any(|m| {
            m["kind"] == kind
                && m["ids"]
                    .as_array()
                    .is_some_and(|ids| ids.iter().any(|i| i == id))
        })
    }

    /// How many connections listen on the channel.
    fn listeners(&self, redis: &Redis) -> i64 {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
        let mut con = client.get_connection().unwrap();
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(INVALIDATIONS)
            .query(&mut con)
            .unwrap();
        n
    }

    fn messages(&self) -> Vec<Value> {
        self.messages.lock().unwrap().clone()
    }
}

/// What one node did with the requests sent to it after a change returned.
struct AfterChange {
    url: String,
    /// How long after the change returned each accepted request was sent.
    accepted: Vec<Duration>,
    /// The status and body of each refused one.
    refused: Vec<(u16, String)>,
}

/// Clients call each of `urls` with `request` (status and body; 200 is
/// accepted) in a loop, a thread a node, so that each node holds the
/// credential in its caches. Once every node has accepted it a few times,
/// `change` runs (through another node); the clients go on until a second and
/// a half after it returned. Until the change starts every request must be
/// accepted; while it runs either answer is right.
fn hammer_around(
    urls: &[String],
    request: impl Fn(&str) -> (u16, String) + Send + Sync + 'static,
    change: impl FnOnce(),
) -> Vec<AfterChange> {
    const WARM: usize = 5;
    let request = Arc::new(request);
    let returned: Arc<OnceLock<Instant>> = Arc::default();
    let changing = Arc::new(AtomicBool::new(false));
    let mut hammers: Vec<_> = urls
        .iter()
        .map(|url| {
            let warm = Arc::new(AtomicUsize::new(0));
            let (url, request, returned, changing, accepted_before) = (
                url.clone(),
                request.clone(),
                returned.clone(),
                changing.clone(),
                warm.clone(),
            );
            let thread = std::thread::spawn(move || {
                let mut seen = AfterChange {
                    url,
                    accepted: Vec::new(),
                    refused: Vec::new(),
                };
                loop {
                    let sent = Instant::now();
                    let (status, body) = request(&seen.url);
                    match returned.get() {
                        Some(at) if sent > *at => {
                            if status == 200 {
                                seen.accepted.push(sent - *at);
                            } else {
                                seen.refused.push((status, body));
                            }
                            if sent - *at > Duration::from_millis(1500) {
                                return seen;
                            }
                        }
                        _ if !changing.load(Ordering::SeqCst) => {
                            assert_eq!(status, 200, "{} before the change: {body}", seen.url);
                            accepted_before.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                }
            });
            (warm, thread)
        })
        .collect();
    while hammers
        .iter()
        .any(|(warm, t)| warm.load(Ordering::SeqCst) < WARM && !t.is_finished())
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    // A client that stopped before the change failed: say why.
    if let Some(failed) = hammers.iter().position(|(_, t)| t.is_finished()) {
        if let Err(panic) = hammers.swap_remove(failed).1.join() {
            std::panic::resume_unwind(panic);
        }
    }
    changing.store(true, Ordering::SeqCst);
    change();
    returned.set(Instant::now()).unwrap();
    hammers
        .into_iter()
        .map(|(_, t)| t.join().unwrap())
        .collect()
}

/// Every node refused after `change` returned, each time with a 401 whose body
/// says `refusal`, and accepted no request sent more than a second after.
fn assert_refused_within_a_second(seen: &[AfterChange], change: &str, refusal: &str) {
    for node in seen {
        let last = node
            .accepted
            .last()
            .map(|d| format!(", the last {d:?} after"))
            .unwrap_or_default();
        println!(
            "{}: accepted {} request(s) sent after {change} returned{last}; refused {}",
            node.url,
            node.accepted.len(),
            node.refused.len()
        );
        assert!(!node.refused.is_empty(), "{} never refused", node.url);
        for (status, body) in &node.refused {
            assert!(
                *status == 401 && body.contains(refusal),
                "{}: {status} {body}",
                node.url
            );
        }
        assert!(
            node.accepted.iter().all(|d| *d <= Duration::from_secs(1)),
            "{} accepted requests sent more than a second after {change} returned: {:?}",
            node.url,
            node.accepted
        );
    }
}

/// One chat completion with `key`: status and body.
fn complete(url: &str, key: &str) -> (u16, String) {
    burst(&[url.to_owned()], key, 1).remove(0)
}

#[test]
fn a_key_revoked_through_one_node_is_refused_by_the_others_within_a_second() {
    let Some(pg) =
        dependencies("a_key_revoked_through_one_node_is_refused_by_the_others_within_a_second")
    else {
        return;
    };
    let w = Watched::start(&pg, &[]);
    w.cluster
        .cli_json(&["projects", "create", "bench", "--json"]);
    let (id, key) = w.cluster.key("to-revoke", &[]);
    let seen = hammer_around(
        &w.cluster.urls()[1..],
        move |url| complete(url, &key),
        || {
            let revoked = w.cluster.cli_json(&["keys", "revoke", &id, "--json"]);
            assert_eq!(revoked["status"], "revoked", "{revoked}");
        },
    );
    assert_refused_within_a_second(&seen, "the revocation", "has been revoked");
    assert!(w.channel.saw("keys", &id), "{:?}", w.channel.messages());
}

#[test]
fn a_leak_reported_through_one_node_is_refused_by_the_others_within_a_second() {
    let Some(pg) =
        dependencies("a_leak_reported_through_one_node_is_refused_by_the_others_within_a_second")
    else {
        return;
    };
    let w = Watched::start(&pg, &[]);
    w.cluster
        .cli_json(&["projects", "create", "bench", "--json"]);
    let (id, key) = w.cluster.key("to-leak", &[]);
    let found = format!("{key}\n");
    let seen = hammer_around(
        &w.cluster.urls()[1..],
        move |url| complete(url, &key),
        || {
            // As a scanner sends what it found: the token on stdin.
            let report = w.cluster.cli_json_with(
                &["leaks", "report", "--location", "app.py:3", "--json"],
                &[],
                &found,
            );
            assert_eq!(report[0]["result"], "disabled", "{report}");
        },
    );
    assert_refused_within_a_second(&seen, "the leak report", "found exposed");
    assert!(w.channel.saw("keys", &id), "{:?}", w.channel.messages());
}

/// A dashboard user made through node 0, then signed in through each node
/// over HTTP as a browser on the public URL: the user's id, and each node's
/// session cookie (the `Cookie` header value), in the order of `urls()`.
fn signed_in_on_every_node(cluster: &Cluster, email: &str) -> (String, Vec<String>) {
    let user = cluster.cli_json_with(
        &[
            "users", "create", "--email", email, "--org", "acme", "--role", "member", "--json",
        ],
        &[("KEYWARD_PASSWORD", PASSWORD)],
        "",
    );
    let cookies = cluster
        .urls()
        .iter()
        .map(|url| {
            let (status, body, cookie) = block_on(async {
                let r = reqwest::Client::new()
                    .post(format!("{url}/auth/login"))
                    .header("origin", PUBLIC_URL)
                    .json(&json!({"email": email, "password": PASSWORD}))
                    .send()
                    .await
                    .unwrap();
                let cookie = r
                    .headers()
                    .get_all("set-cookie")
                    .iter()
                    .filter_map(|v| v.to_str().unwrap().split(';').next())
                    .filter(|pair| !pair.ends_with('='))
                    .collect::<Vec<_>>()
                    .join("; ");
                (r.status().as_u16(), r.text().await.unwrap(), cookie)
            });
            assert!(
                status == 200 && body.contains("signed_in") && cookie.contains("keyward_session="),
                "signing in through {url}: {status} {body}"
            );
            cookie
        })
        .collect();
    (user["id"].as_str().unwrap().to_owned(), cookies)
}

/// A browser's request with a session cookie, from the public URL's origin:
/// status and body.
fn as_browser(
    method: reqwest::Method,
    url: &str,
    cookie: &str,
    body: Option<Value>,
) -> (u16, String) {
    block_on(async {
        let mut request = reqwest::Client::new()
            .request(method, url)
            .header("origin", PUBLIC_URL)
            .header("cookie", cookie);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let r = request.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

/// `GET /auth/me`: whether the session is open.
fn me(url: &str, cookie: &str) -> (u16, String) {
    as_browser(
        reqwest::Method::GET,
        &format!("{url}/auth/me"),
        cookie,
        None,
    )
}

/// Hammers `/auth/me` on nodes 1 and 2, each with its own session of a user
/// also signed in on node 0, around `change` (given node 0's URL and cookie),
/// and checks that the sessions on 1 and 2 ended within a second, through a
/// message naming the user. Answers node 0's cookie.
fn sessions_end_on_the_others_within_a_second(
    pg: &str,
    change: &str,
    through_a: impl FnOnce(&str, &str),
) -> (Watched, String) {
    let w = Watched::start(pg, &["--public-url", PUBLIC_URL]);
    let (user, cookies) = signed_in_on_every_node(&w.cluster, "ada@example.com");
    let urls = w.cluster.urls();
    let by_node: std::collections::HashMap<String, String> = urls[1..]
        .iter()
        .cloned()
        .zip(cookies[1..].iter().cloned())
        .collect();
    let seen = hammer_around(
        &urls[1..],
        move |url| me(url, &by_node[url]),
        || through_a(&urls[0], &cookies[0]),
    );
    assert_refused_within_a_second(&seen, change, "unauthorized");
    assert!(w.channel.saw("user", &user), "{:?}", w.channel.messages());
    (w, cookies[0].clone())
}

#[test]
fn log_out_everywhere_through_one_node_ends_sessions_on_the_others_within_a_second() {
    let name = "log_out_everywhere_through_one_node_ends_sessions_on_the_others_within_a_second";
    let Some(pg) = dependencies(name) else {
        return;
    };
    let (w, on_a) =
        sessions_end_on_the_others_within_a_second(&pg, "log out everywhere", |a, cookie| {
            let (status, body) = as_browser(
                reqwest::Method::POST,
                &format!("{a}/auth/sessions/end-all"),
                cookie,
                Some(json!({})),
            );
            assert_eq!(status, 200, "{body}");
        });
    // Everywhere includes the session that asked.
    assert_eq!(me(&w.cluster.node(0).url, &on_a).0, 401);
}

#[test]
fn a_password_change_through_one_node_ends_sessions_on_the_others_within_a_second() {
    let name = "a_password_change_through_one_node_ends_sessions_on_the_others_within_a_second";
    let Some(pg) = dependencies(name) else {
        return;
    };
    let (w, on_a) = sessions_end_on_the_others_within_a_second(
        &pg,
        "the password change",
        |a, cookie| {
            let (status, body) = as_browser(
                reqwest::Method::POST,
                &format!("{a}/auth/password"),
                cookie,
                Some(
                    json!({"current_password": PASSWORD, "new_password": "another long passphrase 8"}),
                ),
            );
            assert_eq!(status, 200, "{body}");
        },
    );
    // Every other session: the one that changed it stays open.
    assert_eq!(me(&w.cluster.node(0).url, &on_a).0, 200);
}
