//! `keyward usage`.

use super::api::Api;
use super::table;
use clap::Args;
use keyward_api::usage::Usage;

/// Flags of `keyward usage`.
#[derive(Args)]
pub struct UsageArgs {
    /// Only this key (id).
    #[arg(long)]
    key: Option<String>,
    /// Only this project (name or id).
    #[arg(long)]
    project: Option<String>,
    /// Only this organization (name or id).
    #[arg(long)]
    org: Option<String>,
    /// Include a time series: hour or day.
    #[arg(long)]
    bucket: Option<String>,
    /// Include totals per key, model or tag.
    #[arg(long)]
    group_by: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `keyward usage`.
pub fn run(args: UsageArgs) -> anyhow::Result<()> {
    let api = Api::from_env()?;
    let mut query = Vec::new();
    for (name, value) in [
        ("key", args.key),
        ("project", args.project),
        ("org", args.org),
        ("bucket", args.bucket),
        ("group_by", args.group_by),
    ] {
        if let Some(v) = value {
            query.push((name, v));
        }
    }
    let usage: Usage = api.get_as("/api/v1/usage", &query)?;
    if args.json {
        // Through a `Value`, as before: the same key order on stdout.
        println!("{}", serde_json::to_value(&usage)?);
        return Ok(());
    }
    let t = &usage.totals;
    let rows = vec![vec![
        t.requests.to_string(),
        t.errors.to_string(),
        t.input_tokens.to_string(),
        t.cached_input_tokens.to_string(),
        t.output_tokens.to_string(),
        dollars(t.cost_micros),
    ]];
    print!(
        "{}",
        table::render(
            &["REQUESTS", "ERRORS", "INPUT", "CACHED", "OUTPUT", "COST"],
            &rows
        )
    );
    if let Some(groups) = &usage.groups {
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                vec![
                    g.group.clone(),
                    g.totals.requests.to_string(),
                    g.totals.input_tokens.to_string(),
                    g.totals.output_tokens.to_string(),
                    dollars(g.totals.cost_micros),
                ]
            })
            .collect();
        println!();
        print!(
            "{}",
            table::render(&["GROUP", "REQUESTS", "INPUT", "OUTPUT", "COST"], &rows)
        );
    }
    if let Some(buckets) = &usage.buckets {
        let rows: Vec<Vec<String>> = buckets
            .iter()
            .map(|b| {
                vec![
                    table::time(Some(b.start)),
                    b.totals.requests.to_string(),
                    b.totals.input_tokens.to_string(),
                    b.totals.output_tokens.to_string(),
                    dollars(b.totals.cost_micros),
                ]
            })
            .collect();
        println!();
        print!(
            "{}",
            table::render(
                &["START (UTC)", "REQUESTS", "INPUT", "OUTPUT", "COST"],
                &rows
            )
        );
    }
    Ok(())
}

/// Micro-dollars as dollars with all six decimals.
fn dollars(micros: i64) -> String {
    format!("${:.6}", micros as f64 / 1e6)
}
