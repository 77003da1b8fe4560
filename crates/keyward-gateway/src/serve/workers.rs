//! Thread-per-core serving.
//!
//! One acceptor task hands each accepted connection to one of N worker threads
//! (round robin). Each worker runs its own single-threaded Tokio runtime, so a
//! connection, its requests, and the upstream connections they use
//! ([`crate::upstream`] keeps one pool per thread) are all driven by one thread.
//! On Tokio's work-stealing runtime a proxied request hopped between threads
//! several times (the server connection's task, the upstream connection's task,
//! the usage writer), each hop a futex wake-up; measured in docs/BENCHMARKS.md history, `git log -p`.
//!
//! Shared state (key cache, limiter, ledger, store) is thread-safe and shared by
//! all workers; the store's own tasks and the usage writer run on the main
//! runtime. A worker runtime outlives its connections until the server has
//! flushed usage ([`Phase::Released`]), because database connections opened on
//! a worker are driven by that worker's I/O driver.

use crate::config::ConnectionLimits;
use crate::metrics::Metrics;
use crate::serve::entry::{Entry, EntryFuture, MakeEntry};
use axum::body::Body;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// How often, at most, the connection cap's WARN line is written while
/// connections are being refused (each refusal is counted in a metric).
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Where the server is in its life; every worker follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// No new connections; in-flight requests finish.
    Draining,
    /// The grace period is over: remaining connections are dropped (their usage
    /// is still recorded, see `crate::metering::meter`).
    Cut,
    /// Usage is flushed: worker runtimes may stop.
    Released,
}

/// The worker threads of a running server.
pub struct Workers {
    phase: watch::Sender<Phase>,
    /// Closes when every worker has stopped serving.
    stopped: mpsc::Receiver<()>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// An accepted connection on its way to a worker, counted as open until the
/// worker's task for it ends.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    _open: OpenConnection,
}

/// Holds one place under the connection cap.
struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

impl Workers {
    /// Starts `count` worker threads serving `app`, and the acceptor task (on the
    /// current runtime) that feeds them from `listener`, within `limits`.
    pub fn start(
        count: usize,
        listener: TcpListener,
        app: MakeEntry,
        limits: ConnectionLimits,
    ) -> std::io::Result<Self> {
        let metrics = app.state().metrics.clone();
        let (phase, _) = watch::channel(Phase::Running);
        let (stopped_tx, stopped) = mpsc::channel(1);
        let mut inboxes = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            inboxes.push(tx);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let app = app.clone();
            let phase = phase.subscribe();
            let stopped_tx = stopped_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("keyward-worker-{i}"))
                .spawn(move || {
                    runtime.block_on(serve_one(rx, app, limits, phase, stopped_tx));
                })?;
            threads.push(thread);
        }
        tokio::spawn(accept_loop(
            listener,
            inboxes,
            limits.max_connections,
            metrics,
            phase.subscribe(),
        ));
        Ok(Self {
            phase,
            stopped,
            threads,
        })
    }

    /// Stops accepting and waits until in-flight requests finish or `grace` is
    /// over (then the rest are cut). Returns whether the grace period ran out.
    pub async fn drain(&mut self, grace: std::time::Duration) -> bool {
        self.phase.send_replace(Phase::Draining);
        let finished = tokio::time::timeout(grace, self.stopped.recv())
            .await
            .is_ok();
        if !finished {
            self.phase.send_replace(Phase::Cut);
            self.stopped.recv().await;
        }
        !finished
    }

    /// Lets the worker runtimes stop (after usage is flushed) and joins them.
    pub async fn release(self) {
        self.phase.send_replace(Phase::Released);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// One worker: serve until told to drain (or cut), report, and keep the runtime
/// (and the I/O it drives) alive until released.
///
/// Connections are served with hyper's HTTP/1 connection API rather than
/// `axum::serve`, which has no timer and so no header timeout. HTTP/1.1 only:
/// nothing here used HTTP/2 (the upstream side has its own client), and h2c
/// would bring its own set of limits to get right.
///
/// What the limits cost: per connection, a flag (`Arc<AtomicBool>`), a clone of
/// the builder and of the phase receiver; per request, hyper's header timer (it
/// boxes a new `Sleep` for each request head, since it drops the old one once
/// a head is parsed; due seconds away, so it never wakes the driver early: see
/// [`heartbeat`]), a relaxed store, and the body wrapper, which lives in the box
/// `axum::body::Body` already was. A request no longer clones the connection's
/// service (`axum::serve` cloned it for every request).
async fn serve_one(
    mut inbox: mpsc::UnboundedReceiver<Accepted>,
    app: MakeEntry,
    limits: ConnectionLimits,
    phase: watch::Receiver<Phase>,
    stopped: mpsc::Sender<()>,
) {
    tokio::spawn(heartbeat());
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    // Each connection task holds a clone; `recv` returns `None` once all ended.
    let (open_tx, mut all_closed) = mpsc::channel::<()>(1);
    let mut draining = phase.clone();
    loop {
        let accepted = tokio::select! {
            a = inbox.recv() => a,
            _ = draining.wait_for(|p| *p >= Phase::Draining) => None,
        };
        let Some(accepted) = accepted else {
            break;
        };
        let stream = match TcpStream::from_std(accepted.stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "registering an accepted connection failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = ConnectionService {
            entry: app.for_connection(accepted.peer),
            body_timeout: limits.body_timeout,
            served: Arc::default(),
        };
        tokio::spawn(serve_connection(
            http.clone(),
            stream,
            service,
            phase.clone(),
            (accepted._open, open_tx.clone()),
        ));
    }
    // Connections queued for this worker and not started are closed here.
    drop(inbox);
    drop(open_tx);
    let _ = all_closed.recv().await;
    drop(stopped);
    let mut released = phase;
    let _ = released.wait_for(|p| *p >= Phase::Released).await;
}

/// Serves one connection until it closes, its timeouts end it, or shutdown
/// does. At drain, hyper's graceful shutdown closes it at once when it is idle
/// between requests or has sent nothing yet, and after the response when a
/// request is in flight; a connection that has sent part of its first request's
/// headers is closed here (nothing of it is in flight: hyper calls the service
/// as soon as the headers are complete). At the end of the grace period the
/// connection is dropped, which settles the usage of a cut stream.
async fn serve_connection(
    http: http1::Builder,
    stream: TcpStream,
    service: ConnectionService,
    mut phase: watch::Receiver<Phase>,
    _held: (OpenConnection, mpsc::Sender<()>),
) {
    let served = service.served.clone();
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let next = if draining {
            Phase::Cut
        } else {
            Phase::Draining
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "a client connection ended with an error");
                }
                return;
            }
            _ = phase.wait_for(|p| *p >= next) => {
                if draining || !served.load(Ordering::Relaxed) {
                    return;
                }
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// One connection's requests, as hyper calls them.
struct ConnectionService {
    entry: Entry,
    body_timeout: Duration,
    /// Set by the first request, for shutdown (see [`serve_connection`]).
    served: Arc<AtomicBool>,
}

impl hyper::service::Service<http::Request<Incoming>> for ConnectionService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = EntryFuture;

    /// Per request: a relaxed store, and the body wrapped in [`TimedBody`]
    /// inside the one box `axum::body::Body` already was (no timer unless the
    /// body has to be waited for).
    fn call(&self, req: http::Request<Incoming>) -> EntryFuture {
        self.served.store(true, Ordering::Relaxed);
        let timeout = self.body_timeout;
        self.entry
            .serve(req.map(|b| Body::new(TimedBody::new(b, timeout))))
    }
}

