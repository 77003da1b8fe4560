//! `cargo xtask bench gateway`: the simulated upstream called directly, through
//! nginx and through keyward, side by side in one run on loopback.

use crate::load::{self, Outcome, Workload};
use crate::nginx;
use crate::procs::{self, Service};
use crate::report::{self, Cell, CONNECTIONS};
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
    /// A second keyward binary (an earlier build) measured in the same run as
    /// targets `baseline` and `baseline+limits`, so a change is judged side by
    /// side instead of against numbers from another day.
    pub baseline: Option<PathBuf>,
    /// Counts of concurrent slow streams to hold, one cell each (none: skip).
    pub slow_streams: Vec<usize>,
    /// Events per slow stream, and their pace (events per second).
    pub stream_events: usize,
    pub stream_rate: f64,
}

/// Targets, in report order.
/// `keyward+limits` is keyward again, called with a key that has a budget, rate
/// limits and a concurrency limit (all high enough never to refuse), to measure
/// what enforcing them costs. `baseline` and `baseline+limits` are the same for
/// the `--baseline` binary, when given.
pub const TARGETS: [&str; 6] = [
    "direct",
    "nginx",
    "keyward",
    "keyward+limits",
    "baseline",
    "baseline+limits",
];

/// The running processes and what the load generator needs to reach them.
struct Bench {
    simulator: Service,
    nginx: Service,
    nginx_addr: SocketAddr,
    sim_addr: SocketAddr,
    /// The build under test, then the baseline build when given.
    keywards: Vec<Keyward>,
}

/// One running `keyward serve` with its two benchmark keys.
struct Keyward {
    service: Service,
    bin: PathBuf,
    addr: SocketAddr,
    admin_key: String,
    key_id: String,
    key: String,
    limited_key_id: String,
    limited_key: String,
}

