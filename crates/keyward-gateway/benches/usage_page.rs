//! The usage page against the raw events it summarizes (issue 19).
//!
//! For each size (1 thousand, 100 thousand and 1 million usage events by
//! default): a fresh SQLite store with an organization of 1,000 keys in 10
//! projects and that many events over the last 30 UTC days, seeded through
//! `insert_usage` in batches of 2,000, time-ordered as the metering writer
//! writes them. Keys are drawn Zipf-like (a few keys make most requests), models
//! from a mix of three with their list prices. Then the real server on loopback
//! and an owner signed in, and, one client, closed loop, after 3 warm-ups:
//!
//! 1. `GET /usage`, the page's default view (last 30 whole days, daily buckets,
//!    by key, top 8), with the session cookie;
//! 2. `GET /api/v1/usage?from=…&to=…&bucket=day&group_by=key&top=8`, the one
//!    API call the page reads (its chart data);
//! 3. the baseline, in the same process: the same answer from the raw events
//!    (`usage_events` for the org and range, summed in Rust per day and key,
//!    named, the top 8's series and "(other)", serialized), checked equal to
//!    the API's answer.
//!
//! Also printed: seeding time, the rollups' row counts, the store calls the
//! API call makes, timed in process, each alone too (to tell the queries from
//! HTTP, JSON and HTML), and the raw-events read alone.
//!
//! Run: `cargo bench -p keyward-gateway --bench usage_page [-- --sizes 1000,100000]`
//! (or `cargo xtask bench dashboard`). Plain `main` (`harness = false`).

use keyward_api::usage::{Usage, UsageBucket, UsageGroup, UsageSeries, UsageTotals, OTHER_GROUP};
use keyward_core::{KeyFormat, KeyHash, KeyId, KeyKind, KeyPolicy, Micros};
use keyward_gateway::{GatewayConfig, Server, UpstreamConfig};
use keyward_store::{Bucket, GroupBy, KeyRecord, NewKey, SharedStore, UsageEvent, UsageFilter};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

const PASSWORD: &str = "a benchmark passphrase, long enough";
const DAY_MS: i64 = 86_400_000;
const KEYS: usize = 1_000;
const PROJECTS: usize = 10;
const BATCH: usize = 2_000;
const TOP: usize = 8;
/// Timed requests per figure, after the warm-ups.
const SAMPLES: usize = 30;
const WARM_UPS: usize = 3;
/// The baseline stops early (after at least 5 samples) once it has run this long.
const SLOW_BUDGET: Duration = Duration::from_secs(30);
const MIN_SAMPLES: usize = 5;

/// A model, its share of requests and its list prices in micro-dollars per
/// token (= dollars per million tokens): input, cached input, output.
struct Model {
    name: &'static str,
    share: f64,
    prices: (f64, f64, f64),
}

const MODELS: [Model; 3] = [
    Model {
        name: "gpt-4o-mini",
        share: 0.6,
        prices: (0.15, 0.075, 0.60),
    },
    Model {
        name: "gpt-4o",
        share: 0.3,
        prices: (2.50, 1.25, 10.00),
    },
    Model {
        name: "o3-mini",
        share: 0.1,
        prices: (1.10, 0.55, 4.40),
    },
];

/// xorshift64*: deterministic and good enough to spread events.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Median and 90th percentile of some timings.
#[derive(Clone, Copy)]
struct Timing {
    p50: Duration,
    p90: Duration,
    samples: usize,
}

impl Timing {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        Timing {
            p50: at(0.5),
            p90: at(0.9),
            samples: samples.len(),
        }
    }

    fn cell(&self) -> String {
        format!("{:.1} / {:.1}", ms(self.p50), ms(self.p90))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Times `f` closed loop: warm-ups, then up to [`SAMPLES`] runs, stopping
/// after [`MIN_SAMPLES`] once [`SLOW_BUDGET`] is spent (for the slow baseline).
async fn measure<F, Fut>(mut f: F) -> Timing
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let started = Instant::now();
    f().await;
    // A figure that takes seconds gets one warm-up, not three.
    let warm_ups = if started.elapsed() > Duration::from_secs(1) {
        0
    } else {
        WARM_UPS - 1
    };
    for _ in 0..warm_ups {
        f().await;
    }
    let started = Instant::now();
    let mut samples = Vec::with_capacity(SAMPLES);
    while samples.len() < SAMPLES
        && (samples.len() < MIN_SAMPLES || started.elapsed() < SLOW_BUDGET)
    {
        let t = Instant::now();
        f().await;
        samples.push(t.elapsed());
    }
    Timing::of(samples)
}

