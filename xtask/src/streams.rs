//! Many slow streams at once, as a busy LLM gateway holds them: N streamed
//! requests against a paced upstream (each event written and flushed on its
//! own, at a fixed rate), each on its own connection, read to the end. What it
//! measures of the proxy in front:
//!
//! - errors: streams that failed or ended without `data: [DONE]`;
//! - CPU per event: the proxy's CPU time over the run ÷ events delivered;
//! - memory per open stream: the proxy's resident memory with every stream
//!   open, minus before, ÷ N;
//! - the delay it adds to an event: the paced simulator stamps each event with
//!   the moment it wrote it (an SSE comment line, `: sent_us=…`, which SSE
//!   clients ignore); the client notes when it read it. The proxy's added delay
//!   is this delay through it minus the same delay measured directly. Only
//!   events written once every stream was open are timed (at full load).
//!
//! Decision: the streams do not start in one instant but at random moments
//! over a ramp (the caller's choice; the gateway bench gives a fifth of a
//! stream's length), as requests reach a busy gateway. Started together, every
//! stream's events would fall due in the same few milliseconds of each period,
//! and the delay measured would be how long the machine takes to work through
//! that herd (tens of ms on 2 cores through any proxy), not what the proxy adds
//! to an event.

use anyhow::{bail, Context};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one run of N streams measured.
pub struct StreamsOutcome {
    /// Streams that failed or ended early.
    pub errors: usize,
    /// Events delivered (with their `data:` line) across all streams.
    pub events: u64,
    /// Delay of each stamped event, write to read, in microseconds, ascending.
    pub delays_us: Vec<u64>,
    /// The p99 delay of the events written in each second after every
    /// stream was open, in microseconds: where in the run the slow ones were.
    pub p99_by_second: Vec<u64>,
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

/// Opens `streams` streamed requests to `addr` (with `body` and
/// `authorization`), each at a random moment within `ramp` of the start, and
/// reads each to its end. `during` runs once every stream has its response
/// head (all are open): the caller samples memory.
pub async fn run<F: FnOnce()>(
    addr: SocketAddr,
    body: Bytes,
    authorization: String,
    streams: usize,
    ramp: Duration,
    during: F,
) -> anyhow::Result<StreamsOutcome> {
    let started = std::time::Instant::now();
    let opened = Arc::new(Opened {
        left: AtomicUsize::new(streams),
        all: tokio::sync::Notify::new(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    // The same start moments in every run and for every target.
    let mut seed = 0x6b65_7977_6172_6400_u64;
    let request = request_bytes(addr, &body, &authorization);
    for _ in 0..streams {
        let (request, opened) = (request.clone(), opened.clone());
        let at = started + ramp.mul_f64(unit_random(&mut seed));
        tasks.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            one(addr, request, &opened).await
        });
    }
    if streams > 0 {
        opened.all.notified().await;
    }
    during();
    let all_open_us = now_us();
    let mut out = StreamsOutcome {
        errors: 0,
        events: 0,
        delays_us: Vec::new(),
        p99_by_second: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut by_second: Vec<Vec<u64>> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.context("stream task panicked")? {
            Ok(scan) => {
                out.events += scan.events;
                // Until every stream was open, fewer were: only events written
                // at full load are timed.
                for &(sent, delay) in scan.stamped.iter().filter(|(s, _)| *s >= all_open_us) {
                    out.delays_us.push(delay);
                    let second = ((sent - all_open_us) / 1_000_000) as usize;
                    if by_second.len() <= second {
                        by_second.resize_with(second + 1, Vec::new);
                    }
                    by_second[second].push(delay);
                }
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
    out.p99_by_second = by_second
        .into_iter()
        .map(|mut d| {
            d.sort_unstable();
            d.get((d.len() * 99).div_ceil(100).saturating_sub(1))
                .copied()
                .unwrap_or(0)
        })
        .collect();
    Ok(out)
}

/// How many streams are not open yet; `all` is told when none is left.
struct Opened {
    left: AtomicUsize,
    all: tokio::sync::Notify,
}

impl Opened {
    fn one_more(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            // `notify_one` keeps the wake-up for a waiter that comes later.
            self.all.notify_one();
        }
    }
}

/// One stream on its own connection, read to its end: what [`Scan`] saw.
/// Counts itself in `opened` once its response head has arrived (or it
/// failed), and goes on reading: a stream that stopped reading until the others
/// opened would leave a backlog whose reading delays the events after it.
///
/// Why by hand on a raw socket: the load generator shares the machine's two
/// cores with the proxy it measures; with hyper's client (a task per
/// connection, a channel per body frame) it spent 12 µs of CPU per event at
/// 5,000 streams, 8 this way: CPU taken from the proxy it measures.
async fn one(addr: SocketAddr, request: Bytes, opened: &Opened) -> anyhow::Result<Scan> {
    let mut counted = false;
    let result = async {
        let mut tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        tcp.write_all(&request).await?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut filled = 0;
        let head_end = loop {
            if let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
                break end + 4;
            }
            if filled == buf.len() {
                bail!("response head over {} bytes", buf.len());
            }
            let n = tcp.read(&mut buf[filled..]).await?;
            if n == 0 {
                bail!("connection closed before the response head");
            }
            filled += n;
        };
        opened.one_more();
        counted = true;
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            bail!("{}", head.lines().next().unwrap_or_default());
        }
        if !head.contains("\r\ntransfer-encoding: chunked\r\n") {
            bail!("the stream is not chunked");
        }
        let mut scan = Scan::default();
        let mut chunks = Chunks::default();
        let mut pending = head_end..filled;
        loop {
            let now = now_us();
            chunks.decode(&buf[pending.clone()], |data| scan.push(data, now))?;
            if chunks.done {
                break;
            }
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                bail!("connection closed mid-stream");
            }
            pending = 0..n;
        }
        if !scan.done {
            bail!(
                "the stream ended without data: [DONE] ({} events)",
                scan.events
            );
        }
        Ok(scan)
    }
    .await;
    if !counted {
        opened.one_more();
    }
    result
}

/// The request of every stream, as bytes on the wire.
fn request_bytes(addr: SocketAddr, body: &[u8], authorization: &str) -> Bytes {
    let mut out = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         authorization: {authorization}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out.into()
}

/// A chunked body decoded as it arrives, in pieces of any size.
#[derive(Default)]
struct Chunks {
    /// Data bytes left in the current chunk.
    left: usize,
    /// The CRLF after a chunk's data is still to come (bytes of it left).
    crlf: usize,
    /// The size line read so far.
    line: Vec<u8>,
    done: bool,
}

impl Chunks {
    /// Hands each piece of chunk data in `bytes` to `data`.
    fn decode(&mut self, mut bytes: &[u8], mut data: impl FnMut(&[u8])) -> anyhow::Result<()> {
        while !bytes.is_empty() && !self.done {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                data(&bytes[..n]);
                self.left -= n;
                bytes = &bytes[n..];
                if self.left == 0 {
                    self.crlf = 2;
                }
            } else if self.crlf > 0 {
                let n = self.crlf.min(bytes.len());
                self.crlf -= n;
                bytes = &bytes[n..];
            } else {
                let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
                    self.line.extend_from_slice(bytes);
                    return Ok(());
                };
                self.line.extend_from_slice(&bytes[..end]);
                bytes = &bytes[end + 1..];
                let line = std::str::from_utf8(&self.line)?.trim_end_matches('\r');
                let digits = line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(digits, 16)
                    .with_context(|| format!("bad chunk size line {line:?}"))?;
                self.line.clear();
                if size == 0 {
                    // The last chunk: trailers, if any, are not read.
                    self.done = true;
                } else {
                    self.left = size;
                }
            }
        }
        Ok(())
    }
}

