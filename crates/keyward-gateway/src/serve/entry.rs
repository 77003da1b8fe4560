//! Where each request enters: `/v1` goes straight to the gateway handler, every
//! other path through the router.
//!
//! The proxy path is the hot one, and the router's work for it (matching a
//! wildcard route, capturing its parameter, one more request extension and one
//! more boxed future) was about 4 % of the instructions of a proxied request
//! (docs/BENCHMARKS.md history, `git log -p`), for a decision that is a prefix test. Everything else
//! (management API, leak intake, health) keeps the router.

use crate::proxy;
use crate::proxy::verify::ParseMemo;
use crate::state::SharedState;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use futures_util::future::{BoxFuture, Either, FutureExt, Map};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tower_service::Service;

/// Makes one [`Entry`] per accepted connection, knowing its peer address.
#[derive(Clone)]
pub struct MakeEntry {
    router: Router,
    state: SharedState,
}

impl MakeEntry {
    /// `router` serves every path but `/v1`.
    pub fn new(router: Router, state: SharedState) -> Self {
        Self { router, state }
    }
}

impl MakeEntry {
    /// The request service of one accepted connection from `peer`.
    pub fn for_connection(&self, peer: SocketAddr) -> Entry {
        Entry {
            router: self.router.clone(),
            state: self.state.clone(),
            peer,
            memo: Arc::default(),
        }
    }

    /// The shared state (limits, metrics).
    pub fn state(&self) -> &SharedState {
        &self.state
    }
}

/// One connection's request service.
#[derive(Clone)]
pub struct Entry {
    router: Router,
    state: SharedState,
    peer: SocketAddr,
    /// The connection's last parsed key (see [`ParseMemo`]).
    memo: Arc<ParseMemo>,
}

/// Is `path` the gateway's (`/v1` or below it)?
fn is_gateway_path(path: &str) -> bool {
    path.strip_prefix("/v1")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

type RouterFuture = <Router as Service<Request>>::Future;
type Wrap = fn(Response) -> Result<Response, Infallible>;

/// What [`Entry::serve`] returns.
pub type EntryFuture = Either<Map<BoxFuture<'static, Response>, Wrap>, RouterFuture>;

impl Entry {
    /// Serves one request. Takes `&self` (hyper's service calls do), so that a
    /// request costs no clone of the connection's service: only the proxy
    /// path's two reference counts, as before.
    pub fn serve(&self, mut req: Request) -> EntryFuture {
        if is_gateway_path(req.uri().path()) {
            let forward = proxy::forward(
                State(self.state.clone()),
                ConnectInfo(self.peer),
                self.memo.clone(),
                req,
            );
            Either::Left(forward.boxed().map(Ok as Wrap))
        } else {
            // What `into_make_service_with_connect_info` would have added.
            req.extensions_mut().insert(ConnectInfo(self.peer));
            Either::Right(self.router.clone().call(req))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_gateway_path;

    #[test]
    fn only_v1_and_below_is_the_gateway() {
        for path in ["/v1", "/v1/", "/v1/chat/completions", "/v1/models?x=1"] {
            assert!(is_gateway_path(path.split('?').next().unwrap()), "{path}");
        }
        for path in [
            "/",
            "/v10",
            "/v1x/models",
            "/api/v1/keys",
            "/healthz",
            "/V1/models",
        ] {
            assert!(!is_gateway_path(path), "{path}");
        }
    }
}
