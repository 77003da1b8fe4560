//! keyward's accounts: what makes a password acceptable and how it is stored, second
//! factors (TOTP, recovery codes, passkeys), sessions, sign-in throttling and
//! OpenID Connect sign-in.
//!
//! Domain logic only: no HTTP server, no routes, no storage. The server
//! (`keyward-gateway`) owns the `/auth` routes and persists what this crate
//! decides; keeping the rules here makes each one testable without a server.
#![warn(missing_docs)]

pub mod token;
