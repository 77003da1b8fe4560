//! `keyward usage`.

use super::api::Api;
use super::table;
use clap::Args;
use keyward_api::usage::{Usage, UsageTotals};

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
    format!("${}", usd(micros))
}

/// Micro-dollars as an exact decimal number of dollars (`-0.000001`,
/// `12.340000`): integer arithmetic, so no amount is rounded.
fn usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

/// The columns every CSV row ends with.
const CSV_COUNTS: [&str; 8] = [
    "requests",
    "errors",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "incomplete",
];

/// The usage as CSV (RFC 4180, `\r\n` line ends): a header row, then one row
/// per bucket, per group, or for the totals, each led by what identifies it.
fn csv(usage: &Usage) -> String {
    let (lead, rows): (&[&str], Vec<(Vec<String>, &UsageTotals)>) =
        match (&usage.buckets, &usage.groups) {
            (Some(buckets), _) => (
                &["start", "start_ms"],
                buckets
                    .iter()
                    .map(|b| (vec![iso_time(b.start), b.start.to_string()], &b.totals))
                    .collect(),
            ),
            (None, Some(groups)) => (
                &["group"],
                groups
                    .iter()
                    .map(|g| (vec![csv_cell(&g.group)], &g.totals))
                    .collect(),
            ),
            (None, None) => (&[], vec![(vec![], &usage.totals)]),
        };
    let mut out = lead
        .iter()
        .chain(&CSV_COUNTS)
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    out.push_str("\r\n");
    for (mut cells, t) in rows {
        cells.extend([
            t.requests.to_string(),
            t.errors.to_string(),
            t.input_tokens.to_string(),
            t.cached_input_tokens.to_string(),
            t.output_tokens.to_string(),
            t.reasoning_tokens.to_string(),
            usd(t.cost_micros),
            t.incomplete.to_string(),
        ]);
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out
}

/// One CSV field: quoted when it holds a comma, quote or line break (quotes
/// doubled). A group name comes from a client (the model a request named) or
/// an operator (a tag); one that a spreadsheet would run as a formula (it
/// starts with `=`, `+`, `-`, `@`, a tab or a carriage return) gets a leading
/// `'`, as OWASP advises against CSV injection.
fn csv_cell(value: &str) -> String {
    let mut v = String::with_capacity(value.len() + 3);
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        v.push('\'');
    }
    v.push_str(value);
    if v.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

/// A bucket's start as RFC 3339 UTC (buckets start on whole hours).
fn iso_time(ms: i64) -> String {
    // `table::time` gives "YYYY-MM-DD HH:MM", UTC.
    let t = table::time(Some(ms));
    let (date, hm) = t.split_once(' ').unwrap_or((&t, "00:00"));
    format!("{date}T{hm}:00Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_are_exact() {
        assert_eq!(usd(0), "0.000000");
        assert_eq!(usd(1), "0.000001");
        assert_eq!(usd(-1), "-0.000001");
        assert_eq!(usd(12_340_000), "12.340000");
        assert_eq!(usd(i64::MAX), "9223372036854.775807");
        assert_eq!(usd(i64::MIN), "-9223372036854.775808");
    }

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_cell("gpt-4o"), "gpt-4o");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_cell("a\nb"), "\"a\nb\"");
        assert_eq!(iso_time(1_704_067_200_000), "2024-01-01T00:00:00Z");
    }
}
