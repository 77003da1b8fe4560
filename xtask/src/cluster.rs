//! `cargo xtask bench cluster`: the same key (a budget, rate limits and a
//! concurrency limit, all too high to refuse) through one node on SQLite, one
//! node on PostgreSQL, one node on PostgreSQL + Redis, and three nodes on
//! PostgreSQL + Redis behind nginx, side by side in one run on loopback, in
//! front of the simulated upstream. Reports throughput, latency, keyward's CPU
//! per request and the Redis commands each request cost (from Redis's own
//! `INFO commandstats`).
//!
//! Needs a PostgreSQL server (`--postgres URL`, default
//! `KEYWARD_TEST_POSTGRES_URL`; the run creates and drops its own databases),
//! `psql`, `redis-server` and `redis-cli` (the run starts its own Redis) and
//! nginx.

use crate::gateway::{self, cli};
use crate::load::{self, Outcome};
use crate::nginx;
use crate::procs::{self, Service};
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Settings of one run.
pub struct Options {
    pub duration: Duration,
    pub rounds: usize,
    pub postgres: Option<String>,
    pub out: Option<PathBuf>,
}

const CONNECTIONS: usize = 32;

/// One target: its nodes, where the load goes, and its key.
struct Target {
    name: &'static str,
    nodes: Vec<Service>,
    /// nginx in front of a multi-node target (its CPU is not keyward's).
    balancer: Option<Service>,
    addr: SocketAddr,
    bin: PathBuf,
    node_addr: SocketAddr,
    admin_key: String,
    key_id: String,
    key: String,
    sent: u64,
}

