//! The pooled HTTP client that talks to the upstream API.
//!
//! Each thread that sends requests keeps its own idle connections. With one pool
//! per thread, a request served by a thread-per-core worker
//! (`crate::serve::workers`) and its upstream connection stay on that thread.
//!
//! No task of its own drives a connection: the request that uses it writes the
//! request and reads the response's head, then the response body reads the
//! socket from its own `poll_frame`. A streamed response is a train of small
//! chunks, one per event, and one read from the upstream's socket holds
//! several: the client's connection takes every event already read in one pass
//! and writes them together, and an event is never held back for the next (the
//! pass ends at the first event not yet read; docs/BENCHMARKS.md, Gateway).
//!
//! HTTP/1.1 is spoken by [`wire`], ours, rather than hyper's client connection:
//! hyper's kept about 25 KiB of buffers and channel per connection for its
//! whole life, half of what an open stream cost (the module doc of [`wire`]).
//! A connection here holds nothing while it waits for the next event.
//!
//! The pool is a per-thread stack of idle connections, most recently used first.
//! hyper-util's general pool (keyed maps, locks, waiters) cost about a tenth of
//! the gateway's instructions per request (docs/BENCHMARKS.md history, `git log
//! -p`). A connection goes back to the stack when its response body has been
//! read to the end, unless the upstream asked to close it or sent bytes past
//! the body; a body dropped early closes its connection, which also ends the
//! upstream request (a client hang-up). An idle connection that the upstream
//! closed in the meantime is found before the request is written (a read would
//! not block), and the request goes on a new connection; one already written is
//! never sent twice. Upstreams are spoken to in HTTP/1.1 (ALPN offers only
//! `http/1.1`), as reverse proxies commonly do.

pub mod simulated;
mod wire;

use crate::config::UpstreamConfig;
use crate::error::GatewayError;
use bytes::{Bytes, BytesMut};
use http::uri::{PathAndQuery, Uri};
use hyper::body::{Body, Frame, SizeHint};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tower_service::Service;
use wire::Framing;
pub use wire::Malformed;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
/// A connection's socket (TLS or not), as tokio reads and writes it.
type Io = TokioIo<MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>>;

/// An idle connection is not reused after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per thread and upstream.
const MAX_IDLE: usize = 1024;
/// The most read from the socket at once. Reads land on the stack and only what
/// arrived is copied to the heap, so a connection waiting for its next event
/// holds no read buffer.
const READ_SIZE: usize = 16 * 1024;
/// A request body up to this size is written in one piece with its head.
const JOINED_WRITE: usize = 16 * 1024;

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
    Request(UpstreamError),
}

/// An upstream connection that broke, or a response that HTTP/1.1 does not allow.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Reading or writing the socket failed.
    #[error("upstream connection: {0}")]
    Io(#[from] std::io::Error),
    /// The response broke HTTP/1.1's rules or one of our limits.
    #[error("the upstream's response: {0}")]
    Malformed(Malformed),
    /// The upstream closed the connection before its answer was complete.
    #[error("the upstream closed the connection before answering")]
    Closed,
}

impl From<Malformed> for UpstreamError {
    fn from(m: Malformed) -> Self {
        Self::Malformed(m)
    }
}

/// One upstream connection. It has no task of its own: the exchange that uses
/// it, then the response body, reads and writes it (see the module doc).
struct Conn {
    io: Io,
}

