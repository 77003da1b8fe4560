//! `keyward health`: probes a running server's `/healthz`.
//!
//! The container image has no curl or wget (a smaller image, fewer tools for an
//! intruder), so its `HEALTHCHECK` runs the binary it already ships. Exit codes
//! follow Docker's HEALTHCHECK contract: 0 healthy, 1 unhealthy (2 is reserved
//! there, so an unhealthy server is never reported as 2).

use anyhow::Context;
use clap::Args;
use std::time::Duration;

/// Flags of `keyward health`.
#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Server to probe.
    #[arg(long, env = "KEYWARD_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5)]
    timeout_secs: u64,
}

/// Returns 0 when `/healthz` answers 200; otherwise prints why and returns 1.
/// A URL that cannot be parsed is a usage error (exit 2).
pub fn run(args: HealthArgs) -> anyhow::Result<u8> {
    let mut url = reqwest::Url::parse(args.url.trim_end_matches('/'))
        .with_context(|| "--url (or KEYWARD_URL) is not a URL, e.g. http://127.0.0.1:8080")?;
    // The server as messages name it: credentials in the URL stay out of output.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let server = url.to_string();
    let healthz = format!("{}/healthz", server.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs.max(1)))
        .build()?;
    let answer = runtime.block_on(async { http.get(&healthz).send().await });
    match answer {
        Ok(resp) if resp.status() == reqwest::StatusCode::OK => {
            println!("healthy: {healthz} answered 200");
            Ok(0)
        }
        Ok(resp) => {
            eprintln!("unhealthy: {healthz} answered {}", resp.status());
            Ok(1)
        }
        Err(e) => {
            // reqwest's error names the URL it was given, which is already
            // stripped of credentials; without_url keeps the message short.
            eprintln!(
                "unhealthy: cannot reach {healthz} ({:#}); is `keyward serve` running there? (set --url or KEYWARD_URL)",
                anyhow::Error::new(e.without_url())
            );
            Ok(1)
        }
    }
}
