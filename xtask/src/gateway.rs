//! `cargo xtask bench gateway`: the simulated upstream called directly, through
//! nginx and through keyward, side by side in one run on loopback.

use crate::load::{self, Outcome, Workload};
use crate::procs::{self, Service};
use crate::{nginx, report};
use anyhow::{bail, Context};
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Settings of one benchmark run.
pub struct Options {
    /// Length of each measured run (one target, workload and connection count).
    pub duration: Duration,
    /// Rounds over the whole matrix; results are pooled across rounds.
    pub rounds: usize,
    /// Where to write the Markdown report, besides stdout.
    pub out: Option<PathBuf>,
}

/// Connection counts measured.
pub const CONNECTIONS: [usize; 2] = [1, 32];
/// Targets, in report order.
/// `keyward+limits` is keyward again, called with a key that has a budget, rate
/// limits and a concurrency limit (all high enough never to refuse), to measure
/// what enforcing them costs.
pub const TARGETS: [&str; 4] = ["direct", "nginx", "keyward", "keyward+limits"];

/// One cell of the matrix, pooled over rounds.
pub struct Cell {
    /// `plain` or `stream`.
    pub workload: &'static str,
    /// Client connections.
    pub connections: usize,
    /// `direct`, `nginx` or `keyward`.
    pub target: &'static str,
    /// Pooled measurements.
    pub outcome: Outcome,
    /// Requests/s of each round.
    pub round_rps: Vec<f64>,
    /// CPU time of the proxy (nginx or keyward; zero for direct).
    pub proxy_cpu: Duration,
    /// CPU time of the simulated upstream.
    pub upstream_cpu: Duration,
    /// CPU time of the load generator.
    pub loadgen_cpu: Duration,
}

