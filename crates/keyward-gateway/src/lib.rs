//! keyward's server: the OpenAI-compatible gateway (`/v1`), metering, and the
//! management API (`/api/v1`).
//!
//! Invariant: no handler logs, returns or puts in a metric label the client's key
//! or the upstream key; the upstream key appears only in the outgoing
//! `Authorization` header, marked sensitive.
#![warn(missing_docs)]

pub mod accounts;
pub mod audit_sample;
pub mod auth;
pub mod bootstrap;
pub mod cluster;
pub mod config;
pub mod data_dir;
pub mod error;
pub mod github;
pub mod invalidation;
pub mod json_api;
pub(crate) mod json_walk;
pub mod key_cache;
pub mod leaks;
pub mod limits;
pub mod management;
pub mod metering;
pub mod metrics;
pub mod notify;
pub mod origins;
pub mod proxy;
pub mod rate_headers;
pub mod request;
pub mod sealing;
pub mod serve;
pub mod state;
pub mod ttl_map;
pub mod upstream;

pub use config::{ConnectionLimits, GatewayConfig, UpstreamConfig};

/// The hash map of the request path's caches and counters. Their keys are ids
/// and hashes the server made, so a fast seeded hash is enough; SipHash (std's
/// default) was about 4 % of the instructions of a proxied request.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub use serve::Server;
