//! Integration tests of the keyward-scan library (one test binary).

mod support;

mod archives;
mod engine;
mod git;
mod placeholders;
mod reports;
mod rules;
mod suppression;
