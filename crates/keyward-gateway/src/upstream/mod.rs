//! The pooled HTTP client that talks to the upstream API.
//!
//! Each thread that sends requests keeps its own idle connections. With one pool
//! per thread, a request served by a thread-per-core worker
//! (`crate::serve::workers`) and its upstream connection stay on that thread.
//!
//! No task of its own drives a connection: the request that uses it does
//! (`Conn`). While it waits for the response's head, the exchange polls the
//! connection; then the response body polls it from its own `poll_frame`. A
//! streamed response is a train of small chunks, one per event, and one read
//! from the upstream's socket holds several; hyper hands a connection's body
//! over one frame at a time (its channel holds one). Driven by a task of its
//! own, each event cost a wake-up of the client's task, a write syscall to the
//! client and a wake-up of the connection's task (profiled: nine writes per
//! upstream read). Driven from the body, the client's connection takes every
//! event already read in one pass and writes them together, and an event is
//! never held back for the next: the pass ends at the first event not yet
//! read (docs/BENCHMARKS.md, Gateway).
//!
//! The pool is ours, over hyper's HTTP/1 connection API: a per-thread stack of
//! idle connections, most recently used first. hyper-util's general pool (keyed
//! maps, locks, waiters) cost about a tenth of the gateway's instructions per
//! request (docs/BENCHMARKS.md history, `git log -p`). A connection goes back to the stack when its
//! response body has been read to the end; a body dropped early closes its
//! connection, which also ends the upstream request (a client hang-up). A
//! request that an idle connection could not take (closed by the upstream in the
//! meantime) is sent again once, on a new connection; one already written is
//! never sent twice. Upstreams are spoken to in HTTP/1.1 (ALPN offers only
//! `http/1.1`), as reverse proxies commonly do.

pub mod simulated;

use crate::config::UpstreamConfig;
use crate::error::GatewayError;
use bytes::Bytes;
use http::uri::{PathAndQuery, Uri};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower_service::Service;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type Sender = SendRequest<Full<Bytes>>;
type Driver = Connection<MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>, Full<Bytes>>;

/// An idle connection is not reused after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per thread and upstream.
const MAX_IDLE: usize = 1024;

/// One thread's connections to one upstream.
struct Pool {
    upstream: u64,
    connector: Connector,
    /// Idle connections with the time they became idle; the newest at the back.
    idle: VecDeque<(Conn, Instant)>,
}

thread_local! {
    /// This thread's pools, by [`Upstream::id`] (a process may run several servers,
    /// e.g. in tests).
    static POOLS: RefCell<Vec<Pool>> = const { RefCell::new(Vec::new()) };
}

/// Connection pools (one per thread) to one upstream base URL.
#[derive(Clone)]
pub struct Upstream {
    id: u64,
    /// `Authorization: Bearer <upstream key>`, built once and marked sensitive.
    authorization: Option<http::HeaderValue>,
    /// `Host` for upstream requests (the base URL's authority).
    host: http::HeaderValue,
    /// The base's path when it is exactly `/v1`: client paths then pass as they are.
    base_is_v1: bool,
    connect_timeout: Duration,
    base: Uri,
    timeout: Duration,
}

/// Why a request did not get a response.
enum Failure {
    /// Opening a connection failed.
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed after the request was handed to it.
    Request(hyper::Error),
    /// The upstream closed the connection before answering.
    Closed,
}

/// One upstream connection: the handle that sends requests on it and the
/// state machine that reads and writes its socket, which whoever waits on the
/// connection polls (see the module doc).
struct Conn {
    sender: Sender,
    /// `None` once the connection has ended (dropping it closes the socket).
    driver: Option<Driver>,
}

impl Conn {
    /// Reads and writes what the socket allows; after the connection ended
    /// (closed by the upstream, or broken), there is nothing left to drive.
    fn drive(driver: &mut Option<Driver>, cx: &mut Context<'_>) {
        let Some(conn) = driver.as_mut() else {
            return;
        };
        if let Poll::Ready(ended) = Pin::new(conn).poll(cx) {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
            *driver = None;
        }
    }

