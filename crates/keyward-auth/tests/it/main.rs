//! keyward-auth's integration tests: one binary, one module per concern.

mod passkeys;
mod token;