impl Conn {
    /// Whether an idle connection is still open: the upstream has neither closed
    /// it nor sent anything unasked (a read would block).
    fn is_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }

    /// Reads what the socket has into `buf` (through a buffer on the stack,
    /// left uninitialized: zeroing 16 KiB for every read was the largest item
    /// of our own code in a profile of slow streams); `Ready(Ok(0))` at the
    /// connection's end.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<std::io::Result<usize>> {
        let mut space = [MaybeUninit::<u8>::uninit(); READ_SIZE];
        let mut read = ReadBuf::uninit(&mut space);
        match Pin::new(&mut self.io).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                buf.extend_from_slice(read.filled());
                Poll::Ready(Ok(read.filled().len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes a request. The error says whether nothing of it was written
    /// (the connection had closed), so that it may be sent on another.
    async fn write_request(
        &mut self,
        head: &[u8],
        body: &[u8],
    ) -> Result<(), (UpstreamError, bool)> {
        let joined;
        let (first, rest): (&[u8], &[u8]) = if body.len() <= JOINED_WRITE {
            joined = [head, body].concat();
            (&joined, &[])
        } else {
            (head, body)
        };
        let n = match self.io.write(first).await {
            Ok(0) => return Err((UpstreamError::Closed, true)),
            Err(e) => return Err((e.into(), true)),
            Ok(n) => n,
        };
        let written = async {
            self.io.write_all(&first[n..]).await?;
            self.io.write_all(rest).await?;
            self.io.flush().await
        };
        written.await.map_err(|e| (e.into(), false))
    }

    /// Reads the response head; what was read past it starts the body.
    async fn read_head(
        &mut self,
        method: &http::Method,
    ) -> Result<(wire::Head, BytesMut), UpstreamError> {
        let mut buf = BytesMut::new();
        loop {
            let n = std::future::poll_fn(|cx| self.poll_read_into(cx, &mut buf)).await?;
            if n == 0 {
                return Err(UpstreamError::Closed);
            }
            if let Some(head) = wire::parse_response(&mut buf, method)? {
                return Ok((head, buf));
            }
        }
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
            while let Some((mut conn, since)) = pool.idle.pop_back() {
                if since.elapsed() < IDLE_TIMEOUT && conn.is_open() {
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
        Ok(Conn {
            io: TokioIo::new(io),
        })
    }

    /// Sends a request on an idle connection or a new one, and reads the
    /// response's head. A request that an idle connection could not take is
    /// sent once more, on a new connection; one already written never is.
    async fn exchange(
        &self,
        req: http::Request<Bytes>,
    ) -> Result<http::Response<UpstreamBody>, Failure> {
        let (mut parts, body) = req.into_parts();
        if !parts.headers.contains_key(http::header::HOST) {
            parts.headers.insert(http::header::HOST, self.host.clone());
        }
        // The request line carries only the path (origin form): the connection
        // was opened to the base URL's authority.
        let target = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let mut head = Vec::with_capacity(wire::request_head_len(target, &parts.headers));
        wire::encode_request(&parts.method, target, &parts.headers, body.len(), &mut head);
        let mut conn = match self.checkout() {
            Some(mut idle) => match idle.write_request(&head, &body).await {
                Ok(()) => idle,
                Err((_, true)) => self.connect_and_write(&head, &body).await?,
                Err((e, false)) => return Err(Failure::Request(e)),
            },
            None => self.connect_and_write(&head, &body).await?,
        };
        drop(head);
        let (head, buf) = conn
            .read_head(&parts.method)
            .await
            .map_err(Failure::Request)?;
        let mut resp = http::Response::new(UpstreamBody {
            conn: Some(conn),
            buf,
            framing: head.framing,
            reusable: head.reusable,
            upstream: self.id,
            in_pass: false,
            broken: None,
            ended: false,
        });
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        resp.body_mut().release_if_done();
        Ok(resp)
    }

    async fn connect_and_write(&self, head: &[u8], body: &[u8]) -> Result<Conn, Failure> {
        let mut conn = self.connect().await?;
        conn.write_request(head, body)
            .await
            .map_err(|(e, _)| Failure::Request(e))?;
        Ok(conn)
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
        req: http::Request<Bytes>,
    ) -> Result<http::Response<UpstreamBody>, GatewayError> {
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

/// An upstream response body. Polling it reads its connection; the connection
/// goes back to this thread's pool when the body has been read to its end, and
/// is closed if the body is dropped before that (a client hang-up), which also
/// ends the upstream's work on the request.
pub struct UpstreamBody {
    /// `None` once the body has ended or broken.
    conn: Option<Conn>,
    /// Bytes read and not yet handed on (usually none between reads).
    buf: BytesMut,
    framing: Framing,
    /// The connection may carry another request after this body.
    reusable: bool,
    upstream: u64,
    /// A frame was returned since the body last answered `Pending`.
    in_pass: bool,
    /// An error held back until the frames before it have been written.
    broken: Option<UpstreamError>,
    ended: bool,
}

impl UpstreamBody {
    /// Returns the connection to the pool once the body has been read to its
    /// end, unless the upstream sent more than the body or asked to close.
    fn release_if_done(&mut self) {
        if !self.framing.is_done() {
            return;
        }
        self.ended = true;
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !self.reusable || !self.buf.is_empty() {
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

    /// The body broke: its connection is closed. The error goes out at once,
    /// unless frames of this pass are still to be written (see `poll_frame`).
    fn fail(
        &mut self,
        e: UpstreamError,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.conn = None;
        self.ended = true;
        if !self.in_pass {
            return Poll::Ready(Some(Err(e)));
        }
        // The frames of this pass are still in the server's buffer, and an
        // error makes it drop the connection without writing them: answer
        // Pending first (it then writes them), the error next.
        self.in_pass = false;
        self.broken = Some(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    /// One frame per poll, as each piece of data is decoded: the server takes
    /// every frame already read in one pass and writes them together, and a
    /// frame is never held back for the next (the pass ends at the first
    /// `Pending`).
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = &mut *self;
        if let Some(e) = this.broken.take() {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match this.framing.decode(&mut this.buf) {
                Err(m) => return this.fail(m.into(), cx),
                Ok(Some(data)) => {
                    this.in_pass = true;
                    this.release_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if this.framing.is_done() => {
                    this.release_if_done();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
            }
            let Some(conn) = this.conn.as_mut() else {
                return this.fail(UpstreamError::Closed, cx);
            };
            match conn.poll_read_into(cx, &mut this.buf) {
                Poll::Pending => {
                    this.in_pass = false;
                    // Hold no buffer while waiting (the frames handed on keep
                    // theirs until written).
                    if this.buf.is_empty() {
                        this.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => match this.framing.at_close() {
                    Ok(()) => {
                        this.conn = None;
                        this.ended = true;
                        return Poll::Ready(None);
                    }
                    Err(m) => return this.fail(m.into(), cx),
                },
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(e.into(), cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
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