    /// Waits for `step` (a future of the sender's) while driving the
    /// connection; `None` when the connection ended first.
    async fn drive_until<F: Future>(driver: &mut Option<Driver>, step: F) -> Option<F::Output> {
        let mut step = pin!(step);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = step.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            if driver.is_none() {
                return Poll::Ready(None);
            }
            Self::drive(driver, cx);
            // What the connection just did (a response head read, the request
            // written) may have completed the step.
            match step.as_mut().poll(cx) {
                Poll::Ready(out) => Poll::Ready(Some(out)),
                Poll::Pending if driver.is_none() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Whether the sender can take a request now (driving the connection to find out).
    async fn ready(&mut self) -> bool {
        let Self { sender, driver } = self;
        matches!(
            Self::drive_until(driver, sender.ready()).await,
            Some(Ok(()))
        )
    }
}

impl Upstream {
    /// A client for `config`, with the given connect and response-header timeouts.
    pub fn new(config: &UpstreamConfig, connect_timeout: Duration, timeout: Duration) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let authorization = config.api_key.as_ref().and_then(|k| {
            let mut v = http::HeaderValue::from_str(&format!("Bearer {}", k.expose())).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        if config.api_key.is_some() && authorization.is_none() {
            // Never name the value: it is the upstream key.
            tracing::error!("the upstream key contains characters not allowed in an HTTP header; requests are forwarded without it");
        }
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            authorization,
            host: host_header(&config.base_url),
            base_is_v1: config.base_url.path().trim_end_matches('/') == "/v1",
            connect_timeout,
            base: config.base_url.clone(),
            timeout,
        }
    }

    /// An idle connection of this thread, if one is still open.
    fn checkout(&self) -> Option<Conn> {
        POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            let pool = pools.iter_mut().find(|p| p.upstream == self.id)?;
            while let Some((conn, since)) = pool.idle.pop_back() {
                if since.elapsed() < IDLE_TIMEOUT && conn.driver.is_some() {
                    return Some(conn);
                }
            }
            None
        })
    }

    /// This thread's connector to the upstream, made on first use.
    fn connector(&self) -> Connector {
        POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            if let Some(pool) = pools.iter().find(|p| p.upstream == self.id) {
                return pool.connector.clone();
            }
            let connector = build_connector(self.connect_timeout);
            pools.push(Pool {
                upstream: self.id,
                connector: connector.clone(),
                idle: VecDeque::new(),
            });
            connector
        })
    }

    /// Opens a new connection.
    async fn connect(&self) -> Result<Conn, Failure> {
        let mut connector = self.connector();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(Failure::Connect)?;
        let io = connector
            .call(self.base.clone())
            .await
            .map_err(Failure::Connect)?;
        let (sender, driver) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(Failure::Request)?;
        Ok(Conn {
            sender,
            driver: Some(driver),
        })
    }

    /// Sends `req` on `conn`, driving it until the response's head arrives;
    /// gives the request back when it was never written.
    async fn send_on(
        &self,
        mut conn: Conn,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<UpstreamBody>, (Failure, Option<http::Request<Full<Bytes>>>)> {
        let Conn { sender, driver } = &mut conn;
        match Conn::drive_until(driver, sender.try_send_request(req)).await {
            Some(Ok(resp)) => Ok(pooled(resp, conn, self.id)),
            Some(Err(mut e)) => {
                let unsent = e.take_message();
                Err((Failure::Request(e.into_error()), unsent))
            }
            None => Err((Failure::Closed, None)),
        }
    }

    /// Sends `req` on an idle connection or a new one.
    async fn exchange(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<UpstreamBody>, Failure> {
        let mut req = req;
        if let Some(mut conn) = self.checkout() {
            if conn.ready().await {
                match self.send_on(conn, req).await {
                    Ok(resp) => return Ok(resp),
                    // Never written: the connection had closed. Try a new one.
                    Err((_, Some(unsent))) => req = unsent,
                    Err((failure, None)) => return Err(failure),
                }
            }
        }
        let mut conn = self.connect().await?;
        if !conn.ready().await {
            return Err(Failure::Closed);
        }
        self.send_on(conn, req)
            .await
            .map_err(|(failure, _)| failure)
    }

    /// The `Authorization` header the upstream gets, when a key is configured.
    pub fn authorization(&self) -> Option<&http::HeaderValue> {
        self.authorization.as_ref()
    }

    /// The `Host` header the upstream gets.
    pub fn host(&self) -> &http::HeaderValue {
        &self.host
    }

    /// The upstream URL for a client path under `/v1` (`/v1/chat/completions?x`
    /// becomes `<base>/chat/completions?x`).
    pub fn url_for(&self, client: &PathAndQuery) -> Result<Uri, GatewayError> {
        let invalid = || GatewayError::BadRequest("The request path is not valid.".into());
        let pq = if self.base_is_v1 && client.path().starts_with("/v1") {
            client.clone()
        } else {
            let rest = client.as_str();
            let rest = rest.strip_prefix("/v1").unwrap_or(rest);
            let base_path = self.base.path().trim_end_matches('/');
            format!("{base_path}{rest}")
                .parse()
                .map_err(|_| invalid())?
        };
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(pq);
        Uri::from_parts(parts).map_err(|_| invalid())
    }

    /// Sends a request, mapping failures to 502 (unreachable) and 504 (no answer in time).
    pub async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<UpstreamBody>, GatewayError> {
        let mut req = req;
        // On a connection of its own the request line carries only the path
        // (origin form); the connection was opened to the base URL's authority.
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = Uri::from(pq);
        }
        match tokio::time::timeout(self.timeout, self.exchange(req)).await {
            Err(_) => Err(GatewayError::UpstreamTimeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(failure)) => {
                // Never log the request: it carries the upstream key.
                let timed_out = match &failure {
                    Failure::Connect(e) => {
                        tracing::warn!(error = %e, connect = true, "upstream request failed");
                        is_timeout(e.as_ref())
                    }
                    Failure::Request(e) => {
                        tracing::warn!(error = %e, connect = false, "upstream request failed");
                        is_timeout(e)
                    }
                    Failure::Closed => {
                        tracing::warn!(
                            connect = false,
                            "upstream request failed: the upstream closed the connection"
                        );
                        false
                    }
                };
                Err(if timed_out {
                    GatewayError::UpstreamTimeout
                } else {
                    GatewayError::UpstreamUnreachable
                })
            }
        }
    }
}