/// Reads events out of a stream's bytes as they arrive, across reads.
#[derive(Default)]
struct Scan {
    /// The start of a line not yet complete.
    carry: Vec<u8>,
    events: u64,
    /// Each stamped event: when it was written (µs since the epoch) and its
    /// delay, write to read. An event counts as read when its blank line is.
    stamped: Vec<(u64, u64)>,
    /// The stamp of the event being read.
    sent: Option<u64>,
    done: bool,
}

impl Scan {
    fn push(&mut self, mut data: &[u8], now_us: u64) {
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            if self.carry.is_empty() {
                self.line(&data[..end], now_us);
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(&data[..end]);
                self.line(&line, now_us);
                line.clear();
                self.carry = line;
            }
            data = &data[end + 1..];
        }
        self.carry.extend_from_slice(data);
    }

    fn line(&mut self, line: &[u8], now_us: u64) {
        if line.is_empty() {
            if let Some(sent) = self.sent.take() {
                self.stamped.push((sent, now_us.saturating_sub(sent)));
            }
        } else if let Some(stamp) = line.strip_prefix(b": sent_us=") {
            self.sent = std::str::from_utf8(stamp)
                .ok()
                .and_then(|s| s.trim().parse().ok());
        } else if line == b"data: [DONE]" {
            self.done = true;
        } else if line.starts_with(b"data: ") {
            self.events += 1;
        }
    }
}

/// A number in [0, 1) from splitmix64, stepping `state`.
fn unit_random(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
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
        assert_eq!(s.stamped, vec![(1_000, 500), (2_000, 700)]);
        assert!(s.done);
    }

    #[test]
    fn a_chunked_body_is_decoded_whatever_its_reads() {
        let wire = b"7\r\ndata: a\r\n1;ext=1\r\n\n\r\n0\r\n\r\n";
        for split in 0..=wire.len() {
            let (mut c, mut out) = (Chunks::default(), Vec::new());
            c.decode(&wire[..split], |d| out.extend_from_slice(d))
                .unwrap();
            c.decode(&wire[split..], |d| out.extend_from_slice(d))
                .unwrap();
            assert_eq!(out, b"data: a\n", "split at {split}");
            assert!(c.done);
        }
        assert!(Chunks::default().decode(b"zz\r\n", |_| ()).is_err());
    }

    #[test]
    fn start_moments_spread_over_the_whole_ramp() {
        let mut seed = 1;
        let mut tenths = [0u32; 10];
        for _ in 0..10_000 {
            let u = unit_random(&mut seed);
            assert!((0.0..1.0).contains(&u));
            tenths[(u * 10.0) as usize] += 1;
        }
        // Each tenth of the ramp gets about a tenth of the starts.
        assert!(
            tenths.iter().all(|&n| (800..1200).contains(&n)),
            "{tenths:?}"
        );
    }
}