/// One size's results.
struct Row {
    events: usize,
    seed: Duration,
    page: Option<Timing>,
    chart: Timing,
    /// The page's other API call: every group's totals, no buckets.
    baseline: Timing,
    /// The raw-events read alone (`usage_events`), one run.
    raw_read: Duration,
    queries: Timing,
    daily_rows: i64,
    hourly_rows: i64,
    hourly_model_rows: i64,
}

fn main() {
    let sizes = parse_sizes();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let rows: Vec<Row> = rt.block_on(async {
        let mut rows = Vec::new();
        for &n in &sizes {
            rows.push(run(n).await);
        }
        rows
    });

    println!();
    println!("| events | page ms (p50 / p90) | chart data ms (p50 / p90) | raw-events baseline ms (p50 / p90) | baseline ÷ page |");
    println!("|---:|---:|---:|---:|---:|");
    for r in &rows {
        let (page, ratio) = match r.page {
            Some(p) => (p.cell(), format!("{:.2}", ms(r.baseline.p50) / ms(p.p50))),
            None => (
                "— (no /usage page)".to_owned(),
                format!("{:.2} (÷ chart data)", ms(r.baseline.p50) / ms(r.chart.p50)),
            ),
        };
        println!(
            "| {} | {page} | {} | {} ({} runs) | {ratio} |",
            thousands(r.events),
            r.chart.cell(),
            r.baseline.cell(),
            r.baseline.samples
        );
    }
    println!();
    println!("| events | seeding s (events/s) | usage_daily rows | usage_hourly rows | usage_hourly_models rows | the API call's store calls in process ms | raw-events read alone ms (1 run) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.1} ({}/s) | {} | {} | {} | {} | {:.1} |",
            thousands(r.events),
            r.seed.as_secs_f64(),
            thousands((r.events as f64 / r.seed.as_secs_f64()) as usize),
            thousands(r.daily_rows as usize),
            thousands(r.hourly_rows as usize),
            thousands(r.hourly_model_rows as usize),
            r.queries.cell(),
            ms(r.raw_read)
        );
    }
}

