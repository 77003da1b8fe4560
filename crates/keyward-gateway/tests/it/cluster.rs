//! Cluster mode: several servers in this process on one PostgreSQL schema and
//! one Redis (a channel prefix of their own), as separate nodes would be.
//!
//! The nodes trust their caches for an hour here, so anything another node
//! refuses after a change was refused because the invalidation arrived, never
//! because a cache entry ran out.
//!
//! Needs `KEYWARD_TEST_POSTGRES_URL` and `KEYWARD_TEST_REDIS_URL`; without them
//! these tests say so and pass, except under `CI=true`, where they fail.

use crate::accounts::{Browser, PASSWORD};
use crate::support::{Upstream, UPSTREAM_KEY};
use keyward_core::Clock;
use keyward_gateway::cluster::Invalidation;
use keyward_gateway::config::{RedisSettings, WhenRedisDown};
use keyward_gateway::state::SharedState;
use keyward_gateway::{GatewayConfig, Server, UpstreamConfig};
use keyward_store::postgres::PgStore;
use keyward_store::SharedStore;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const POSTGRES_URL_VAR: &str = "KEYWARD_TEST_POSTGRES_URL";
const REDIS_URL_VAR: &str = "KEYWARD_TEST_REDIS_URL";

/// The value of `var`, or `None` (after saying so) to skip; under `CI=true` a
/// missing variable is a failure.
fn required(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "{var} is not set, and CI=true: the cluster tests must run in CI (.ci/run sets it)"
            )
        }
        _ => {
            println!("skipping the cluster test: {var} is not set");
            None
        }
    }
}

/// Where the cluster's dependencies are, and the names this test alone uses.
struct Deps {
    postgres: String,
    redis: String,
    schema: String,
    prefix: String,
}

/// Runs `body` with a fresh schema and channel prefix; drops the schema
/// afterwards whether `body` passed or panicked.
async fn with_deps<F, Fut>(body: F)
where
    F: FnOnce(Arc<Deps>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (Some(postgres), Some(redis)) = (required(POSTGRES_URL_VAR), required(REDIS_URL_VAR))
    else {
        return;
    };
    let unique = keyward_core::base62::random(16).to_ascii_lowercase();
    let deps = Arc::new(Deps {
        postgres,
        redis,
        schema: format!("kw_cluster_{unique}"),
        prefix: format!("kwtest:{unique}:"),
    });
    let outcome = tokio::spawn(body(deps.clone())).await;
    let mut conn = sqlx::PgConnection::connect(&deps.postgres)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", deps.schema))
        .execute(&mut conn)
        .await
        .expect("drop the test schema");
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task failed: {e}"),
        }
    }
}

