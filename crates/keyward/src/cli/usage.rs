//! `keyward usage`.

use super::api::Api;
use super::table;
use clap::Args;
use keyward_api::usage::{Usage, UsageTotals};
use keyward_api::usage_csv;

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
    /// Include a time series: hour, day or month (UTC calendar months).
    #[arg(long, value_parser = ["hour", "day", "month"])]
    bucket: Option<String>,
    /// Include totals per key, project, model or tag.
    #[arg(long)]
    group_by: Option<String>,
    /// Print JSON.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV: a header row, then one row per bucket (with --bucket), per
    /// group (with --group-by), or the totals; money in dollars.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
}

/// Runs `keyward usage`.
pub fn run(args: UsageArgs) -> anyhow::Result<()> {
    if args.csv && args.bucket.is_some() && args.group_by.is_some() {
        anyhow::bail!("--csv prints one table: give --bucket or --group-by, not both");
    }
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
    if args.csv {
        print!("{}", csv(&usage));
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
        t.incomplete.to_string(),
    ]];
    print!(
        "{}",
        table::render(
            &[
                "REQUESTS",
                "ERRORS",
                "INPUT",
                "CACHED",
                "OUTPUT",
                "COST",
                "INCOMPLETE"
            ],
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
                    g.totals.incomplete.to_string(),
                ]
            })
            .collect();
        println!();
        print!(
            "{}",
            table::render(
                &["GROUP", "REQUESTS", "INPUT", "OUTPUT", "COST", "INCOMPLETE"],
                &rows
            )
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
                    b.totals.incomplete.to_string(),
                ]
            })
            .collect();
        println!();
        print!(
            "{}",
            table::render(
                &[
                    "START (UTC)",
                    "REQUESTS",
                    "INPUT",
                    "OUTPUT",
                    "COST",
                    "INCOMPLETE"
                ],
                &rows
            )
        );
    }
    Ok(())
}

/// Micro-dollars as dollars with all six decimals.
fn dollars(micros: i64) -> String {
    format!("${}", usage_csv::usd(micros))
}

/// The usage as CSV (RFC 4180, `\r\n` line ends): a header row, then one row
/// per bucket, per group, or for the totals, each led by what identifies it.
fn csv(usage: &Usage) -> String {
    let (lead, rows): (&[&str], Vec<(Vec<String>, &UsageTotals)>) =
        match (&usage.buckets, &usage.groups) {
            (Some(buckets), _) => (
                &["start", "start_ms"],
                buckets
                    .iter()
                    .map(|b| {
                        (
                            vec![usage_csv::iso_time(b.start), b.start.to_string()],
                            &b.totals,
                        )
                    })
                    .collect(),
            ),
            (None, Some(groups)) => (
                &["group"],
                groups
                    .iter()
                    .map(|g| (vec![g.group.clone()], &g.totals))
                    .collect(),
            ),
            (None, None) => (&[], vec![(vec![], &usage.totals)]),
        };
    let header: Vec<&str> = lead.iter().chain(&usage_csv::COUNTS).copied().collect();
    let mut out = usage_csv::line(&header);
    for (mut cells, t) in rows {
        cells.extend(usage_csv::counts(t));
        out.push_str(&usage_csv::line(&cells));
    }
    out
}
