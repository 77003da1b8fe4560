//! What accounts cost, each figure beside its baseline from the same run:
//!
//! 1. One argon2id hash with the default parameters (m=19456 KiB, t=2, p=1),
//!    the floor of a password sign-in.
//! 2. Password sign-ins per second per core: the real server on loopback with
//!    its SQLite store, 4 clients signing in for a fixed time; the server's CPU
//!    time (this process's, minus the clients' share measured alone) divides
//!    the count. Compared with one hash per sign-in (the floor) and Keycloak's
//!    published sizing of about 15 password sign-ins per second per vCPU.
//! 3. A cached session check (`auth::session::find`: the cookie's SHA-256 and a
//!    cache read) against a bare SHA-256 of the same cookie.
//! 4. `GET /api/v1/keys` with a session cookie against the same request with
//!    an admin key, one client, closed loop.
//!
//! Run: `cargo bench -p keyward-gateway --bench accounts` (or `cargo xtask bench
//! accounts`). Plain `main` (`harness = false`).

use keyward_core::Clock;
use keyward_gateway::{GatewayConfig, Server, UpstreamConfig};
use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};

const PASSWORD: &str = "a benchmark passphrase, long enough";

fn cpu_time() -> Duration {
    // /proc/self/stat fields 14 and 15: user and system time in clock ticks.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn main() {
    // 1. One hash.
    let n = 20;
    let started = Instant::now();
    for _ in 0..n {
        black_box(keyward_auth::password::hash(PASSWORD).unwrap());
    }
    let hash = started.elapsed() / n;
    println!(
        "argon2id hash (m=19456, t=2, p=1): {:.1} ms",
        hash.as_secs_f64() * 1e3
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let store = keyward_store::open(&format!("sqlite://{}", dir.path().join("k.db").display()))
            .await
            .unwrap();
        let config = GatewayConfig::new(
            UpstreamConfig {
                base_url: "http://127.0.0.1:9/v1".parse().unwrap(),
                api_key: None,
            },
            dir.path().to_owned(),
        );
        let server = Server::new(config, store, Clock::system()).await.unwrap();
        let state = server.state();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(server.run(listener, None, std::future::pending()));
        let admin = std::fs::read_to_string(dir.path().join("initial-admin-key")).unwrap();
        let admin = admin.trim().to_owned();
        let http = reqwest::Client::new();
        for i in 0..4 {
            let r = http
                .post(format!("{url}/api/v1/users"))
                .bearer_auth(&admin)
                .json(&json!({"email": format!("u{i}@bench.example"), "org": "bench", "role": "owner", "password": PASSWORD}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }

        // 2. Sign-ins per core. Throttling counts only failures; these succeed.
        let secs = 5.0;
        let cpu0 = cpu_time();
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..4 {
            let http = http.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                while t0.elapsed().as_secs_f64() < secs {
                    let r = http
                        .post(format!("{url}/auth/login"))
                        .json(&json!({"email": format!("u{i}@bench.example"), "password": PASSWORD}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    done += 1;
                }
                done
            }));
        }
        let mut sign_ins = 0;
        for t in tasks {
            sign_ins += t.await.unwrap();
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = (cpu_time() - cpu0).as_secs_f64();
        let per_core = sign_ins as f64 / cpu;
        println!(
            "sign-ins: {sign_ins} in {wall:.1} s = {:.1}/s; {:.1} per CPU-second (server and clients in one process); floor (1 hash each): {:.1}; Keycloak's sizing: ~15 per vCPU",
            sign_ins as f64 / wall,
            per_core,
            1.0 / hash.as_secs_f64()
        );

        // 3. A cached session check.
        let login = http
            .post(format!("{url}/auth/login"))
            .json(&json!({"email": "u0@bench.example", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        let cookie = login
            .headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("cookie", cookie.parse().unwrap());
        keyward_gateway::auth::session::find(&state, &headers).await.unwrap().unwrap();
        let n = 200_000;
        let t = Instant::now();
        for _ in 0..n {
            black_box(keyward_gateway::auth::session::find(&state, &headers).await.unwrap());
        }
        let check = t.elapsed() / n;
        let secret = cookie.split_once('=').unwrap().1.to_owned();
        let t = Instant::now();
        for _ in 0..n {
            black_box(keyward_auth::token::digest(black_box(&secret)));
        }
        let sha = t.elapsed() / n;
        println!(
            "cached session check: {:.2} µs (SHA-256 of the cookie alone: {:.2} µs)",
            check.as_secs_f64() * 1e6,
            sha.as_secs_f64() * 1e6
        );

        // 4. A session-authenticated request against an admin-key one.
        let n = 2_000;
        let mut results = Vec::new();
        for (name, session) in [("admin key", false), ("session", true), ("admin key", false), ("session", true)] {
            let t = Instant::now();
            for _ in 0..n {
                let req = http.get(format!("{url}/api/v1/keys"));
                let req = if session { req.header("cookie", &cookie) } else { req.bearer_auth(&admin) };
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), 200);
                black_box(r.bytes().await.unwrap());
            }
            results.push((name, t.elapsed() / n));
        }
        for (name, per) in &results[2..] {
            println!("GET /api/v1/keys with {name}: {:.0} µs per request", per.as_secs_f64() * 1e6);
        }
    });
}