/// Keeps a timer due within a second on the worker's runtime. Tokio wakes its
/// own driver (a write to an eventfd, a system call) whenever a timer is set
/// earlier than the earliest one pending; with no other timer pending, every
/// request's upstream timeout was such a timer, so a client on one connection
/// cost one extra system call per request. With this timer pending, a request's
/// timeout (longer than a second) is never the earliest. Measured in
/// docs/BENCHMARKS.md history, `git log -p`.
async fn heartbeat() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
    }
}

/// Accepts connections and deals them out to the workers in turn, closing at
/// once those over the cap.
async fn accept_loop(
    listener: TcpListener,
    inboxes: Vec<mpsc::UnboundedSender<Accepted>>,
    max_connections: usize,
    metrics: Arc<Metrics>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut next = 0usize;
    let mut refusals = Refusals::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = phase.wait_for(|p| *p >= Phase::Draining) => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if metrics.connections_open.get() >= max_connections as u64 {
            // Closing at once (rather than leaving it in the backlog) tells the
            // client now; the backlog would hold it until its own timeout.
            drop(stream);
            metrics.connections_refused.inc();
            refusals.note(max_connections);
            continue;
        }
        metrics.connections_open.inc();
        let open = OpenConnection(metrics.clone());
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let handoff = Accepted {
            stream,
            peer,
            _open: open,
        };
        if inboxes[next].send(handoff).is_err() {
            tracing::error!("a worker thread has stopped; dropping its connection");
        }
        next = (next + 1) % inboxes.len();
    }
}

/// Connections refused since the cap's WARN line was last written.
#[derive(Default)]
struct Refusals {
    last_logged: Option<Instant>,
    since: u64,
}

impl Refusals {
    fn note(&mut self, max_connections: usize) {
        self.since += 1;
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            max_connections,
            refused = self.since,
            "connection cap reached: new connections are closed at once (--max-connections)"
        );
        self.last_logged = Some(now);
        self.since = 0;
    }
}

/// A request body that must arrive within a time. The timer is made only when
/// the handler first has to wait for the body, so a body that came with its
/// headers costs none; once made it is not reset by progress, which is what
/// stops a body sent a byte every few seconds.
struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: bool,
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: None,
            timed_out: false,
        }
    }
}

/// The error a handler sees when a request body took too long.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

impl hyper::body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Some(Err(BodyTimeout(this.timeout).into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let timeout = this.timeout;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.timed_out = true;
                Poll::Ready(Some(Err(BodyTimeout(timeout).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
