//! A closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending
//! one request after another until the deadline, timing every request from just
//! before it is written to the last byte of its body (the whole SSE stream for
//! streamed requests).

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// One kind of request, sent the same way to every target.
#[derive(Clone)]
pub struct Workload {
    /// Request path (`/v1/chat/completions`).
    pub path: &'static str,
    /// JSON body.
    pub body: Bytes,
    /// The response is an SSE stream that must end with `data: [DONE]`.
    pub streamed: bool,
    /// Value of the `Authorization` header (ignored by targets without keys).
    pub authorization: String,
}

/// What one run measured.
pub struct Outcome {
    /// Successful requests.
    pub requests: u64,
    /// Failed requests (transport error, non-200 status, or a wrong body).
    pub errors: u64,
    /// Wall time from the first request to the last response.
    pub elapsed: Duration,
    /// Latency of every successful request, ascending, in nanoseconds.
    pub latencies_ns: Vec<u64>,
}

impl Outcome {
    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..=1) of latency, in microseconds (nearest rank).
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.latencies_ns.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.latencies_ns.len() as f64).ceil() as usize)
            .clamp(1, self.latencies_ns.len());
        self.latencies_ns[rank - 1] as f64 / 1_000.0
    }
}

/// Runs `workload` against `addr` on `connections` connections for `duration`.
pub async fn run(
    addr: SocketAddr,
    workload: &Workload,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let w = workload.clone();
        tasks.spawn(async move { connection(addr, w, deadline).await });
    }
    let mut out = Outcome {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_ns: Vec::new(),
    };
    while let Some(joined) = tasks.join_next().await {
        let (latencies, errors) = joined.context("load task panicked")??;
        out.requests += latencies.len() as u64;
        out.errors += errors;
        out.latencies_ns.extend(latencies);
    }
    out.elapsed = started.elapsed();
    out.latencies_ns.sort_unstable();
    Ok(out)
}

/// One client connection, reconnecting after a failed request.
async fn connection(
    addr: SocketAddr,
    w: Workload,
    deadline: Instant,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let mut latencies = Vec::with_capacity(4_096);
    let mut errors = 0u64;
    let mut sender = connect(addr).await?;
    while Instant::now() < deadline {
        let req = Request::post(w.path)
            .header(header::HOST, addr.to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, &w.authorization)
            .body(Full::new(w.body.clone()))?;
        let t0 = Instant::now();
        match exchange(&mut sender, req, w.streamed).await {
            Ok(()) => latencies.push(t0.elapsed().as_nanos() as u64),
            Err(e) => {
                errors += 1;
                if errors > 100 {
                    return Err(e.context(format!("more than 100 failed requests to {addr}")));
                }
                sender = connect(addr).await?;
            }
        }
    }
    Ok((latencies, errors))
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
    streamed: bool,
) -> anyhow::Result<()> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        bail!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    let complete = if streamed {
        body.ends_with(b"data: [DONE]\n\n")
    } else {
        body.first() == Some(&b'{') && body.ends_with(b"}")
    };
    if !complete {
        bail!("incomplete body ({} bytes)", body.len());
    }
    Ok(())
}