async fn run(n: usize) -> Row {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("k.db");
    let store = keyward_store::open(&format!("sqlite://{}", db.display()))
        .await
        .expect("open SQLite");
    let now = keyward_core::Clock::system().now_ms();
    let midnight = now - now.rem_euclid(DAY_MS);
    let (from, to) = (midnight - 29 * DAY_MS, midnight + DAY_MS);

    // 1. The organization, its keys and N events.
    let keys = seed_keys(&store, now).await;
    let started = Instant::now();
    seed_events(&store, &keys, n, from, now).await;
    let seed = started.elapsed();
    println!(
        "{} events: seeded in {:.1} s",
        thousands(n),
        seed.as_secs_f64()
    );
    let (daily_rows, hourly_rows, hourly_model_rows) = rollup_rows(&db).await;

    // 2. The server, and an owner of the organization signed in.
    let config = GatewayConfig::new(
        UpstreamConfig {
            base_url: "http://127.0.0.1:9/v1".parse().expect("a URL"),
            api_key: None,
        },
        dir.path().to_owned(),
    );
    let server = Server::new(config, store.clone(), keyward_core::Clock::system())
        .await
        .expect("start the server");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(listener, None, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let cookie = sign_in(&http, &url, dir.path()).await;

    // 3. The page, its chart data and the baseline.
    let page_url = format!("{url}/usage");
    let page = {
        let r = http
            .get(&page_url)
            .header("cookie", &cookie)
            .send()
            .await
            .expect("GET /usage");
        if r.status() == 200 {
            Some(
                measure(|| async {
                    let r = http
                        .get(&page_url)
                        .header("cookie", &cookie)
                        .send()
                        .await
                        .expect("GET /usage");
                    assert_eq!(r.status(), 200);
                    black_box(r.bytes().await.expect("the page"));
                })
                .await,
            )
        } else {
            println!(
                "GET /usage answered {}: the page is not measured",
                r.status()
            );
            None
        }
    };
    let api_url =
        format!("{url}/api/v1/usage?from={from}&to={to}&bucket=day&group_by=key&top={TOP}");
    let chart = measure(|| async {
        let r = http
            .get(&api_url)
            .header("cookie", &cookie)
            .send()
            .await
            .expect("GET /api/v1/usage");
        assert_eq!(r.status(), 200);
        black_box(r.bytes().await.expect("the chart data"));
    })
    .await;
    let answer: Usage = http
        .get(&api_url)
        .header("cookie", &cookie)
        .send()
        .await
        .expect("GET /api/v1/usage")
        .json()
        .await
        .expect("the API's usage JSON");
    let filter = UsageFilter {
        org: answer.org.clone(),
        from: Some(from),
        to: Some(to),
        ..Default::default()
    };
    assert!(
        filter.org.is_some(),
        "the API answered for the caller's organization"
    );
    // The groups whose series the chart draws (the API reads only theirs).
    let top: Vec<String> = answer
        .groups
        .iter()
        .flatten()
        .take(TOP)
        .map(|g| g.group.clone())
        .collect();
    let expected = from_raw_events(&store, &filter).await;
    assert_eq!(
        (
            &expected.totals,
            &expected.buckets,
            &expected.groups,
            &expected.series
        ),
        (
            &answer.totals,
            &answer.buckets,
            &answer.groups,
            &answer.series
        ),
        "the raw events and the rollups disagree"
    );
    assert_eq!(
        expected.totals.requests, n as i64,
        "every event is in the range"
    );
    let baseline = measure(|| async {
        let usage = from_raw_events(&store, &filter).await;
        black_box(serde_json::to_vec(&usage).expect("serialize"));
    })
    .await;
    let t = Instant::now();
    black_box(
        store
            .usage_events(&filter, i64::MAX)
            .await
            .expect("raw events"),
    );
    let raw_read = t.elapsed();
    let queries = measure(|| async {
        black_box(
            store
                .usage_buckets(&filter, Bucket::Day)
                .await
                .expect("buckets"),
        );
        black_box(
            store
                .usage_grouped(&filter, GroupBy::Key)
                .await
                .expect("groups"),
        );
        black_box(
            store
                .usage_series(&filter, Bucket::Day, GroupBy::Key, &top)
                .await
                .expect("series"),
        );
        black_box(store.list_keys(None).await.expect("keys"));
    })
    .await;
    // Each call alone, to see which one the time goes to.
    let calls = [
        (
            "usage_buckets",
            measure(|| async {
                black_box(
                    store
                        .usage_buckets(&filter, Bucket::Day)
                        .await
                        .expect("buckets"),
                );
            })
            .await,
        ),
        (
            "usage_grouped",
            measure(|| async {
                black_box(
                    store
                        .usage_grouped(&filter, GroupBy::Key)
                        .await
                        .expect("groups"),
                );
            })
            .await,
        ),
        (
            "usage_series",
            measure(|| async {
                black_box(
                    store
                        .usage_series(&filter, Bucket::Day, GroupBy::Key, &top)
                        .await
                        .expect("series"),
                );
            })
            .await,
        ),
        (
            "list_keys",
            measure(|| async {
                black_box(store.list_keys(None).await.expect("keys"));
            })
            .await,
        ),
    ];
    let calls: Vec<String> = calls
        .iter()
        .map(|(name, t)| format!("{name} {:.1}", ms(t.p50)))
        .collect();
    println!(
        "{} events: the API's store calls, p50 ms: {}",
        thousands(n),
        calls.join(", ")
    );
    println!(
        "{} events: page {}, chart data {}, baseline {} (raw read alone {:.1}), store calls {} (ms, p50 / p90)",
        thousands(n),
        page.map_or_else(|| "—".to_owned(), |p| p.cell()),
        chart.cell(),
        baseline.cell(),
        ms(raw_read),
        queries.cell()
    );

    let _ = stop.send(());
    serving
        .await
        .expect("the server task")
        .expect("the server stops cleanly");
    drop(store);
    Row {
        events: n,
        seed,
        page,
        chart,
        baseline,
        raw_read,
        queries,
        daily_rows,
        hourly_rows,
        hourly_model_rows,
    }
}

/// Org "bench", 10 projects and 1,000 keys, through the store directly.
async fn seed_keys(store: &SharedStore, now: i64) -> Vec<KeyRecord> {
    let org = store.create_org("bench", now).await.expect("create org");
    let mut projects = Vec::new();
    for p in 0..PROJECTS {
        projects.push(
            store
                .create_project(&org.id, &format!("project-{p}"), now)
                .await
                .expect("create project"),
        );
    }
    let mut keys = Vec::with_capacity(KEYS);
    for k in 0..KEYS {
        let secret = KeyFormat::default().generate(KeyKind::Standard);
        let secret = secret.expose();
        let key = NewKey {
            id: KeyId::generate(),
            project_id: projects[k % PROJECTS].id.clone(),
            name: format!("key-{k:04}"),
            hash_hex: KeyHash::of(secret).to_hex(),
            hint: keyward_core::key::hint(secret),
            tags: vec![format!("team:{}", k % 7)],
            created_by: Some("bench".into()),
            created_at: now,
            expires_at: None,
            parent_id: None,
            parent_secret_hash: None,
            policy: KeyPolicy::default(),
        };
        keys.push(store.create_key(&key).await.expect("create key"));
    }
    keys
}

/// `n` events between `from` and `now`, oldest first, in batches of 2,000.
async fn seed_events(store: &SharedStore, keys: &[KeyRecord], n: usize, from: i64, now: i64) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ n as u64);
    let step = (now - from) as f64 / n as f64;
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..n {
        let at = (from + ((i as f64 + rng.unit()) * step) as i64).min(now - 1);
        batch.push(event(&mut rng, keys, at));
        if batch.len() == BATCH || i + 1 == n {
            store.insert_usage(&batch).await.expect("insert usage");
            batch.clear();
        }
    }
}

