//! `keyward usage`.

use super::api::Api;
use super::table;
use clap::Args;
use serde_json::Value;

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
    let usage = api.get("/api/v1/usage", &query)?;
    if args.json {
        println!("{usage}");
        return Ok(());
    }
    let n = |f: &str| usage[f].as_i64().unwrap_or(0);
    let rows = vec![vec![
        n("requests").to_string(),
        n("errors").to_string(),
        n("input_tokens").to_string(),
        n("cached_input_tokens").to_string(),
        n("output_tokens").to_string(),
        format!("${:.6}", n("cost_micros") as f64 / 1e6),
    ]];
    print!(
        "{}",
        table::render(
            &["REQUESTS", "ERRORS", "INPUT", "CACHED", "OUTPUT", "COST"],
            &rows
        )
    );
    if let Some(groups) = usage["groups"].as_array() {
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|g: &Value| {
                vec![
                    g["group"].as_str().unwrap_or("-").to_owned(),
                    g["requests"].to_string(),
                    g["input_tokens"].to_string(),
                    g["output_tokens"].to_string(),
                    format!(
                        "${:.6}",
                        g["cost_micros"].as_i64().unwrap_or(0) as f64 / 1e6
                    ),
                ]
            })
            .collect();
        println!();
        print!(
            "{}",
            table::render(&["GROUP", "REQUESTS", "INPUT", "OUTPUT", "COST"], &rows)
        );
    }
    if let Some(buckets) = usage["buckets"].as_array() {
        let rows: Vec<Vec<String>> = buckets
            .iter()
            .map(|b: &Value| {
                vec![
                    table::time(b["start"].as_i64()),
                    b["requests"].to_string(),
                    b["input_tokens"].to_string(),
                    b["output_tokens"].to_string(),
                    format!(
                        "${:.6}",
                        b["cost_micros"].as_i64().unwrap_or(0) as f64 / 1e6
                    ),
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