/// What the cells accumulate over rounds.
#[derive(Default)]
struct Cell {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies_ns: Vec<u64>,
    keyward_cpu: Duration,
    redis_cpu: Duration,
    redis_commands: u64,
    redis_scripts: u64,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let postgres = opts
        .postgres
        .clone()
        .or_else(|| std::env::var("KEYWARD_TEST_POSTGRES_URL").ok())
        .context("--postgres URL (or KEYWARD_TEST_POSTGRES_URL) names the PostgreSQL server")?;
    let nginx_bin = nginx::find()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let bin = gateway::build_keyward(&root)?;
    let dir = std::env::temp_dir().join(format!("keyward-cluster-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let databases: Vec<String> = ["postgres", "redis", "noshare", "three"]
        .iter()
        .map(|n| format!("kwbench_{}_{n}", std::process::id()))
        .collect();
    let result = bench(&opts, &root, &nginx_bin, &bin, &dir, &postgres, &databases).await;
    for db in &databases {
        let _ = psql(
            &postgres,
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn bench(
    opts: &Options,
    root: &Path,
    nginx_bin: &Path,
    bin: &Path,
    dir: &Path,
    postgres: &str,
    databases: &[String],
) -> anyhow::Result<()> {
    let load_before = gateway::loadavg();
    let sim_addr = procs::free_addr()?;
    let mut cmd = Command::new(bin);
    cmd.args(["simulate", "--listen", &sim_addr.to_string()])
        .env("KEYWARD_LOG", "warn");
    let sim_log = dir.join("simulate.log");
    let mut simulator = Service::spawn("keyward simulate", cmd, &sim_log)?;
    simulator.wait_listening(sim_addr, &sim_log)?;

    let redis_addr = procs::free_addr()?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--port", &redis_addr.port().to_string()]);
    let redis_log = dir.join("redis.log");
    let mut redis = Service::spawn("redis-server", cmd, &redis_log)?;
    redis.wait_listening(redis_addr, &redis_log)?;
    let redis_url = format!("redis://{redis_addr}");

    for db in databases {
        psql(postgres, &format!("CREATE DATABASE {db}"))?;
    }
    let base = postgres.rsplit_once('/').map_or(postgres, |(b, _)| b);
    let db_url = |i: usize| format!("{base}/{}", databases[i]);

    let mut targets = Vec::new();
    let node_dir = |name: &str| dir.join(name.replace([' ', '+'], "_"));
    targets.push(start_target(
        "sqlite",
        bin,
        sim_addr,
        &node_dir("sqlite"),
        1,
        &[],
        None,
    )?);
    let pg = db_url(0);
    targets.push(start_target(
        "postgres",
        bin,
        sim_addr,
        &node_dir("postgres"),
        1,
        &["--database", &pg],
        None,
    )?);
    let pg_redis = db_url(1);
    targets.push(start_target(
        "postgres+redis",
        bin,
        sim_addr,
        &node_dir("postgres+redis"),
        1,
        &[
            "--database",
            &pg_redis,
            "--redis",
            &redis_url,
            "--redis-prefix",
            "one:",
        ],
        None,
    )?);
    let noshare = db_url(2);
    targets.push(start_target(
        "postgres+redis, no shares",
        bin,
        sim_addr,
        &node_dir("noshare"),
        1,
        &[
            "--database",
            &noshare,
            "--redis",
            &redis_url,
            "--redis-prefix",
            "noshare:",
            "--redis-share-ms",
            "0",
        ],
        None,
    )?);
    let three = db_url(3);
    targets.push(start_target(
        "3 nodes+redis",
        bin,
        sim_addr,
        &node_dir("three"),
        3,
        &[
            "--database",
            &three,
            "--redis",
            &redis_url,
            "--redis-prefix",
            "three:",
        ],
        Some(nginx_bin),
    )?);

    let names = ["plain", "stream"];
    eprintln!("warming up…");
    for t in &mut targets {
        for (_, w) in gateway::workloads_limited(&t.key) {
            let o = load::run(t.addr, &w, 8, Duration::from_secs(1)).await?;
            if o.errors > 0 || o.requests == 0 {
                bail!("warm-up against {} failed: {} errors", t.name, o.errors);
            }
            t.sent += o.requests;
        }
    }
    let mut cells: Vec<Vec<Cell>> = (0..targets.len())
        .map(|_| names.iter().map(|_| Cell::default()).collect())
        .collect();
    for round in 0..opts.rounds {
        for (wi, wname) in names.iter().enumerate() {
            for k in 0..targets.len() {
                let ti = (k + round) % targets.len();
                let t = &mut targets[ti];
                let workload = gateway::workloads_limited(&t.key)[wi].1.clone();
                let stats_before = commandstats(redis_addr)?;
                let before = (cpu(&t.nodes), redis.cpu());
                let o = load::run(t.addr, &workload, CONNECTIONS, opts.duration).await?;
                let after = (cpu(&t.nodes), redis.cpu());
                let stats_after = commandstats(redis_addr)?;
                eprintln!(
                    "round {}/{} {wname:6} {:15} {:>8.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  errors {}",
                    round + 1,
                    opts.rounds,
                    t.name,
                    o.rps(),
                    o.quantile_us(0.5),
                    o.quantile_us(0.99),
                    o.errors
                );
                t.sent += o.requests + o.errors;
                let c = &mut cells[ti][wi];
                c.requests += o.requests;
                c.errors += o.errors;
                c.elapsed += o.elapsed;
                c.latencies_ns.extend(o.latencies_ns);
                c.keyward_cpu += after.0.saturating_sub(before.0);
                c.redis_cpu += after.1.saturating_sub(before.1);
                c.redis_commands += stats_after.0.saturating_sub(stats_before.0);
                c.redis_scripts += stats_after.1.saturating_sub(stats_before.1);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    // Every request must have become exactly one usage event.
    let mut metering = Vec::new();
    for t in &targets {
        let usage = cli(
            &t.bin,
            t.node_addr,
            &t.admin_key,
            &["usage", "--key", &t.key_id, "--json"],
        )?;
        let metered = usage["requests"].as_u64().context("usage: no `requests`")?;
        metering.push((t.name, metered, t.sent));
    }
    for t in &mut targets {
        if let Some(b) = &mut t.balancer {
            b.stop(Duration::from_secs(5));
        }
        for n in &mut t.nodes {
            n.stop(Duration::from_secs(10));
        }
    }
    simulator.stop(Duration::from_secs(5));
    redis.stop(Duration::from_secs(5));

    let mut text = format!(
        "## Cluster\n\nMachine: {} cores; load average {} before, {} after. keyward {}. \
         Each cell: {} rounds x {} s, {CONNECTIONS} connections, closed loop, targets \
         interleaved; the key has a budget, rate limits and a concurrency limit (all too \
         high to refuse). keyward CPU: all of the target's nodes (not nginx, PostgreSQL or \
         Redis). Redis commands: `INFO commandstats` of the run's own Redis over the cell \
         (scripts: EVALSHA and EVAL), per successful request.\n\n\
         | workload | target | req/s | vs sqlite | p50 µs | p99 µs | errors | keyward CPU µs/req | Redis CPU µs/req | Redis commands/req | scripts/req |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_before,
        gateway::loadavg(),
        gateway::git_commit(root),
        opts.rounds,
        opts.duration.as_secs_f64(),
    );
    for (wi, wname) in names.iter().enumerate() {
        let sqlite_rps = rps(&cells[0][wi]);
        for (ti, t) in targets.iter().enumerate() {
            let c = &mut cells[ti][wi];
            c.latencies_ns.sort_unstable();
            let per = |d: Duration| d.as_secs_f64() * 1e6 / c.requests.max(1) as f64;
            let o = Outcome {
                requests: c.requests,
                errors: c.errors,
                elapsed: c.elapsed,
                latencies_ns: std::mem::take(&mut c.latencies_ns),
            };
            text.push_str(&format!(
                "| {wname} | {} | {:.0} | {:.2} | {:.0} | {:.0} | {} | {:.1} | {:.1} | {:.2} | {:.2} |\n",
                t.name,
                o.rps(),
                o.rps() / sqlite_rps,
                o.quantile_us(0.5),
                o.quantile_us(0.99),
                o.errors,
                per(c.keyward_cpu),
                per(c.redis_cpu),
                c.redis_commands as f64 / c.requests.max(1) as f64,
                c.redis_scripts as f64 / c.requests.max(1) as f64,
            ));
        }
    }
    text.push('\n');
    for (name, metered, sent) in &metering {
        text.push_str(&format!(
            "Metering, {name}: {metered} usage events for {sent} requests.\n"
        ));
    }
    println!("{text}");
    if let Some(out) = &opts.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    for (name, metered, sent) in metering {
        if metered != sent {
            bail!("{name} metered {metered} requests but {sent} were sent");
        }
    }
    Ok(())
}

fn rps(c: &Cell) -> f64 {
    c.requests as f64 / c.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

fn cpu(nodes: &[Service]) -> Duration {
    nodes.iter().map(Service::cpu).sum()
}

/// Starts `count` nodes with `flags` (behind nginx when more than one), then
/// makes a project and the limited key through the first.
fn start_target(
    name: &'static str,
    bin: &Path,
    sim_addr: SocketAddr,
    dir: &Path,
    count: usize,
    flags: &[&str],
    nginx_bin: Option<&Path>,
) -> anyhow::Result<Target> {
    let mut nodes = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..count {
        let node_dir = dir.join(format!("node{i}"));
        std::fs::create_dir_all(&node_dir)?;
        let addr = procs::free_addr()?;
        let log = node_dir.join("serve.log");
        let mut cmd = Command::new(bin);
        cmd.args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--metrics-listen",
            "off",
        ])
        .arg("--upstream")
        .arg(format!("http://{sim_addr}/v1"))
        .arg("--data-dir")
        .arg(node_dir.join("data"))
        // One key for every node, made by the first (see sealing.rs).
        .arg("--secrets-key-file")
        .arg(dir.join("secrets.key"))
        .args(flags)
        .env("OPENAI_API_KEY", "sk-benchmark-not-a-real-key")
        .env("KEYWARD_LOG", "warn");
        let mut node = Service::spawn("keyward serve", cmd, &log)?;
        node.wait_listening(addr, &log)?;
        procs::wait_answering(addr)?;
        nodes.push(node);
        addrs.push(addr);
    }
    let admin_key =
        std::fs::read_to_string(dir.join("node0").join("data").join("initial-admin-key"))
            .context("reading the first node's admin key")?
            .trim()
            .to_owned();
    cli(
        bin,
        addrs[0],
        &admin_key,
        &["projects", "create", "bench", "--json"],
    )?;
    let created = cli(
        bin,
        addrs[0],
        &admin_key,
        &[
            "keys",
            "create",
            "--project",
            "bench",
            "--name",
            "bench",
            "--json",
            "--budget-usd",
            "1000000",
            "--rpm",
            "1000000000",
            "--tpm",
            "4000000000",
            "--max-concurrent",
            "100000",
        ],
    )?;
    let field = |f: &str| {
        created[f]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("keys create: no `{f}`"))
    };
    let mut balancer = None;
    let addr = match nginx_bin {
        Some(nginx_bin) if count > 1 => {
            let nginx_dir = dir.join("nginx");
            std::fs::create_dir_all(&nginx_dir)?;
            let listen = procs::free_addr()?;
            balancer = Some(nginx::start(nginx_bin, &nginx_dir, listen, &addrs, 1_024)?);
            listen
        }
        _ => addrs[0],
    };
    Ok(Target {
        name,
        nodes,
        balancer,
        addr,
        bin: bin.to_owned(),
        node_addr: addrs[0],
        admin_key,
        key_id: field("id")?,
        key: field("key")?,
        sent: 0,
    })
}

/// Redis's total command calls and script calls so far.
fn commandstats(addr: SocketAddr) -> anyhow::Result<(u64, u64)> {
    let out = Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["info", "commandstats"])
        .output()
        .context("running redis-cli")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut all, mut scripts) = (0, 0);
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let calls: u64 = rest
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // The probe's own INFO is not a request's.
        if name == "cmdstat_info" {
            continue;
        }
        all += calls;
        if name == "cmdstat_evalsha" || name == "cmdstat_eval" {
            scripts += calls;
        }
    }
    Ok((all, scripts))
}

fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let out = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
