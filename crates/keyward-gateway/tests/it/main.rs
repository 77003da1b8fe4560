//! Gateway integration tests: the real server on a port-0 socket, a real upstream
//! test server that records what it receives, and HTTP clients on loopback.

mod bad_input;
mod leaks;
mod notify;
mod watchers;
mod budgets;
mod limits;
mod management;
mod metering;
mod proxy;
mod support;
