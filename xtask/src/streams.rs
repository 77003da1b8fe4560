//! Many slow streams at once, as a busy LLM gateway holds them: N streamed
//! requests opened together against a paced upstream (each event written and
//! flushed on its own, at a fixed rate), each on its own connection, read to
//! the end. What it measures of the proxy in front:
//!
//! - errors: streams that failed or ended without `data: [DONE]`;
//! - CPU per event: the proxy's CPU time over the run ÷ events delivered;
//! - memory per open stream: the proxy's resident memory with every stream
//!   open, minus before, ÷ N;
//! - the delay it adds to an event: the paced simulator stamps each event with
//!   the moment it wrote it (an SSE comment line, `: sent_us=…`, which SSE
//!   clients ignore); the client notes when it read it. The proxy's added delay
//!   is this delay through it minus the same delay measured directly. Events
//!   written before every stream was open are not timed: a client reads none
//!   until then, so their delay is that wait.

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;

/// What one run of N streams measured.
pub struct StreamsOutcome {
    /// Streams that failed or ended early.
    pub errors: usize,
    /// Events delivered (with their `data:` line) across all streams.
    pub events: u64,
    /// Delay of each stamped event, write to read, in microseconds, ascending.
    pub delays_us: Vec<u64>,
    /// Wall time from the first request to the last stream's end.
    pub elapsed: Duration,
}

impl StreamsOutcome {
    /// The `q` quantile of the delay, in microseconds (nearest rank); NaN
    /// when no event was stamped.
    pub fn delay_us(&self, q: f64) -> f64 {
        if self.delays_us.is_empty() {
            return f64::NAN;
        }
        let rank =
            ((q * self.delays_us.len() as f64).ceil() as usize).clamp(1, self.delays_us.len());
        self.delays_us[rank - 1] as f64
    }
}

/// Opens `streams` streamed requests to `addr` at once (with `body` and
/// `authorization`) and reads each to its end. `during` runs once every
/// stream has its response head (all are open): the caller samples memory.
pub async fn run<F: FnOnce()>(
    addr: SocketAddr,
    body: Bytes,
    authorization: String,
    streams: usize,
    during: F,
) -> anyhow::Result<StreamsOutcome> {
    let started = std::time::Instant::now();
    let opened = std::sync::Arc::new(tokio::sync::Barrier::new(streams + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let (body, authorization, opened) = (body.clone(), authorization.clone(), opened.clone());
        tasks.spawn(async move { one(addr, body, authorization, opened).await });
    }
    opened.wait().await;
    during();
    let mut out = StreamsOutcome {
        errors: 0,
        events: 0,
        delays_us: Vec::new(),
        elapsed: Duration::ZERO,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined.context("stream task panicked")? {
            Ok((events, delays)) => {
                out.events += events;
                out.delays_us.extend(delays);
            }
            Err(e) => {
                if out.errors == 0 {
                    eprintln!("first failed stream: {e:#}");
                }
                out.errors += 1;
            }
        }
    }
    out.elapsed = started.elapsed();
    out.delays_us.sort_unstable();
    Ok(out)
}

/// One stream on its own connection: (events, delays of stamped events).
/// Waits at `opened` once its response head has arrived, or it failed.
async fn one(
    addr: SocketAddr,
    body: Bytes,
    authorization: String,
    opened: std::sync::Arc<tokio::sync::Barrier>,
) -> anyhow::Result<(u64, Vec<u64>)> {
    let mut waited = false;
    let result = async {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::post("/v1/chat/completions")
            .header(header::HOST, addr.to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, authorization)
            .body(Full::new(body))?;
        let resp = sender.send_request(req).await?;
        opened.wait().await;
        waited = true;
        if resp.status() != StatusCode::OK {
            bail!("status {}", resp.status());
        }
        let mut body = resp.into_body();
        // Events the upstream wrote while this client waited for the others
        // to open were not read yet: their delay is the wait, not the
        // proxy's. Only events written from now on are timed.
        let mut scan = Scan {
            from_us: now_us(),
            ..Scan::default()
        };
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                scan.push(&data, now_us());
            }
        }
        if !scan.done {
            bail!(
                "the stream ended without data: [DONE] ({} events)",
                scan.events
            );
        }
        Ok((scan.events, scan.delays))
    }
    .await;
    if !waited {
        opened.wait().await;
    }
    result
}

/// Reads events out of a stream's bytes as they arrive, across reads.
#[derive(Default)]
struct Scan {
    /// The start of an event not yet complete.
    carry: Vec<u8>,
    /// Stamps before this (µs since the epoch) are not timed.
    from_us: u64,
    events: u64,
    delays: Vec<u64>,
    done: bool,
}

impl Scan {
    fn push(&mut self, data: &[u8], now_us: u64) {
        self.carry.extend_from_slice(data);
        while let Some(end) = find(&self.carry, b"\n\n") {
            let event: Vec<u8> = self.carry.drain(..end + 2).collect();
            for line in event.split(|&b| b == b'\n') {
                if let Some(stamp) = line.strip_prefix(b": sent_us=") {
                    if let Some(sent) = std::str::from_utf8(stamp)
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                    {
                        if sent >= self.from_us {
                            self.delays.push(now_us.saturating_sub(sent));
                        }
                    }
                } else if line == b"data: [DONE]" {
                    self.done = true;
                } else if line.starts_with(b"data: ") {
                    self.events += 1;
                }
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Resident memory of `pids` together, in KiB (from `/proc/<pid>/status`).
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_stamps_are_read_across_reads() {
        let mut s = Scan::default();
        s.push(b": sent_us=1000\ndata: {\"a\":1}\n\n: sent_us=2", 1_500);
        s.push(b"000\ndata: {}\n", 2_600);
        s.push(b"\ndata: [DONE]\n\n", 2_700);
        assert_eq!(s.events, 2);
        // An event counts as read when its blank line arrives.
        assert_eq!(s.delays, vec![500, 700]);
        assert!(s.done);
    }
}