impl Bench {
    /// The targets this run measures, in [`TARGETS`] order.
    fn targets(&self) -> Vec<&'static str> {
        TARGETS[..2 + 2 * self.keywards.len()].to_vec()
    }

    /// The keyward behind a target (`None` for direct and nginx).
    fn keyward(&self, target: &str) -> Option<&Keyward> {
        match target {
            "keyward" | "keyward+limits" => self.keywards.first(),
            "baseline" | "baseline+limits" => self.keywards.get(1),
            _ => None,
        }
    }

    fn addr(&self, target: &str) -> SocketAddr {
        match (target, self.keyward(target)) {
            (_, Some(k)) => k.addr,
            ("nginx", None) => self.nginx_addr,
            _ => self.sim_addr,
        }
    }

    /// The workloads a target is measured with: the limited key's for the
    /// `+limits` targets, the plain key's otherwise.
    fn workloads(&self, target: &str) -> [(&'static str, Workload); 2] {
        let k = self.keyward(target).unwrap_or(&self.keywards[0]);
        if target.ends_with("+limits") {
            workloads_limited(&k.limited_key)
        } else {
            workloads(&k.key)
        }
    }
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let nginx_bin = nginx::find()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let keyward_bin = build_keyward(&root)?;
    if let Some(b) = &opts.baseline {
        if !b.is_file() {
            bail!("--baseline {}: no such file", b.display());
        }
    }
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
    let mut b = start(nginx_bin, keyward_bin, opts.baseline.as_deref(), dir)?;
    let targets = b.targets();
    let loads: Vec<_> = targets.iter().map(|t| b.workloads(t)).collect();
    let names = ["plain", "stream"];

    eprintln!("warming up (1 s per target and workload)…");
    // Requests sent to each keyward, to check its metering at the end.
    let mut sent = vec![0u64; b.keywards.len()];
    let index = |t: &str| usize::from(t.starts_with("baseline"));
    for (wi, wname) in names.iter().enumerate() {
        for (ti, target) in targets.iter().enumerate() {
            let o = load::run(b.addr(target), &loads[ti][wi].1, 8, Duration::from_secs(1)).await?;
            if o.errors > 0 || o.requests == 0 {
                bail!(
                    "warm-up against {target} ({wname}) failed: {} errors, {} requests",
                    o.errors,
                    o.requests
                );
            }
            if b.keyward(target).is_some() {
                sent[index(target)] += o.requests;
            }
        }
    }

    let mut cells: Vec<Cell> = Vec::new();
    for round in 0..opts.rounds {
        for (wi, wname) in names.iter().enumerate() {
            for &conns in &CONNECTIONS {
                // Rotate the order so no target always runs first (or last) in a round.
                for k in 0..targets.len() {
                    let ti = (k + round) % targets.len();
                    let target = targets[ti];
                    let before = (proxy_cpu(&b, target), b.simulator.cpu(), procs::own_cpu());
                    let o =
                        load::run(b.addr(target), &loads[ti][wi].1, conns, opts.duration).await?;
                    let after = (proxy_cpu(&b, target), b.simulator.cpu(), procs::own_cpu());
                    eprintln!(
                        "round {}/{} {wname:6} {conns:>2} conn {target:15} {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs  errors {}",
                        round + 1,
                        opts.rounds,
                        o.rps(),
                        o.quantile_us(0.50),
                        o.quantile_us(0.99),
                        o.errors
                    );
                    if b.keyward(target).is_some() {
                        sent[index(target)] += o.requests + o.errors;
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
    let metered = b
        .keywards
        .iter()
        .map(metered_requests)
        .collect::<anyhow::Result<Vec<_>>>()?;

    for k in &mut b.keywards {
        k.service.stop(Duration::from_secs(10));
    }
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
        keyward_requests: sent[0],
        metered: metered[0],
        baseline: opts.baseline.as_ref().map(|p| p.display().to_string()),
    };
    let mut text = report::markdown(&env, &cells);
    if !opts.slow_streams.is_empty() {
        text.push_str(&slow_streams(opts, nginx_bin, keyward_bin, dir).await?);
    }
    println!("{text}");
    if let Some(out) = &opts.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("report written to {}", out.display());
    }
    for (i, (m, n)) in metered.iter().zip(&sent).enumerate() {
        if m != n {
            let which = ["keyward", "baseline"][i];
            bail!("{which} metered {m} requests but {n} were sent");
        }
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
    match (target, b.keyward(target)) {
        (_, Some(k)) => k.service.cpu(),
        ("nginx", None) => b.nginx.cpu(),
        _ => Duration::ZERO,
    }
}

/// Builds keyward in release mode and returns the binary's path.
pub fn build_keyward(root: &Path) -> anyhow::Result<PathBuf> {
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

/// Starts the simulator, keyward (and the baseline build, when given, each
/// with its own data directory and keys) and nginx.
fn start(
    nginx_bin: &Path,
    keyward_bin: &Path,
    baseline_bin: Option<&Path>,
    dir: &Path,
) -> anyhow::Result<Bench> {
    let sim_addr = procs::free_addr()?;
    let sim_log = dir.join("simulate.log");
    let mut cmd = Command::new(keyward_bin);
    cmd.args(["simulate", "--listen", &sim_addr.to_string()])
        .env("KEYWARD_LOG", "warn");
    let mut simulator = Service::spawn("keyward simulate", cmd, &sim_log)?;
    simulator.wait_listening(sim_addr, &sim_log)?;

    let mut keywards = vec![start_keyward(
        keyward_bin,
        sim_addr,
        &dir.join("keyward"),
        &[],
    )?];
    if let Some(bin) = baseline_bin {
        keywards.push(start_keyward(bin, sim_addr, &dir.join("baseline"), &[])?);
    }

    let nginx_addr = procs::free_addr()?;
    let nginx = nginx::start(nginx_bin, dir, nginx_addr, &[sim_addr], 1_024)?;
    Ok(Bench {
        simulator,
        nginx,
        nginx_addr,
        sim_addr,
        keywards,
    })
}

/// Starts `keyward serve` from `bin` in front of the simulator, with a plain
/// key and a key with limits; `extra` are more `serve` flags.
fn start_keyward(
    bin: &Path,
    sim_addr: SocketAddr,
    dir: &Path,
    extra: &[&str],
) -> anyhow::Result<Keyward> {
    std::fs::create_dir_all(dir)?;
    let addr = procs::free_addr()?;
    let data = dir.join("data");
    let log = dir.join("serve.log");
    let mut cmd = Command::new(bin);
    cmd.args([
        "serve",
        "--listen",
        &addr.to_string(),
        "--metrics-listen",
        "off",
        "--upstream",
    ])
    .arg(format!("http://{sim_addr}/v1"))
    .arg("--data-dir")
    .arg(&data)
    .args(extra)
    // The gateway swaps in an upstream key as it would in production.
    .env("OPENAI_API_KEY", "sk-benchmark-not-a-real-key")
    .env("KEYWARD_LOG", "warn");
    let mut service = Service::spawn("keyward serve", cmd, &log)?;
    service.wait_listening(addr, &log)?;
    // `serve` binds its socket before it opens the store and writes the
    // first admin key, so a connection succeeds before the key exists; the
    // first answer to a request comes only once the server runs.
    procs::wait_answering(addr)?;
    let key_file = data.join("initial-admin-key");
    let admin_key = std::fs::read_to_string(&key_file)
        .context("reading the initial admin key")?
        .trim()
        .to_owned();

    // Keys are created in existing projects only. A build from before
    // `keyward projects create` has no such command and creates the project
    // with the key, so a failure here is not an error.
    let _ = cli(
        bin,
        addr,
        &admin_key,
        &["projects", "create", "bench", "--json"],
    );
    let create = |name: &str, limits: &[&str]| -> anyhow::Result<(String, String)> {
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
        let created = cli(bin, addr, &admin_key, &args)?;
        let field = |f: &str| {
            created[f]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("keys create: no `{f}`"))
        };
        Ok((field("id")?, field("key")?))
    };
    let (key_id, key) = create("bench", &[])?;
    let (limited_key_id, limited_key) = create(
        "bench-limits",
        &[
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
    Ok(Keyward {
        service,
        bin: bin.to_path_buf(),
        addr,
        admin_key,
        key_id,
        key,
        limited_key_id,
        limited_key,
    })
}

/// Runs a `keyward` CLI command against the server and parses its JSON output.
pub fn cli(
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

fn metered_requests(k: &Keyward) -> anyhow::Result<u64> {
    let mut total = 0;
    for id in [&k.key_id, &k.limited_key_id] {
        let usage = cli(
            &k.bin,
            k.addr,
            &k.admin_key,
            &["usage", "--key", id, "--json"],
        )?;
        total += usage["requests"].as_u64().context("usage: no `requests`")?;
    }
    Ok(total)
}

pub fn loadavg() -> String {
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

pub fn git_commit(root: &Path) -> String {
    Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The targets of the slow-streams cells, in the order of their index.
const SLOW_TARGETS: [&str; 3] = ["direct", "nginx", "keyward"];

/// One target's measurement in one round of a slow-streams cell.
struct SlowCell {
    errors: usize,
    events: u64,
    /// The target's CPU per event delivered, µs.
    cpu_us: f64,
    /// Its resident memory per open stream, KiB.
    kib: f64,
    p50: f64,
    p99: f64,
    /// p99 minus the same round's direct p99, µs.
    added: f64,
}

/// The many-slow-streams cells: a paced simulator (each event flushed on its
/// own, `stream_rate` a second, `stream_events` of them) called directly, through
/// nginx and through keyward, holding N streams open at once. A Markdown section.
async fn slow_streams(
    opts: &Options,
    nginx_bin: &Path,
    keyward_bin: &Path,
    dir: &Path,
) -> anyhow::Result<String> {
    let most = opts.slow_streams.iter().copied().max().unwrap_or(0);
    // Every stream is a client connection and an upstream one.
    let connections = 2 * most + 256;
    let dir = dir.join("slow");
    std::fs::create_dir_all(&dir)?;
    let sim_addr = procs::free_addr()?;
    let sim_log = dir.join("simulate.log");
    let mut cmd = Command::new(keyward_bin);
    cmd.args(["simulate", "--listen", &sim_addr.to_string()])
        .args([
            "--simulate-tokens-per-second",
            &opts.stream_rate.to_string(),
        ])
        .args(["--simulate-output-tokens", &opts.stream_events.to_string()])
        .env("KEYWARD_LOG", "warn");
    let mut simulator = Service::spawn("keyward simulate (paced)", cmd, &sim_log)?;
    simulator.wait_listening(sim_addr, &sim_log)?;
    let max = connections.to_string();
    let keyward = start_keyward(
        keyward_bin,
        sim_addr,
        &dir.join("keyward"),
        &["--max-connections", &max],
    )?;
    let nginx_dir = dir.join("nginx");
    std::fs::create_dir_all(&nginx_dir)?;
    let nginx_addr = procs::free_addr()?;
    let nginx = nginx::start(nginx_bin, &nginx_dir, nginx_addr, &[sim_addr], connections)?;

    let [_, (_, stream)] = workloads(&keyward.key);
    // Streams start at random moments over a fifth of a stream's length (at
    // least one event period), so that their events are not in step.
    let period = 1.0 / opts.stream_rate;
    let ramp = Duration::from_secs_f64((opts.stream_events as f64 * period / 5.0).max(period));
    let mut out = format!(
        "\n## Many slow streams\n\nEach stream: {} events at {} a second, each flushed on its own by the \
         paced simulator; N streams, each on its own connection, started at random moments over \
         the first {:.1} s (the same moments for every target), read to the end. \
         {} rounds, each running every target once (direct first); errors and events are summed, \
         the other figures are medians of the rounds. \
         CPU per event: the proxy's CPU time over the run ÷ events delivered. Memory per stream: \
         the proxy's resident memory with every stream open, minus before, ÷ N (first round; later \
         ones reuse memory). Delay: write to read of events stamped once every stream was open; \
         added p99: the p99 through the proxy minus the same round's direct p99 (each round's in \
         brackets).\n\n\
         | streams | target | errors | events | CPU per event | memory per stream | delay p50 | delay p99 | added p99 |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
        opts.stream_events,
        opts.stream_rate,
        ramp.as_secs_f64(),
        opts.rounds
    );
    for &n in &opts.slow_streams {
        // Per target, one measurement a round.
        let mut cells: [Vec<SlowCell>; 3] = Default::default();
        for round in 0..opts.rounds {
            // Direct first (a round's added delay is against its own direct
            // run), then the proxies in turn order.
            let order = if round % 2 == 0 { [0, 1, 2] } else { [0, 2, 1] };
            let mut direct_p99 = f64::NAN;
            for t in order {
                let target = SLOW_TARGETS[t];
                let (addr, service) = match t {
                    0 => (sim_addr, &simulator),
                    1 => (nginx_addr, &nginx),
                    _ => (keyward.addr, &keyward.service),
                };
                let rss_before = crate::streams::rss_kib(service.pids());
                let cpu_before = service.cpu();
                let own_before = procs::own_cpu();
                let mut rss_open = 0;
                let o = crate::streams::run(
                    addr,
                    stream.body.clone(),
                    stream.authorization.clone(),
                    n,
                    ramp,
                    || rss_open = crate::streams::rss_kib(service.pids()),
                )
                .await?;
                let events = o.events.max(1) as f64;
                let cell = SlowCell {
                    errors: o.errors,
                    events: o.events,
                    cpu_us: service.cpu().saturating_sub(cpu_before).as_secs_f64() * 1e6 / events,
                    kib: rss_open.saturating_sub(rss_before) as f64 / n as f64,
                    p50: o.delay_us(0.5),
                    p99: o.delay_us(0.99),
                    added: o.delay_us(0.99) - direct_p99,
                };
                if t == 0 {
                    direct_p99 = cell.p99;
                }
                let own_us =
                    procs::own_cpu().saturating_sub(own_before).as_secs_f64() * 1e6 / events;
                eprintln!(
                    "round {}/{} slow streams {n:>5} {target:8} errors {:>4} events {:>8} cpu/event {:>6.1} µs  mem/stream {:>6.1} KiB  delay p50 {:>7.0} µs p99 {:>7.0} µs  load generator {own_us:.1} µs/event\n  p99 µs by second: {:?}",
                    round + 1,
                    opts.rounds,
                    cell.errors,
                    cell.events,
                    cell.cpu_us,
                    cell.kib,
                    cell.p50,
                    cell.p99,
                    o.p99_by_second
                );
                cells[t].push(cell);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        for (t, cells) in cells.iter().enumerate() {
            let median = |f: fn(&SlowCell) -> f64| {
                let mut v: Vec<f64> = cells.iter().map(f).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let added = if t == 0 {
                "—".to_owned()
            } else {
                let all: Vec<String> = cells
                    .iter()
                    .map(|c| format!("{:+.2}", c.added / 1e3))
                    .collect();
                format!("{:+.2} ms ({})", median(|c| c.added) / 1e3, all.join(", "))
            };
            out.push_str(&format!(
                "| {n} | {} | {} | {} | {:.1} µs | {:.1} KiB | {:.0} µs | {:.0} µs | {added} |\n",
                SLOW_TARGETS[t],
                cells.iter().map(|c| c.errors).sum::<usize>(),
                cells.iter().map(|c| c.events).sum::<u64>(),
                median(|c| c.cpu_us),
                cells[0].kib,
                median(|c| c.p50),
                median(|c| c.p99),
            ));
        }
    }
    Ok(out)
}
