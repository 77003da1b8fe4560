//! keyward-store's integration tests: one suite, run on every backend.
//!
//! Each test body is written once, as an `async fn(SharedStore)`, and
//! `store_tests!` instantiates it for SQLite (always) and PostgreSQL (when
//! `KEYWARD_TEST_POSTGRES_URL` is set), as `<module>::<test>::sqlite` and
//! `<module>::<test>::postgres`.

#[macro_use]
mod support;

mod accounts;
mod admin;
mod audit;
mod backends;
mod keys;
mod leaks;
mod limits;
mod migrations;
mod orgs;
mod tokens;
mod usage;
