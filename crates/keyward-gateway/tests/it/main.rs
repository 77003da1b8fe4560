//! Gateway integration tests: the real server on a port-0 socket, a real upstream
//! test server that records what it receives, and HTTP clients on loopback.

mod accounts;
mod audit_chain;
mod authorization;
mod bad_input;
mod budgets;
mod cluster;
mod cors;
mod leaks;
mod limits;
mod management;
mod metering;
mod notify;
mod oidc;
// The provider launcher keyward-auth's tests use, shared as is; this crate's
// tests use part of it.
#[allow(dead_code)] // reason: REDIRECT_URL and sign_in_at_provider serve keyward-auth's tests
#[path = "../../../keyward-auth/tests/it/oidc_provider.rs"]
mod oidc_provider;
mod openapi;
mod passkeys;
mod proxy;
mod security_api;
mod security_keys;
mod security_proxy;
mod security_server;
mod shared_counters;
mod shared_throttle;
/// The WebAuthn authenticator keyward-auth's tests use, shared by path.
#[path = "../../../keyward-auth/tests/it/soft_authenticator.rs"]
mod soft_authenticator;
mod streams;
mod support;
mod upstream_wire;
mod watchers;