/// One request: a Zipf-like key (rank r drawn with weight about 1/r), a model
/// from the mix, skewed token counts, a few errors and cut-off streams.
fn event(rng: &mut Rng, keys: &[KeyRecord], at: i64) -> UsageEvent {
    let rank = (((keys.len() + 1) as f64).powf(rng.unit()) as usize).clamp(1, keys.len()) - 1;
    let key = &keys[rank];
    let pick = rng.unit();
    let mut acc = 0.0;
    let model = MODELS
        .iter()
        .find(|m| {
            acc += m.share;
            pick < acc
        })
        .unwrap_or(&MODELS[0]);
    let status = match rng.unit() {
        r if r < 0.015 => 429,
        r if r < 0.02 => 500,
        _ => 200,
    };
    let streamed = rng.unit() < 0.5;
    let incomplete = streamed && status == 200 && rng.unit() < 0.003;
    let (mut input, mut cached, mut output, mut reasoning) = (0, 0, 0, 0);
    if status == 200 {
        input = 150 + (rng.unit().powi(3) * 12_000.0) as i64;
        if rng.unit() < 0.3 {
            cached = (input as f64 * rng.unit() * 0.8) as i64;
        }
        output = 20 + (rng.unit().powi(2) * 1_500.0) as i64;
        if model.name == "o3-mini" {
            reasoning = output / 2;
        }
    }
    let (p_in, p_cached, p_out) = model.prices;
    let cost = (input - cached) as f64 * p_in + cached as f64 * p_cached + output as f64 * p_out;
    let upstream = 200 + (rng.unit() * 3_000.0) as i64;
    UsageEvent {
        key_id: key.id.clone(),
        project_id: key.project_id.clone(),
        org_id: key.org_id.clone(),
        at,
        endpoint: "/v1/chat/completions".into(),
        model: model.name.into(),
        status,
        input_tokens: input,
        cached_input_tokens: cached,
        output_tokens: output,
        reasoning_tokens: reasoning,
        cost_micros: Micros(cost.round() as i64),
        upstream_latency_ms: upstream,
        total_latency_ms: upstream + 5,
        client_ip: Some(format!("203.0.113.{}", rank % 250)),
        streamed,
        incomplete,
    }
}

/// Rows in `usage_daily`, `usage_hourly` and `usage_hourly_models`, read from
/// the database file (the store has no such call).
async fn rollup_rows(db: &Path) -> (i64, i64, i64) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .expect("open the database read-only");
    let mut counts = [0i64; 3];
    for (count, table) in
        counts
            .iter_mut()
            .zip(["usage_daily", "usage_hourly", "usage_hourly_models"])
    {
        *count = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .expect("count rows");
    }
    pool.close().await;
    (counts[0], counts[1], counts[2])
}

/// Creates an owner of org "bench" with the bootstrap admin key and signs in;
/// returns the session cookie (`name=value`).
async fn sign_in(http: &reqwest::Client, url: &str, data_dir: &Path) -> String {
    let admin =
        std::fs::read_to_string(data_dir.join("initial-admin-key")).expect("the initial admin key");
    let r = http
        .post(format!("{url}/api/v1/users"))
        .bearer_auth(admin.trim())
        .json(&json!({"email": "owner@bench.example", "org": "bench", "role": "owner", "password": PASSWORD}))
        .send()
        .await
        .expect("POST /api/v1/users");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.expect("the error body")
    );
    let login = http
        .post(format!("{url}/auth/login"))
        .json(&json!({"email": "owner@bench.example", "password": PASSWORD}))
        .send()
        .await
        .expect("POST /auth/login");
    assert_eq!(login.status(), 200);
    login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

