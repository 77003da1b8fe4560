//! `keyward tokens mint`: what an app's backend does to hand a browser a
//! short-lived token — `POST /keyward/v1/tokens` with its own gateway key, no
//! admin key involved.

use super::amount::{positive_usd, usd_field};
use super::api::{typed, Api};
use super::keys::{print_json, seconds, LimitArgs};
use super::table;
use clap::Subcommand;
use keyward_api::keys::{CreatedKey, EphemeralRequest};
use keyward_core::Micros;

/// Token commands.
#[derive(Subcommand)]
pub enum TokensCommand {
    /// Mint an ephemeral token (kwe_) from the gateway key in $KEYWARD_KEY (or
    /// the variable `--key-env` names): the token is printed on stdout.
    Mint {
        /// The environment variable holding the parent gateway key (kwk_…).
        #[arg(long, default_value = "KEYWARD_KEY")]
        key_env: String,
        /// Lifetime, e.g. 10m (default) up to 24h.
        #[arg(long)]
        ttl: Option<String>,
        /// The token's own budget for its whole life, in US dollars.
        #[arg(long, allow_hyphen_values = true, value_parser = positive_usd)]
        budget_usd: Option<Micros>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Print JSON (the API's answer: the token's record and secret).
        #[arg(long)]
        json: bool,
    },
}

/// Runs a token command.
pub fn run(cmd: TokensCommand) -> anyhow::Result<()> {
    let TokensCommand::Mint {
        key_env,
        ttl,
        budget_usd,
        limits,
        json,
    } = cmd;
    let body = EphemeralRequest {
        ttl_seconds: seconds("--ttl", ttl)?,
        policy: limits.to_policy(),
        budget_usd: budget_usd.map(usd_field),
    };
    let answer = Api::with_key_from(&key_env)?.post("/keyward/v1/tokens", &body)?;
    if json {
        return print_json(&answer);
    }
    let token: CreatedKey = typed(answer)?;
    println!("{}", token.key);
    eprintln!(
        "Ephemeral token {} expires at {} UTC.",
        token.record.record.id,
        table::time(token.record.record.expires_at)
    );
    Ok(())
}