/// The running processes and what the load generator needs to reach them.
struct Bench {
    simulator: Service,
    nginx: Service,
    keyward: Service,
    addrs: [SocketAddr; 4],
    keyward_bin: PathBuf,
    keyward_addr: SocketAddr,
    admin_key: String,
    key_id: String,
    key: String,
    limited_key_id: String,
    limited_key: String,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let nginx_bin = nginx::find()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let keyward_bin = build_keyward(&root)?;
    let dir = std::env::temp_dir().join(format!("keyward-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench(&opts, &root, &nginx_bin, &keyward_bin, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn bench(
    opts: &Options,
    root: &Path,
    nginx_bin: &Path,
    keyward_bin: &Path,
    dir: &Path,
) -> anyhow::Result<()> {
    let load_before = loadavg();
    let mut b = start(nginx_bin, keyward_bin, dir)?;
    let workloads = workloads(&b.key);
    let limited = workloads_limited(&b.limited_key);
    let workload_for = |t: usize, wi: usize| {
        if TARGETS[t] == "keyward+limits" {
            &limited[wi].1
        } else {
            &workloads[wi].1
        }
    };

    eprintln!("warming up (1 s per target and workload)…");
    let mut keyward_requests = 0u64;
    for (wi, w) in workloads.iter().enumerate() {
        for (i, addr) in b.addrs.iter().enumerate() {
            let o = load::run(*addr, workload_for(i, wi), 8, Duration::from_secs(1)).await?;
            if o.errors > 0 || o.requests == 0 {
                bail!(
                    "warm-up against {} ({}) failed: {} errors, {} requests",
                    TARGETS[i],
                    w.0,
                    o.errors,
                    o.requests
                );
            }
            if TARGETS[i].starts_with("keyward") {
                keyward_requests += o.requests;
            }
        }
    }

    let mut cells: Vec<Cell> = Vec::new();
    for round in 0..opts.rounds {
        for (wi, (wname, _)) in workloads.iter().enumerate() {
            for &conns in &CONNECTIONS {
                // Rotate the order so no target always runs first (or last) in a round.
                for k in 0..TARGETS.len() {
                    let t = (k + round) % TARGETS.len();
                    let target = TARGETS[t];
                    let before = (proxy_cpu(&b, target), b.simulator.cpu(), procs::own_cpu());
                    let o =
                        load::run(b.addrs[t], workload_for(t, wi), conns, opts.duration).await?;
                    let after = (proxy_cpu(&b, target), b.simulator.cpu(), procs::own_cpu());
                    eprintln!(
                        "round {}/{} {wname:6} {conns:>2} conn {target:8} {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs  errors {}",
                        round + 1,
                        opts.rounds,
                        o.rps(),
                        o.quantile_us(0.50),
                        o.quantile_us(0.99),
                        o.errors
                    );
                    if target.starts_with("keyward") {
                        keyward_requests += o.requests + o.errors;
                    }
                    let rps = o.rps();
                    let cell = match cells.iter_mut().find(|c| {
                        c.workload == *wname && c.connections == conns && c.target == target
                    }) {
                        Some(c) => c,
                        None => {
                            cells.push(Cell {
                                workload: wname,
                                connections: conns,
                                target,
                                outcome: Outcome {
                                    requests: 0,
                                    errors: 0,
                                    elapsed: Duration::ZERO,
                                    latencies_ns: Vec::new(),
                                },
                                round_rps: Vec::new(),
                                proxy_cpu: Duration::ZERO,
                                upstream_cpu: Duration::ZERO,
                                loadgen_cpu: Duration::ZERO,
                            });
                            cells.last_mut().expect("just pushed")
                        }
                    };
                    cell.outcome.requests += o.requests;
                    cell.outcome.errors += o.errors;
                    cell.outcome.elapsed += o.elapsed;
                    cell.outcome.latencies_ns.extend(o.latencies_ns);
                    cell.round_rps.push(rps);
                    cell.proxy_cpu += after.0.saturating_sub(before.0);
                    cell.upstream_cpu += after.1.saturating_sub(before.1);
                    cell.loadgen_cpu += after.2.saturating_sub(before.2);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    for c in &mut cells {
        c.outcome.latencies_ns.sort_unstable();
    }

    // Every request through keyward must have become a usage event (written in
    // batches off the request path; a usage query writes the pending batch first).
    let metered = metered_requests(&b)?;

    b.keyward.stop(Duration::from_secs(10));
    b.nginx.stop(Duration::from_secs(5));
    b.simulator.stop(Duration::from_secs(5));

    let env = report::Environment {
        cpu: cpu_model(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_before,
        load_after: loadavg(),
        nginx: nginx::version(nginx_bin),
        commit: git_commit(root),
        duration: opts.duration,
        rounds: opts.rounds,
        keyward_requests,
        metered,
    };
    let text = report::markdown(&env, &cells);
    println!("{text}");
    if let Some(out) = &opts.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("report written to {}", out.display());
    }
    if metered != keyward_requests {
        bail!("keyward metered {metered} requests but {keyward_requests} were sent");
    }
    Ok(())
}

/// The same workloads with the limited key. Chat requests set `max_tokens`, as
/// clients under a budget should, so the budget's reservation has a bound.
pub fn workloads_limited(key: &str) -> [(&'static str, Workload); 2] {
    let [plain, stream] = workloads(key);
    let capped = |w: Workload| Workload {
        body: Bytes::from(String::from_utf8_lossy(&w.body).replacen(
            '{',
            r#"{"max_tokens":64,"#,
            1,
        )),
        ..w
    };
    [(plain.0, capped(plain.1)), (stream.0, capped(stream.1))]
}

/// The two workloads: a plain chat completion and a streamed one.
pub fn workloads(key: &str) -> [(&'static str, Workload); 2] {
    let messages = r#""messages":[{"role":"system","content":"You are a benchmark."},{"role":"user","content":"Say hello in one sentence."}]"#;
    let w = |body: String, streamed| Workload {
        path: "/v1/chat/completions",
        body: Bytes::from(body),
        streamed,
        authorization: format!("Bearer {key}"),
    };
    [
        (
            "plain",
            w(format!(r#"{{"model":"gpt-4o-mini",{messages}}}"#), false),
        ),
        (
            "stream",
            w(
                format!(r#"{{"model":"gpt-4o-mini","stream":true,{messages}}}"#),
                true,
            ),
        ),
    ]
}

fn proxy_cpu(b: &Bench, target: &str) -> Duration {
    match target {
        "nginx" => b.nginx.cpu(),
        "keyward" | "keyward+limits" => b.keyward.cpu(),
        _ => Duration::ZERO,
    }
}

/// Builds keyward in release mode and returns the binary's path.
fn build_keyward(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building keyward (release)…");
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "keyward"])
        .status()?;
    if !status.success() {
        bail!("cargo build --release -p keyward failed");
    }
    let meta = Command::new(&cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()?;
    let meta: serde_json::Value =
        serde_json::from_slice(&meta.stdout).context("parsing cargo metadata")?;
    let target = meta["target_directory"]
        .as_str()
        .context("cargo metadata: no target_directory")?;
    Ok(Path::new(target).join("release").join("keyward"))
}

/// Starts the simulator, keyward (with one fresh key) and nginx.
fn start(nginx_bin: &Path, keyward_bin: &Path, dir: &Path) -> anyhow::Result<Bench> {
    let sim_addr = procs::free_addr()?;
    let sim_log = dir.join("simulate.log");
    let mut cmd = Command::new(keyward_bin);
    cmd.args(["simulate", "--listen", &sim_addr.to_string()])
        .env("KEYWARD_LOG", "warn");
    let mut simulator = Service::spawn("keyward simulate", cmd, &sim_log)?;
    simulator.wait_listening(sim_addr, &sim_log)?;

    let kw_addr = procs::free_addr()?;
    let data = dir.join("data");
    let kw_log = dir.join("serve.log");
    let mut cmd = Command::new(keyward_bin);
    cmd.args([
        "serve",
        "--listen",
        &kw_addr.to_string(),
        "--metrics-listen",
        "off",
        "--upstream",
    ])
    .arg(format!("http://{sim_addr}/v1"))
    .arg("--data-dir")
    .arg(&data)
    // The gateway swaps in an upstream key as it would in production.
    .env("OPENAI_API_KEY", "sk-benchmark-not-a-real-key")
    .env("KEYWARD_LOG", "warn");
    let mut keyward = Service::spawn("keyward serve", cmd, &kw_log)?;
    keyward.wait_listening(kw_addr, &kw_log)?;
    // `serve` binds its socket before it opens the store and writes the
    // first admin key, so a connection succeeds before the key exists; the
    // first answer to a request comes only once the server runs.
    procs::wait_answering(kw_addr)?;
    let key_file = data.join("initial-admin-key");
    let admin_key = std::fs::read_to_string(&key_file)
        .context("reading the initial admin key")?
        .trim()
        .to_owned();

    let created = cli(
        keyward_bin,
        kw_addr,
        &admin_key,
        &[
            "keys",
            "create",
            "--project",
            "bench",
            "--name",
            "bench",
            "--json",
        ],
    )?;
    let key = created["key"]
        .as_str()
        .context("keys create: no `key`")?
        .to_owned();
    let key_id = created["id"]
        .as_str()
        .context("keys create: no `id`")?
        .to_owned();

    let limited = cli(
        keyward_bin,
        kw_addr,
        &admin_key,
        &[
            "keys",
            "create",
            "--project",
            "bench",
            "--name",
            "bench-limits",
            "--budget-usd",
            "1000000",
            "--rpm",
            "1000000000",
            "--tpm",
            "4000000000",
            "--max-concurrent",
            "100000",
            "--json",
        ],
    )?;
    let limited_key = limited["key"]
        .as_str()
        .context("keys create: no `key`")?
        .to_owned();
    let limited_key_id = limited["id"]
        .as_str()
        .context("keys create: no `id`")?
        .to_owned();

    let nginx_addr = procs::free_addr()?;
    let nginx = nginx::start(nginx_bin, dir, nginx_addr, sim_addr)?;
    Ok(Bench {
        simulator,
        nginx,
        keyward,
        addrs: [sim_addr, nginx_addr, kw_addr, kw_addr],
        keyward_bin: keyward_bin.to_path_buf(),
        keyward_addr: kw_addr,
        admin_key,
        key_id,
        key,
        limited_key_id,
        limited_key,
    })
}

/// Runs a `keyward` CLI command against the server and parses its JSON output.
fn cli(
    bin: &Path,
    addr: SocketAddr,
    admin_key: &str,
    args: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(bin)
        .args(args)
        .env("KEYWARD_URL", format!("http://{addr}"))
        .env("KEYWARD_ADMIN_KEY", admin_key)
        .output()
        .with_context(|| format!("running keyward {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "keyward {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing the output of keyward {}", args.join(" ")))
}

fn metered_requests(b: &Bench) -> anyhow::Result<u64> {
    let mut total = 0;
    for id in [&b.key_id, &b.limited_key_id] {
        let usage = cli(
            &b.keyward_bin,
            b.keyward_addr,
            &b.admin_key,
            &["usage", "--key", id, "--json"],
        )?;
        total += usage["requests"].as_u64().context("usage: no `requests`")?;
    }
    Ok(total)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn git_commit(root: &Path) -> String {
    Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
