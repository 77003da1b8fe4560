//! Where each request enters: `/v1` goes straight to the gateway handler, every
//! other path through the router.
//!
//! The proxy path is the hot one, and the router's work for it (matching a
//! wildcard route, capturing its parameter, one more request extension and one
//! more boxed future) was about 4 % of the instructions of a proxied request
//! (docs/BENCHMARKS.md), for a decision that is a prefix test. Everything else
//! (management API, leak intake, health) keeps the router.

use crate::proxy;
use crate::state::SharedState;
use crate::verify::ParseMemo;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use futures_util::future::{BoxFuture, Either, FutureExt, Map};
use std::convert::Infallible;
use std::future::Ready;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
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

impl<'a, L> Service<IncomingStream<'a, L>> for MakeEntry
where
    L: Listener<Addr = SocketAddr>,
{
    type Response = Entry;
    type Error = Infallible;
    type Future = Ready<Result<Entry, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'a, L>) -> Self::Future {
        std::future::ready(Ok(Entry {
            router: self.router.clone(),
            state: self.state.clone(),
            peer: *stream.remote_addr(),
            memo: Arc::default(),
        }))
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

impl Service<Request> for Entry {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Map<BoxFuture<'static, Response>, Wrap>, RouterFuture>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
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
            Either::Right(self.router.call(req))
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
