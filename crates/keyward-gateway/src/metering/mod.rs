//! Metering: what a response cost. `meter` follows one request to its end,
//! `sse_tap` reads a stream's events as they pass, `usage_parse` reads the
//! upstream's usage object, and `writer` batches usage events to storage.

pub mod meter;
pub mod sse_tap;
pub mod usage_parse;
pub mod writer;