/// One node: a server on its own port-0 socket and its own store connection.
struct Node {
    url: String,
    state: SharedState,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Node {
    /// Starts a node on the shared schema with `redis` as its Redis URL.
    /// Nodes share `data_dir` for the secrets key (an operator gives every
    /// node the same one).
    async fn start(
        deps: &Deps,
        redis: &str,
        upstream: &Upstream,
        data_dir: &std::path::Path,
    ) -> Self {
        Self::start_with(deps, &deps.postgres, redis, upstream, data_dir, |_| {}).await
    }

    /// [`Node::start`] on PostgreSQL at `postgres` (the shared database, or a
    /// way to it), with `tweak` applied to its configuration.
    async fn start_with(
        deps: &Deps,
        postgres: &str,
        redis: &str,
        upstream: &Upstream,
        data_dir: &std::path::Path,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let store: SharedStore = Arc::new(
            PgStore::connect_with_schema(postgres, &deps.schema)
                .await
                .expect("open the shared schema"),
        );
        let mut config = GatewayConfig::new(
            UpstreamConfig {
                base_url: upstream.base_url().parse().unwrap(),
                api_key: Some(keyward_core::Secret::new(UPSTREAM_KEY)),
            },
            data_dir.to_owned(),
        );
        config.key_cache_ttl = Duration::from_secs(3_600);
        config.redis = Some(RedisSettings {
            prefix: deps.prefix.clone(),
            ..RedisSettings::new(keyward_core::Secret::new(redis))
        });
        tweak(&mut config);
        let server = Server::new(config, store, Clock::system())
            .await
            .expect("start a node");
        let state = server.state();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, None, async move {
            let _ = stopped.await;
        }));
        Self {
            url,
            state,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Waits until the node's subscription is up (and, with it, its caches
    /// dropped once): from then on it hears every invalidation.
    async fn subscribed(&self) {
        while !self.state.bus.is_subscribed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn chat(&self, key: &str) -> StatusCode {
        self.http
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(key)
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn admin_post(&self, admin_key: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(admin_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    /// Makes a key with no limit through this node, as the first start's
    /// admin (its key file in `data_dir`); returns the answer (`id`, `key`).
    async fn new_key(&self, data_dir: &std::path::Path) -> Value {
        let admin_key = std::fs::read_to_string(data_dir.join("initial-admin-key")).unwrap();
        let (s, created) = self
            .admin_post(
                admin_key.trim(),
                "/api/v1/keys",
                json!({"project": "app", "name": "k", "create_project": true}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{created}");
        created
    }

    async fn readyz(&self) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}/readyz", self.url))
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    fn browser(&self) -> Browser {
        Browser {
            url: self.url.clone(),
            http: reqwest::Client::new(),
            cookies: Default::default(),
            origin: Some(self.url.clone()),
        }
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// Two nodes, A and B, both subscribed, and the admin key A's first start wrote.
struct Pair {
    a: Node,
    b: Node,
    admin_key: String,
    _upstream: Upstream,
    _dir: tempfile::TempDir,
}

impl Pair {
    /// Starts A on Redis, then B on `b_redis` (Redis itself, or a way to it).
    async fn start(deps: &Deps, b_redis: &str) -> Self {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let a = Node::start(deps, &deps.redis, &upstream, dir.path()).await;
        let admin_key = std::fs::read_to_string(dir.path().join("initial-admin-key"))
            .unwrap()
            .trim()
            .to_owned();
        let b = Node::start(deps, b_redis, &upstream, dir.path()).await;
        a.subscribed().await;
        b.subscribed().await;
        Self {
            a,
            b,
            admin_key,
            _upstream: upstream,
            _dir: dir,
        }
    }

    /// A key made through A; returns (id, secret).
    async fn key(&self) -> (String, String) {
        let (s, v) = self
            .a
            .admin_post(
                &self.admin_key,
                "/api/v1/keys",
                json!({"project": "app", "name": "k", "create_project": true}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        (
            v["id"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        )
    }

    /// A user made through A, signed in through A; the browser is B's (the
    /// same cookie, sent to B).
    async fn signed_in_on_b(&self, email: &str) -> (Browser, Browser) {
        let (s, v) = self
            .a
            .admin_post(
                &self.admin_key,
                "/api/v1/users",
                json!({"email": email, "org": "acme", "role": "member", "password": PASSWORD}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let mut on_a = self.a.browser();
        on_a.sign_in(email, PASSWORD).await;
        let mut on_b = self.b.browser();
        on_b.cookies = on_a.cookies.clone();
        assert_eq!(
            on_b.get("/auth/me").await.0,
            StatusCode::OK,
            "cached on B now"
        );
        (on_a, on_b)
    }

    async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

/// What one request to B saw.
struct Seen {
    started: Instant,
    ended: Instant,
    status: StatusCode,
}

/// The attack: a key is revoked (say, it leaked) through node A while its
/// holder keeps calling node B, which has it cached. Clients hammer B; once
/// each has been served, the key is revoked through A's API. No request that
/// B accepted may have started after the revocation was answered; and how
/// long after the answer B first refused is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_on_one_node_refused_by_the_other() {
    with_deps(|deps| async move {
        let pair = Pair::start(&deps, &deps.redis).await;
        let (id, secret) = pair.key().await;
        assert_eq!(pair.b.chat(&secret).await, StatusCode::OK);
        let hits_before = pair.b.state.metrics.key_cache_hits.get();

        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let served = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(std::sync::OnceLock::<Instant>::new());
        // Each client stops at its first refusal, or once it has been served
        // `LATE_LIMIT` times after the answer (the bus is broken: fail, not hang).
        const LATE_LIMIT: usize = 20;
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (url, secret, seen, served, answered) = (
                    pair.b.url.clone(),
                    secret.clone(),
                    seen.clone(),
                    served.clone(),
                    answered.clone(),
                );
                tokio::spawn(async move {
                    let b = reqwest::Client::new();
                    let mut late = 0;
                    loop {
                        let started = Instant::now();
                        let status = b
                            .post(format!("{url}/v1/chat/completions"))
                            .bearer_auth(&secret)
                            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
                            .send()
                            .await
                            .unwrap()
                            .status();
                        let ended = Instant::now();
                        seen.lock().unwrap().push(Seen { started, ended, status });
                        if status != StatusCode::OK {
                            return;
                        }
                        served.fetch_add(1, Ordering::Relaxed);
                        if answered.get().is_some_and(|a| started >= *a) {
                            late += 1;
                            if late == LATE_LIMIT {
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        while served.load(Ordering::Relaxed) < 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (s, v) = pair
            .a
            .admin_post(&pair.admin_key, &format!("/api/v1/keys/{id}/revoke"), json!({}))
            .await;
        let answered = *answered.get_or_init(Instant::now);
        assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("revoked")), "{v}");
        for c in clients {
            c.await.unwrap();
        }

        let seen = std::mem::take(&mut *seen.lock().unwrap());
        assert!(
            pair.b.state.metrics.key_cache_hits.get() > hits_before,
            "B served the key from its cache"
        );
        let late: Vec<_> = seen
            .iter()
            .filter(|s| s.status == StatusCode::OK && s.started >= answered)
            .collect();
        assert!(
            late.is_empty(),
            "B accepted {} request(s) that started after the revocation was answered",
            late.len()
        );
        for s in seen.iter().filter(|s| s.status != StatusCode::OK) {
            assert_eq!(s.status, StatusCode::UNAUTHORIZED);
        }
        let first_refusal = seen
            .iter()
            .filter(|s| s.status == StatusCode::UNAUTHORIZED)
            .map(|s| s.ended)
            .min()
            .expect("B refused the revoked key");
        let after = first_refusal
            .checked_duration_since(answered)
            .map_or_else(|| format!("-{:?}", answered - first_refusal), |d| format!("{d:?}"));
        println!(
            "B's first refusal ended {after} after A answered the revocation ({} requests served, {} refused)",
            seen.iter().filter(|s| s.status == StatusCode::OK).count(),
            seen.iter().filter(|s| s.status != StatusCode::OK).count()
        );
        pair.shutdown().await;
    })
    .await;
}

/// A leak reported through node A disables the key on node B, which had it
/// cached, at once; and clearing the leak through A lets B serve it again
/// (B's cached "leaked" copy is dropped too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_reported_on_one_node_is_refused_by_the_other() {
    with_deps(|deps| async move {
        let pair = Pair::start(&deps, &deps.redis).await;
        let (id, secret) = pair.key().await;
        assert_eq!(pair.b.chat(&secret).await, StatusCode::OK);
        let (s, v) = pair
            .a
            .admin_post(
                &pair.admin_key,
                "/api/v1/leaks",
                json!({"leaks": [{"token": secret, "location": "app.py:3"}]}),
            )
            .await;
        assert_eq!(
            (s, v["data"][0]["result"].as_str()),
            (StatusCode::OK, Some("disabled")),
            "{v}"
        );
        assert_eq!(pair.b.chat(&secret).await, StatusCode::UNAUTHORIZED);
        let (s, v) = pair
            .a
            .admin_post(
                &pair.admin_key,
                &format!("/api/v1/keys/{id}/clear-leak"),
                json!({"reason": "a false positive"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(pair.b.chat(&secret).await, StatusCode::OK);
        pair.shutdown().await;
    })
    .await;
}

/// A session ended through node A (from another device, by its id) is
/// refused by node B, which had it cached, on its very next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_on_one_node_is_refused_by_the_other() {
    with_deps(|deps| async move {
        let pair = Pair::start(&deps, &deps.redis).await;
        let (mut laptop_on_a, _) = pair.signed_in_on_b("ada@example.com").await;
        let (_, mut phone_on_b) = pair.signed_in_on_b_again("ada@example.com").await;
        let (_, list) = laptop_on_a.get("/auth/sessions").await;
        let phone = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["current"] == false)
            .expect("the phone's session")["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (s, _) = laptop_on_a.delete(&format!("/auth/sessions/{phone}")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(phone_on_b.get("/auth/me").await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(laptop_on_a.get("/auth/me").await.0, StatusCode::OK);
        pair.shutdown().await;
    })
    .await;
}

impl Pair {
    /// Another session of an existing user: signed in through A, its cookie
    /// cached on B.
    async fn signed_in_on_b_again(&self, email: &str) -> (Browser, Browser) {
        let mut on_a = self.a.browser();
        on_a.sign_in(email, PASSWORD).await;
        let mut on_b = self.b.browser();
        on_b.cookies = on_a.cookies.clone();
        assert_eq!(
            on_b.get("/auth/me").await.0,
            StatusCode::OK,
            "cached on B now"
        );
        (on_a, on_b)
    }
}

/// "Log out everywhere" through node A ends the sessions node B has cached,
/// and so does a password change (every other session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_out_everywhere_and_a_password_change_reach_the_other_node() {
    with_deps(|deps| async move {
        let pair = Pair::start(&deps, &deps.redis).await;
        let (mut on_a, mut on_b) = pair.signed_in_on_b("ada@example.com").await;
        let (s, v) = on_a.post("/auth/sessions/end-all", json!({})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(on_b.get("/auth/me").await.0, StatusCode::UNAUTHORIZED);

        let (mut on_a, _) = pair.signed_in_on_b_again("ada@example.com").await;
        let (_, mut other_on_b) = pair.signed_in_on_b_again("ada@example.com").await;
        let (s, v) = on_a
            .post(
                "/auth/password",
                json!({"current_password": PASSWORD, "new_password": "another horse battery staple 43"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(other_on_b.get("/auth/me").await.0, StatusCode::UNAUTHORIZED);
        pair.shutdown().await;
    })
    .await;
}

/// A TCP relay to a server (Redis, PostgreSQL) whose connections the test
/// can cut, or refuse altogether, as a network failure between a node and
/// that server would.
struct Relay {
    /// The server's URL with the relay's address in it.
    url: String,
    live: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    /// A relay to the server of `url` (`scheme://[user[:pw]@]host:port/…`).
    async fn start(url: &str) -> Self {
        let target = url
            .split_once("://")
            .expect("a URL")
            .1
            .split('/')
            .next()
            .unwrap()
            .rsplit('@')
            .next()
            .unwrap()
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = url.replacen(&target, &listener.local_addr().unwrap().to_string(), 1);
        let live = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = live.clone();
        let refuse = down.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if refuse.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let target = target.clone();
                let relay = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns.lock().unwrap().push(relay.abort_handle());
            }
        });
        Self { url, live, down }
    }

    /// Closes every connection relayed so far.
    fn cut(&self) {
        for c in self.live.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Cuts every connection and refuses new ones until [`Relay::up`].
    fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut();
    }

    fn up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// A node whose subscription broke may have missed invalidations: when it
/// subscribes again it drops every cache. Here a key is revoked behind the
/// cluster's back (in the database, no message), so only that drop can make
/// node B refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_reconnect_drops_caches() {
    with_deps(|deps| async move {
        let relay = Relay::start(&deps.redis).await;
        let pair = Pair::start(&deps, &relay.url).await;
        let (id, secret) = pair.key().await;
        assert_eq!(pair.b.chat(&secret).await, StatusCode::OK);
        let id = keyward_core::KeyId::parse(&id).unwrap();
        pair.b
            .state
            .store
            .set_key_status(&id, keyward_store::KeyStatus::Revoked, 1)
            .await
            .unwrap();
        assert_eq!(
            pair.b.chat(&secret).await,
            StatusCode::OK,
            "B still trusts its cached copy: nothing told it"
        );
        let subscriptions = pair.b.state.bus.subscriptions();
        relay.cut();
        while pair.b.state.bus.subscriptions() == subscriptions {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(pair.b.chat(&secret).await, StatusCode::UNAUTHORIZED);
        pair.shutdown().await;
    })
    .await;
}

/// Anyone who can publish on the channel can send anything: a message that is
/// not an invalidation is counted and ignored, and the next real one still
/// applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_on_the_channel_is_ignored() {
    with_deps(|deps| async move {
        let pair = Pair::start(&deps, &deps.redis).await;
        let (id, secret) = pair.key().await;
        assert_eq!(pair.b.chat(&secret).await, StatusCode::OK);
        let key = keyward_core::KeyId::parse(&id).unwrap();
        pair.b
            .state
            .store
            .set_key_status(&key, keyward_store::KeyStatus::Revoked, 1)
            .await
            .unwrap();
        let client = redis::Client::open(deps.redis.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let channel = format!("{}invalidations", deps.prefix);
        for junk in [
            "not json".to_owned(),
            json!({"node": "x", "kind": "keys", "ids": ["../../etc/passwd"]}).to_string(),
            json!({"node": "x", "kind": "everything", "ids": [], "extra": true}).to_string(),
            "x".repeat(100_000),
        ] {
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(junk)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap();
        }
        // A real one, as another node would send it, after the junk.
        redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(json!({"node": "other", "kind": "keys", "ids": [id]}).to_string())
            .query_async::<i64>(&mut conn)
            .await
            .unwrap();
        while pair.b.state.bus.received() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(pair.b.chat(&secret).await, StatusCode::UNAUTHORIZED);
        assert!(pair.b.state.bus.is_subscribed());
        let metrics = {
            let mut text = String::new();
            pair.b.state.bus.render_metrics(&mut text);
            text
        };
        assert!(
            metrics.contains("keyward_invalidations_malformed_total 4"),
            "{metrics}"
        );
        pair.shutdown().await;
    })
    .await;
}

/// A loopback address nothing listens on (a Redis that is down).
fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// `/readyz` names each dependency: with Redis unreachable (a closed port)
/// the node starts, and says it is not ready and why; with Redis up, ready.
/// Changes made meanwhile are not held up by the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_redis_down() {
    with_deps(|deps| async move {
        let closed = closed_port();
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let up = Node::start(&deps, &deps.redis, &upstream, dir.path()).await;
        up.subscribed().await;
        assert_eq!(
            up.readyz().await,
            (
                StatusCode::OK,
                json!({"status": "ready", "database": "up", "usage": "flowing", "redis": "up"})
            )
        );
        let down = Node::start(&deps, &format!("redis://{closed}"), &upstream, dir.path()).await;
        assert_eq!(
            down.readyz().await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "unavailable", "database": "up", "usage": "flowing", "redis": "down"})
            )
        );

        // A change made on the node that cannot reach Redis is still made and
        // answered, takes effect there at once, and the failed publish counts.
        let admin_key = std::fs::read_to_string(dir.path().join("initial-admin-key")).unwrap();
        let admin_key = admin_key.trim();
        let created = down.new_key(dir.path()).await;
        let secret = created["key"].as_str().unwrap();
        assert_eq!(down.chat(secret).await, StatusCode::OK);
        let (s, v) = down
            .admin_post(
                admin_key,
                &format!("/api/v1/keys/{}/revoke", created["id"].as_str().unwrap()),
                json!({}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(down.chat(secret).await, StatusCode::UNAUTHORIZED);
        let mut metrics = String::new();
        down.state.bus.render_metrics(&mut metrics);
        assert!(
            metrics.contains("keyward_invalidations_publish_failures_total 1\n"),
            "{metrics}"
        );
        up.shutdown().await;
        down.shutdown().await;
    })
    .await;
}

/// An operator who would rather stop than serve without the bus
/// (`--redis-down refuse-all`): with Redis out of reach, even a key with no
/// limit is refused, with the OpenAI-shaped `limits_unavailable`; by default
/// (`readyz_reports_redis_down`) the same key is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_all_refuses_even_unlimited_keys_while_redis_is_down() {
    with_deps(|deps| async move {
        let closed = closed_port();
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let down = Node::start_with(
            &deps,
            &deps.postgres,
            &format!("redis://{closed}"),
            &upstream,
            dir.path(),
            |config| {
                if let Some(redis) = config.redis.as_mut() {
                    redis.when_down = WhenRedisDown::RefuseAll;
                }
            },
        )
        .await;
        let created = down.new_key(dir.path()).await;
        let answer = down
            .http
            .post(format!("{}/v1/chat/completions", down.url))
            .bearer_auth(created["key"].as_str().unwrap())
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "limits_unavailable", "{body}");
        down.shutdown().await;
    })
    .await;
}

/// The invalidation a node applies for another is the same it applies for
/// itself: `Everything` empties every cache (checked on the key cache, the
/// one a request fills).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_drops_the_key_cache() {
    with_deps(|deps| async move {
        let pair = Pair::start(&deps, &deps.redis).await;
        let (_, secret) = pair.key().await;
        assert_eq!(pair.b.chat(&secret).await, StatusCode::OK);
        assert!(!pair.b.state.keys.is_empty());
        pair.b.state.drop_cached(&Invalidation::Everything);
        assert!(pair.b.state.keys.is_empty());
        pair.shutdown().await;
    })
    .await;
}

/// Cluster mode over SQLite is refused: the nodes would each have their own
/// database and only believe they share one.
#[tokio::test]
async fn redis_over_sqlite_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = keyward_store::open(&format!(
        "sqlite://{}",
        dir.path().join("keyward.db").display()
    ))
    .await
    .unwrap();
    let mut config = GatewayConfig::new(
        UpstreamConfig {
            base_url: "http://127.0.0.1:9/v1".parse().unwrap(),
            api_key: None,
        },
        dir.path().to_owned(),
    );
    config.redis = Some(RedisSettings::new(keyward_core::Secret::new(
        "redis://:hunter2@127.0.0.1:6379",
    )));
    match Server::new(config, store, Clock::system()).await {
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("needs PostgreSQL"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        Ok(_) => panic!("a node started in cluster mode on SQLite"),
    }
}

/// A node started with another `--redis-prefix` than its cluster's would be
/// ready and yet count limits and hear invalidations on its own: refused at
/// start, with both prefixes named.
#[tokio::test]
async fn a_node_with_another_redis_prefix_than_its_cluster_refuses_to_start() {
    with_deps(|deps| async move {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let first = Node::start(&deps, &deps.redis, &upstream, dir.path()).await;
        let store: SharedStore = Arc::new(
            PgStore::connect_with_schema(&deps.postgres, &deps.schema)
                .await
                .unwrap(),
        );
        let mut config = GatewayConfig::new(
            UpstreamConfig {
                base_url: upstream.base_url().parse().unwrap(),
                api_key: Some(keyward_core::Secret::new(UPSTREAM_KEY)),
            },
            dir.path().to_owned(),
        );
        config.redis = Some(RedisSettings {
            prefix: format!("{}other:", deps.prefix),
            ..RedisSettings::new(keyward_core::Secret::new(deps.redis.as_str()))
        });
        match Server::new(config, store, Clock::system()).await {
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains(&format!("{:?}", deps.prefix)), "{text}");
                assert!(text.contains("other:"), "{text}");
            }
            Ok(_) => panic!("a node with another prefix started"),
        }
        // The same prefix starts, as every node of the cluster does.
        let second = Node::start(&deps, &deps.redis, &upstream, dir.path()).await;
        drop((first, second));
    })
    .await;
}

/// The attack on counting: take the database away and keep calling. The
/// node serves the cached key while its usage waits in memory, up to the
/// bound (5 events here); then it refuses with `usage_backlog` rather than
/// serve what it could not count. When the database is back, service
/// resumes by itself and every request served is stored, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_buffers_usage_to_a_bound_then_refuses_and_loses_nothing() {
    with_deps(|deps| async move {
        let postgres = Relay::start(&deps.postgres).await;
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start_with(
            &deps,
            &postgres.url,
            &deps.redis,
            &upstream,
            dir.path(),
            |c| c.usage_batch.max_pending = 5,
        )
        .await;
        let v = node.new_key(dir.path()).await;
        let (id, secret) = (v["id"].as_str().unwrap(), v["key"].as_str().unwrap());
        assert_eq!(node.chat(secret).await, StatusCode::OK);
        let mut served = 1;

        postgres.down();
        let refusal = loop {
            let r = node
                .http
                .post(format!("{}/v1/chat/completions", node.url))
                .bearer_auth(secret)
                .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            if r.status() != StatusCode::OK {
                break (r.status(), r.json::<Value>().await.unwrap());
            }
            served += 1;
            assert!(served < 1_000, "the node never stopped serving");
            // Lets the writer take the events and fail.
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(refusal.0, StatusCode::SERVICE_UNAVAILABLE, "{}", refusal.1);
        assert_eq!(refusal.1["error"]["code"], "usage_backlog", "{}", refusal.1);
        assert!(served > 1, "cached keys are served while usage fits the buffer");
        assert!(
            served <= 1 + 5,
            "no more than the bound waits in memory: {served} served"
        );
        let (status, ready) = node.readyz().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
        assert_eq!(ready["usage"], "full", "{ready}");

        postgres.up();
        while node.chat(secret).await != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        served += 1;
        node.state.usage.flush().await;
        let stored = node
            .state
            .store
            .usage_totals(&keyward_store::UsageFilter {
                key: keyward_core::KeyId::parse(id),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(stored.requests, served, "every request served is stored");
        let (status, ready) = node.readyz().await;
        assert_eq!((status, &ready["usage"]), (StatusCode::OK, &json!("flowing")), "{ready}");
        node.shutdown().await;
    })
    .await;
}

/// What an operator watches: after a limited key's request and a revocation,
/// a node's metrics show the charge script's round trip, the bus's lag (its
/// own message back from Redis) and the holds it has open (none once the
/// request ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_redis_round_trips_bus_lag_and_open_holds() {
    with_deps(|deps| async move {
        let pair = Pair::start(&deps, &deps.redis).await;
        let (s, v) = pair
            .a
            .admin_post(
                &pair.admin_key,
                "/api/v1/keys",
                json!({"project": "app", "name": "limited", "create_project": true,
                       "policy": {"rpm": 100, "max_concurrent": 5}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (id, secret) = (v["id"].as_str().unwrap(), v["key"].as_str().unwrap());
        assert_eq!(pair.a.chat(secret).await, StatusCode::OK);
        let (s, _) = pair
            .a
            .admin_post(
                &pair.admin_key,
                &format!("/api/v1/keys/{id}/revoke"),
                json!({}),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let metrics = || {
            let state = &pair.a.state;
            let mut text = state.metrics.render();
            state.bus.render_metrics(&mut text);
            state.limits.counters.render_metrics(&mut text);
            text
        };
        let count = |text: &str, series: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
        };
        // The revocation's own message comes back asynchronously.
        while count(&metrics(), "keyward_invalidation_lag_seconds_count") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pair.a.state.limits.counters.flush().await;
        let text = metrics();
        assert!(
            count(&text, "keyward_redis_round_trip_seconds_count") >= 1,
            "{text}"
        );
        assert_eq!(
            count(
                &text,
                "keyward_redis_round_trip_seconds_bucket{le=\"+Inf\"}"
            ),
            count(&text, "keyward_redis_round_trip_seconds_count")
        );
        assert_eq!(
            count(&text, "keyward_redis_holds_open{kind=\"slot\"}"),
            0,
            "{text}"
        );
        assert_eq!(
            count(&text, "keyward_redis_holds_open{kind=\"budget\"}"),
            0,
            "{text}"
        );
        assert_eq!(
            count(&text, "keyward_redis_settlements_waiting"),
            0,
            "{text}"
        );
        assert!(!text.contains(secret), "no key in the metrics");
        pair.shutdown().await;
    })
    .await;
}
