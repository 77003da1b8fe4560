//! The gateway benchmark's Markdown report: results, ratios, targets.

use crate::load::Outcome;
use std::fmt::Write;
use std::time::Duration;

/// Connection counts measured.
pub const CONNECTIONS: [usize; 2] = [1, 32];
/// One cell of the matrix, pooled over rounds.
pub struct Cell {
    /// `plain` or `stream`.
    pub workload: &'static str,
    /// Client connections.
    pub connections: usize,
    /// One of the targets the gateway benchmark runs (`gateway::TARGETS`).
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

/// Where and how the run happened.
pub struct Environment {
    pub cpu: String,
    pub cores: usize,
    pub load_before: String,
    pub load_after: String,
    pub nginx: String,
    pub commit: String,
    pub duration: Duration,
    pub rounds: usize,
    /// Requests sent to keyward, warm-up included.
    pub keyward_requests: u64,
    /// Requests keyward's usage API reports for the benchmark key.
    pub metered: u64,
    /// The baseline binary measured beside keyward, if any.
    pub baseline: Option<String>,
}

/// Throughput target: keyward at least this share of nginx's requests/s.
const THROUGHPUT_TARGET: f64 = 0.80;
/// Latency target: keyward's p99 minus direct p99 at one connection, µs.
const ADDED_P99_TARGET_US: f64 = 1_000.0;

pub fn markdown(env: &Environment, cells: &[Cell]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Machine: {}, {} cores (shared with other work; load average {} before, {} after).",
        env.cpu, env.cores, env.load_before, env.load_after
    );
    let _ = writeln!(s, "Versions: keyward {}, {}.", env.commit, env.nginx);
    if let Some(b) = &env.baseline {
        let _ = writeln!(
            s,
            "Baseline: `{b}` measured in the same run as targets `baseline` and `baseline+limits`."
        );
    }
    let _ = writeln!(
        s,
        "Each cell: {} rounds x {} s, closed loop, targets interleaved within each round, rounds pooled. \
         Latency is request start to last body byte (the whole SSE stream when streamed). \
         CPU % is of one core (the machine has {}), from /proc.",
        env.rounds,
        env.duration.as_secs_f64(),
        env.cores * 100
    );
    let _ = writeln!(
        s,
        "Metering: keyward recorded {} usage events for {} requests sent to it.",
        env.metered, env.keyward_requests
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "| workload | conns | target | req/s | per round | p50 µs | p99 µs | p99.9 µs | errors | proxy CPU % | upstream CPU % | loadgen CPU % | proxy CPU µs/req |");
    let _ = writeln!(
        s,
        "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for c in cells {
        let o = &c.outcome;
        let secs = o.elapsed.as_secs_f64();
        let pct = |d: Duration| d.as_secs_f64() / secs * 100.0;
        let rounds: Vec<String> = c.round_rps.iter().map(|r| format!("{r:.0}")).collect();
        let (proxy_pct, per_req) = if c.target == "direct" {
            ("–".to_owned(), "–".to_owned())
        } else {
            (
                format!("{:.0}", pct(c.proxy_cpu)),
                format!(
                    "{:.1}",
                    c.proxy_cpu.as_secs_f64() * 1e6 / o.requests.max(1) as f64
                ),
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {:.0} | {:.0} | {} |",
            c.workload,
            c.connections,
            c.target,
            o.rps(),
            rounds.join(", "),
            o.quantile_us(0.50),
            o.quantile_us(0.99),
            o.quantile_us(0.999),
            o.errors,
            proxy_pct,
            pct(c.upstream_cpu),
            pct(c.loadgen_cpu),
            per_req
        );
    }

    let _ = writeln!(s);
    let _ = writeln!(s, "| workload | conns | keyward/nginx req/s | keyward/direct req/s | nginx/direct req/s | keyward−direct p50 µs | keyward−direct p99 µs | nginx−direct p99 µs | keyward/nginx CPU per request | baseline/nginx req/s | limits: keyward/nginx | limits: baseline/nginx |");
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut verdicts = Vec::new();
    for workload in ["plain", "stream"] {
        for conns in CONNECTIONS {
            let get = |t: &str| {
                cells
                    .iter()
                    .find(|c| c.workload == workload && c.connections == conns && c.target == t)
            };
            let (Some(d), Some(n), Some(k)) = (get("direct"), get("nginx"), get("keyward")) else {
                continue;
            };
            let per_req = |c: &Cell| c.proxy_cpu.as_secs_f64() / c.outcome.requests.max(1) as f64;
            let kn = k.outcome.rps() / n.outcome.rps();
            let added_p99 = k.outcome.quantile_us(0.99) - d.outcome.quantile_us(0.99);
            let vs_nginx = |t: &str| {
                get(t).map_or("–".to_owned(), |c| {
                    format!("{:.2}", c.outcome.rps() / n.outcome.rps())
                })
            };
            let _ = writeln!(
                s,
                "| {workload} | {conns} | {:.2} | {:.2} | {:.2} | {:+.0} | {:+.0} | {:+.0} | {:.2} | {} | {} | {} |",
                kn,
                k.outcome.rps() / d.outcome.rps(),
                n.outcome.rps() / d.outcome.rps(),
                k.outcome.quantile_us(0.50) - d.outcome.quantile_us(0.50),
                added_p99,
                n.outcome.quantile_us(0.99) - d.outcome.quantile_us(0.99),
                per_req(k) / per_req(n),
                vs_nginx("baseline"),
                vs_nginx("keyward+limits"),
                vs_nginx("baseline+limits"),
            );
            verdicts.push(format!(
                "- {workload}, {conns} conn: keyward/nginx throughput {:.0}% (target ≥ {:.0}%): {}",
                kn * 100.0,
                THROUGHPUT_TARGET * 100.0,
                if kn >= THROUGHPUT_TARGET {
                    "met"
                } else {
                    "NOT met"
                }
            ));
            if let Some(l) = get("keyward+limits") {
                let cost = 1.0 - l.outcome.rps() / k.outcome.rps();
                verdicts.push(format!(
                    "- {workload}, {conns} conn: budget + rate limits cost {:.1}% of throughput (p99 {:+.0} µs) (target < 5%): {}",
                    cost * 100.0,
                    l.outcome.quantile_us(0.99) - k.outcome.quantile_us(0.99),
                    if cost < 0.05 { "met" } else { "NOT met" }
                ));
            }
            if conns == 1 {
                verdicts.push(format!(
                    "- {workload}, 1 conn: p99 added latency {added_p99:+.0} µs (target < {ADDED_P99_TARGET_US:.0} µs): {}",
                    if added_p99 < ADDED_P99_TARGET_US { "met" } else { "NOT met" }
                ));
            }
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Targets:");
    for v in verdicts {
        let _ = writeln!(s, "{v}");
    }
    s
}
