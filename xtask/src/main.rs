//! Project chores, run as `cargo xtask <task>` (an alias in `.cargo/config.toml`).
//!
//! - `bench gateway [--duration SECS] [--rounds N] [--out FILE]`: requests/s and
//!   latency of the simulated upstream called directly, through nginx and through
//!   keyward, in one run on loopback; then many slow streams held at once (a paced
//!   simulator; CPU per event, memory per stream, the delay added to an event).
//! - `bench cluster [--duration SECS] [--rounds N] [--postgres URL] [--out FILE]`:
//!   one node on SQLite, on PostgreSQL, on PostgreSQL + Redis, and three nodes
//!   behind nginx, with a budgeted, rate-limited key (Redis commands per request).
//! - `bench keys [--sizes 1000,100000,1000000]`: key verification from cache at
//!   growing cache sizes (runs the `key_verify` bench of keyward-gateway).
//! - `bench dashboard [--sizes 1000,100000,1000000]`: the usage page and its
//!   chart data at growing numbers of usage events, against the same answer
//!   from the raw events (runs the `usage_page` bench of keyward-gateway).
//! - `bench load HOST:PORT [--connections N] [--duration SECS] [--stream] [--key KEY]`:
//!   the gateway benchmark's load against one address, for profiling one target.

mod cluster;
mod gateway;
mod load;
mod nginx;
mod procs;
mod report;
mod streams;

use anyhow::{bail, Context};
use std::process::Command;
use std::time::Duration;

const USAGE: &str = "usage:
  cargo xtask bench gateway [--duration SECS] [--rounds N] [--out FILE] [--baseline KEYWARD_BIN]
                            [--slow-streams 1000,5000|none] [--stream-events 200] [--stream-rate 50]
  cargo xtask bench cluster [--duration SECS] [--rounds N] [--postgres URL] [--out FILE]
  cargo xtask bench keys [--sizes 1000,100000,1000000]
  cargo xtask bench dashboard [--sizes 1000,100000,1000000]
  cargo xtask bench load HOST:PORT [--connections N] [--duration SECS] [--stream] [--limited] [--key KEY]";

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["bench", "gateway", rest @ ..] => {
            let mut opts = gateway::Options {
                duration: Duration::from_secs(4),
                rounds: 3,
                out: None,
                baseline: None,
                slow_streams: vec![1_000, 5_000],
                stream_events: 200,
                stream_rate: 50.0,
            };
            let mut it = rest.iter();
            while let Some(flag) = it.next() {
                let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
                match *flag {
                    "--duration" => {
                        opts.duration = Duration::from_secs_f64(
                            value()?.parse().context("--duration: seconds")?,
                        )
                    }
                    "--rounds" => opts.rounds = value()?.parse().context("--rounds: a count")?,
                    "--out" => opts.out = Some(value()?.into()),
                    "--baseline" => opts.baseline = Some(value()?.into()),
                    "--slow-streams" => {
                        opts.slow_streams = match value()?.trim() {
                            "none" | "0" => Vec::new(),
                            list => list
                                .split(',')
                                .map(|n| {
                                    n.trim()
                                        .parse()
                                        .context("--slow-streams: counts, e.g. 1000,5000, or none")
                                })
                                .collect::<anyhow::Result<_>>()?,
                        }
                    }
                    "--stream-events" => {
                        opts.stream_events = value()?.parse().context("--stream-events: a count")?
                    }
                    "--stream-rate" => {
                        opts.stream_rate = value()?
                            .parse()
                            .context("--stream-rate: events per second")?
                    }
                    other => bail!("unknown flag {other}\n{USAGE}"),
                }
            }
            if opts.rounds == 0
                || opts.duration.is_zero()
                || opts.duration > Duration::from_secs(60)
            {
                bail!("--rounds must be at least 1 and --duration between 0 and 60 s");
            }
            // The load generator runs on one thread, so that it takes at most one of
            // the machine's cores from the servers it measures.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(gateway::run(opts))
        }
        ["bench", "load", addr, rest @ ..] => {
            // One workload against one address, for profiling a single target.
            let addr = addr.parse().context("bench load ADDR: host:port")?;
            let (mut conns, mut secs, mut streamed, mut key, mut limited) =
                (1usize, 5.0f64, false, String::new(), false);
            let mut it = rest.iter();
            while let Some(flag) = it.next() {
                let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
                match *flag {
                    "--connections" => conns = value()?.parse()?,
                    "--duration" => secs = value()?.parse()?,
                    "--key" => key = value()?.to_string(),
                    "--stream" => streamed = true,
                    "--limited" => limited = true,
                    other => bail!("unknown flag {other}\n{USAGE}"),
                }
            }
            // `--limited`: the requests of the keyward+limits target (an output cap set).
            let workloads = if limited {
                gateway::workloads_limited(&key)
            } else {
                gateway::workloads(&key)
            };
            let workload = workloads[usize::from(streamed)].1.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let o = rt.block_on(load::run(
                addr,
                &workload,
                conns,
                Duration::from_secs_f64(secs.min(60.0)),
            ))?;
            println!(
                "{:.0} req/s  p50 {:.0} µs  p99 {:.0} µs  errors {}",
                o.rps(),
                o.quantile_us(0.5),
                o.quantile_us(0.99),
                o.errors
            );
            Ok(())
        }
        ["bench", "cluster", rest @ ..] => {
            let mut opts = cluster::Options {
                duration: Duration::from_secs(3),
                rounds: 2,
                postgres: None,
                out: None,
            };
            let mut it = rest.iter();
            while let Some(flag) = it.next() {
                let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
                match *flag {
                    "--duration" => {
                        opts.duration = Duration::from_secs_f64(
                            value()?.parse().context("--duration: seconds")?,
                        )
                    }
                    "--rounds" => opts.rounds = value()?.parse().context("--rounds: a count")?,
                    "--postgres" => opts.postgres = Some(value()?.to_string()),
                    "--out" => opts.out = Some(value()?.into()),
                    other => bail!("unknown flag {other}\n{USAGE}"),
                }
            }
            if opts.rounds == 0
                || opts.duration.is_zero()
                || opts.duration > Duration::from_secs(60)
            {
                bail!("--rounds must be at least 1 and --duration between 0 and 60 s");
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(cluster::run(opts))
        }
        ["bench", "keys", rest @ ..] => cargo_bench("key_verify", rest),
        ["bench", "dashboard", rest @ ..] => cargo_bench("usage_page", rest),
        _ => bail!("{USAGE}"),
    }
}

/// Runs keyward-gateway's bench `name` in release, passing `args` on to it.
fn cargo_bench(name: &str, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["bench", "-p", "keyward-gateway", "--bench", name, "--"])
        .args(args)
        .status()?;
    if !status.success() {
        bail!("the {name} bench failed");
    }
    Ok(())
}
