//! Tests of the `keyward` binary as users run it: real processes, real sockets.

mod accounts;
mod cli;
mod cli_audit;
mod cli_management;
mod cli_usage;
mod cluster;
mod dashboard;
mod health;
mod report;
mod scan;
mod sdk;
#[cfg(unix)]
mod secrets_at_rest;
mod support;
mod tidy;
