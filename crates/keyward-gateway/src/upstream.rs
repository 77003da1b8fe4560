//! The pooled HTTP client that talks to the upstream API.
//!
//! Each thread that sends requests gets its own connection pool. A pooled
//! connection is driven by a task on the runtime that opened it; with one
//! pool per thread, a request served by a thread-per-core worker
//! (`crate::workers`) and its upstream connection stay on that thread, instead of
//! handing every request's bytes to another thread and waking it.

use crate::config::UpstreamConfig;
use crate::error::GatewayError;
use bytes::Bytes;
use http::uri::{PathAndQuery, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type Pool = Client<Connector, Full<Bytes>>;

thread_local! {
    /// This thread's pools, by [`Upstream::id`] (a process may run several servers,
    /// e.g. in tests).
    static POOLS: RefCell<Vec<(u64, Pool)>> = const { RefCell::new(Vec::new()) };
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

    /// Starts `req` on this thread's pool, making the pool on first use.
    fn start(&self, req: http::Request<Full<Bytes>>) -> hyper_util::client::legacy::ResponseFuture {
        POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            if let Some((_, pool)) = pools.iter().find(|(id, _)| *id == self.id) {
                return pool.request(req);
            }
            let pool = build_pool(self.connect_timeout);
            let response = pool.request(req);
            pools.push((self.id, pool));
            response
        })
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
    ) -> Result<http::Response<Incoming>, GatewayError> {
        match tokio::time::timeout(self.timeout, self.start(req)).await {
            Err(_) => Err(GatewayError::UpstreamTimeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                // Never log the request: it carries the upstream key.
                tracing::warn!(error = %e, connect = e.is_connect(), "upstream request failed");
                if is_timeout(&e) {
                    Err(GatewayError::UpstreamTimeout)
                } else {
                    Err(GatewayError::UpstreamUnreachable)
                }
            }
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

fn build_pool(connect_timeout: Duration) -> Pool {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(https)
}

fn is_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
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
