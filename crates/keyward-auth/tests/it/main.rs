//! keyward-auth's integration tests: one binary, one module per concern.

mod oidc;
mod oidc_provider;
mod token;