/// The response with its body wrapped so that it drives its connection, which
/// returns to this thread's pool once the body has been read to the end.
fn pooled(
    resp: http::Response<Incoming>,
    conn: Conn,
    upstream: u64,
) -> http::Response<UpstreamBody> {
    resp.map(|inner| {
        let mut body = UpstreamBody {
            inner,
            conn: Some(conn),
            upstream,
            in_pass: false,
            broken: None,
        };
        body.release_if_done(false);
        body
    })
}

/// An upstream response body. Polling it drives its connection; the
/// connection goes back to the pool when the body ends, and is closed if the
/// body is dropped before that.
pub struct UpstreamBody {
    inner: Incoming,
    conn: Option<Conn>,
    upstream: u64,
    /// A frame was returned since the body last answered `Pending`.
    in_pass: bool,
    /// An error held back until the frames before it have been written.
    broken: Option<hyper::Error>,
}

impl UpstreamBody {
    /// Returns the connection once the body is known to be complete: `ended`
    /// when it returned its end (a chunked body never reports `is_end_stream`),
    /// or a body of known length whose last byte was read.
    fn release_if_done(&mut self, ended: bool) {
        if !ended && !self.inner.is_end_stream() {
            return;
        }
        let Some(conn) = self.conn.take() else {
            return;
        };
        if conn.driver.is_none() {
            return;
        }
        let upstream = self.upstream;
        // A thread that is being torn down has no pool to return to.
        let _ = POOLS.try_with(|pools| {
            let Ok(mut pools) = pools.try_borrow_mut() else {
                return;
            };
            if let Some(pool) = pools.iter_mut().find(|p| p.upstream == upstream) {
                if pool.idle.len() >= MAX_IDLE {
                    pool.idle.pop_front();
                }
                pool.idle.push_back((conn, Instant::now()));
            }
        });
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(e) = this.broken.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() {
            let Some(conn) = this.conn.as_mut() else {
                this.in_pass = false;
                return Poll::Pending;
            };
            // The connection hands the body one frame per poll: decode the
            // next from what it has read, or read the socket (Pending when it
            // has nothing, which ends this pass of the client's writes).
            Conn::drive(&mut conn.driver, cx);
            polled = Pin::new(&mut this.inner).poll_frame(cx);
        }
        let Poll::Ready(frame) = polled else {
            this.in_pass = false;
            return Poll::Pending;
        };
        match frame {
            Some(Ok(frame)) => {
                this.in_pass = true;
                this.release_if_done(false);
                Poll::Ready(Some(Ok(frame)))
            }
            None => {
                this.release_if_done(true);
                Poll::Ready(None)
            }
            // A broken body leaves its connection unusable: close it.
            Some(Err(e)) => {
                this.conn = None;
                if !this.in_pass {
                    return Poll::Ready(Some(Err(e)));
                }
                // The frames of this pass are still in the server's buffer, and
                // an error makes it drop the connection without writing them:
                // answer Pending first (it then writes them), the error next.
                this.in_pass = false;
                this.broken = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
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

/// `host[:port]` of the base URL (never its user info).
fn host_header(base: &Uri) -> http::HeaderValue {
    let host = base.host().unwrap_or("localhost");
    let text = match base.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    http::HeaderValue::from_str(&text)
        .unwrap_or_else(|_| http::HeaderValue::from_static("localhost"))
}

fn build_connector(connect_timeout: Duration) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = s.source();
    }
    false
}
