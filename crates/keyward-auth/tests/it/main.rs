//! keyward-auth's integration tests: one binary, one module per concern.

mod blocklist;
mod oidc;
mod oidc_provider;
mod passkeys;
mod password;
mod recovery;
mod soft_authenticator;
mod throttle;
mod token;
mod totp;
