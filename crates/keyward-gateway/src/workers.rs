//! Thread-per-core serving.
//!
//! One acceptor task hands each accepted connection to one of N worker threads
//! (round robin). Each worker runs its own single-threaded Tokio runtime, so a
//! connection, its requests, and the upstream connections they use
//! ([`crate::upstream`] keeps one pool per thread) are all driven by one thread.
//! On Tokio's work-stealing runtime a proxied request hopped between threads
//! several times (the server connection's task, the upstream connection's task,
//! the usage writer), each hop a futex wake-up; measured in docs/BENCHMARKS.md.
//!
//! Shared state (key cache, limiter, ledger, store) is thread-safe and shared by
//! all workers; the store's own tasks and the usage writer run on the main
//! runtime. A worker runtime outlives its connections until the server has
//! flushed usage ([`Phase::Released`]), because database connections opened on
//! a worker are driven by that worker's I/O driver.

use crate::entry::MakeEntry;
use axum::serve::{Listener, ListenerExt};
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// Where the server is in its life; every worker follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// No new connections; in-flight requests finish.
    Draining,
    /// The grace period is over: remaining connections are dropped (their usage
    /// is still recorded, see `crate::meter`).
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

/// Connections handed to one worker.
struct Handoff {
    rx: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    local: SocketAddr,
}

impl Listener for Handoff {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let Some((std_stream, peer)) = self.rx.recv().await else {
                // The acceptor has stopped: no more connections, ever. The
                // server's shutdown signal ends this worker's serve loop.
                return std::future::pending().await;
            };
            match TcpStream::from_std(std_stream) {
                Ok(stream) => return (stream, peer),
                Err(e) => tracing::warn!(error = %e, "registering an accepted connection failed"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl Workers {
    /// Starts `count` worker threads serving `app`, and the acceptor task (on the
    /// current runtime) that feeds them from `listener`.
    pub fn start(count: usize, listener: TcpListener, app: MakeEntry) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
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
                    runtime.block_on(serve_one(Handoff { rx, local }, app, phase, stopped_tx));
                })?;
            threads.push(thread);
        }
        tokio::spawn(accept_loop(listener, inboxes, phase.subscribe()));
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
async fn serve_one(
    handoff: Handoff,
    app: MakeEntry,
    phase: watch::Receiver<Phase>,
    stopped: mpsc::Sender<()>,
) {
    let listener = handoff.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(heartbeat());
    let mut draining = phase.clone();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = draining.wait_for(|p| *p >= Phase::Draining).await;
    });
    let mut cut = phase.clone();
    tokio::select! {
        r = serve => if let Err(e) = r {
            tracing::error!(error = %e, "a worker stopped serving");
        },
        _ = cut.wait_for(|p| *p >= Phase::Cut) => {}
    }
    drop(stopped);
    let mut released = phase;
    let _ = released.wait_for(|p| *p >= Phase::Released).await;
}

/// Keeps a timer due within a second on the worker's runtime. Tokio wakes its
/// own driver (a write to an eventfd, a system call) whenever a timer is set
/// earlier than the earliest one pending; with no other timer pending, every
/// request's upstream timeout was such a timer, so a client on one connection
/// cost one extra system call per request. With this timer pending, a request's
/// timeout (longer than a second) is never the earliest. Measured in
/// docs/BENCHMARKS.md.
async fn heartbeat() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
    }
}

/// Accepts connections and deals them out to the workers in turn.
async fn accept_loop(
    listener: TcpListener,
    inboxes: Vec<mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut next = 0usize;
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
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        if inboxes[next].send((stream, peer)).is_err() {
            tracing::error!("a worker thread has stopped; dropping its connection");
        }
        next = (next + 1) % inboxes.len();
    }
}
