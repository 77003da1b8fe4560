//! keyward's accounts (issue 18, being built): today the opaque bearer secrets that
//! sessions, reset links and recovery codes are made of; passwords, second factors,
//! sessions, sign-in throttling and OpenID Connect sign-in join it here.
//!
//! Domain logic only: no HTTP server, no routes, no storage. The server
//! (`keyward-gateway`) owns the `/auth` routes and persists what this crate
//! decides; keeping the rules here makes each one testable without a server.
#![warn(missing_docs)]

pub mod blocklist;
pub mod oidc;
pub mod passkeys;
pub mod password;
pub mod recovery;
pub mod throttle;
pub mod token;
pub mod totp;
