//! Tests of the `keyward` binary as users run it: real processes, real sockets.

mod cli;
mod report;
mod scan;
mod sdk;
mod support;
mod tidy;