/// The API's answer for `filter` (daily buckets, by key, top 8), computed
/// from the raw events instead of the rollups.
async fn from_raw_events(store: &SharedStore, filter: &UsageFilter) -> Usage {
    let events = store
        .usage_events(filter, i64::MAX)
        .await
        .expect("raw events");
    let names: HashMap<String, String> = store
        .list_keys(None)
        .await
        .expect("keys")
        .into_iter()
        .map(|k| (k.id.to_string(), k.name))
        .collect();
    let mut totals = UsageTotals::default();
    let mut per_day: BTreeMap<i64, UsageTotals> = BTreeMap::new();
    let mut per_key: HashMap<&str, KeyUsage> = HashMap::new();
    for e in &events {
        let day = e.at - e.at.rem_euclid(DAY_MS);
        add(&mut totals, e);
        add(per_day.entry(day).or_default(), e);
        let (key_totals, days) = per_key.entry(e.key_id.as_str()).or_default();
        add(key_totals, e);
        add(days.entry(day).or_default(), e);
    }
    let mut order: Vec<(&str, KeyUsage)> = per_key.into_iter().collect();
    order.sort_by(|a, b| {
        b.1 .0
            .cost_micros
            .cmp(&a.1 .0.cost_micros)
            .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
    });
    // Every key in `groups`; the top 8's series, then the rest as "(other)".
    let has_other = order.len() > TOP;
    let mut groups = Vec::new();
    let mut series = Vec::new();
    let mut other = BTreeMap::<i64, UsageTotals>::new();
    for (i, (key, (t, days))) in order.into_iter().enumerate() {
        let name = names.get(key).cloned();
        groups.push(UsageGroup {
            group: key.to_owned(),
            name: name.clone(),
            totals: t,
        });
        if i < TOP {
            series.push(UsageSeries {
                group: key.to_owned(),
                name,
                buckets: buckets(days),
            });
        } else {
            for (day, t) in days {
                sum(other.entry(day).or_default(), &t);
            }
        }
    }
    if has_other {
        series.push(UsageSeries {
            group: OTHER_GROUP.to_owned(),
            name: None,
            buckets: buckets(other),
        });
    }
    Usage {
        key: None,
        project: None,
        org: filter.org.clone(),
        from: filter.from,
        to: filter.to,
        totals,
        buckets: Some(buckets(per_day)),
        reserved_micros: None,
        groups: Some(groups),
        series: Some(series),
    }
}

/// One key's totals, and its totals per day.
type KeyUsage = (UsageTotals, BTreeMap<i64, UsageTotals>);

fn buckets(days: BTreeMap<i64, UsageTotals>) -> Vec<UsageBucket> {
    days.into_iter()
        .map(|(start, totals)| UsageBucket { start, totals })
        .collect()
}

fn add(t: &mut UsageTotals, e: &UsageEvent) {
    t.requests += 1;
    t.errors += i64::from(e.status >= 400);
    t.input_tokens += e.input_tokens;
    t.cached_input_tokens += e.cached_input_tokens;
    t.output_tokens += e.output_tokens;
    t.reasoning_tokens += e.reasoning_tokens;
    t.cost_micros += e.cost_micros.0;
    t.incomplete += i64::from(e.incomplete);
}

fn sum(t: &mut UsageTotals, o: &UsageTotals) {
    t.requests += o.requests;
    t.errors += o.errors;
    t.input_tokens += o.input_tokens;
    t.cached_input_tokens += o.cached_input_tokens;
    t.output_tokens += o.output_tokens;
    t.reasoning_tokens += o.reasoning_tokens;
    t.cost_micros += o.cost_micros;
    t.incomplete += o.incomplete;
}

/// 1000000 → "1,000,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Sizes from `--sizes a,b,c` (ascending), default 1 thousand, 100 thousand, 1 million.
/// Other arguments (cargo passes `--bench`) are ignored.
fn parse_sizes() -> Vec<usize> {
    let args: Vec<String> = std::env::args().collect();
    let mut sizes = vec![1_000, 100_000, 1_000_000];
    if let Some(i) = args.iter().position(|a| a == "--sizes") {
        let list = args
            .get(i + 1)
            .expect("--sizes needs a comma-separated list");
        sizes = list
            .split(',')
            .map(|s| s.trim().replace('_', "").parse().expect("--sizes: numbers"))
            .collect();
    }
    sizes.sort_unstable();
    sizes.dedup();
    assert!(
        sizes.first().is_some_and(|&s| s > 0),
        "sizes must be positive"
    );
    sizes
}
