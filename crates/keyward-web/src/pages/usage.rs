//! Usage: cost and tokens over time, stacked by key, project, model or tag,
//! the groups' table, and the same figures as CSV.
//!
//! Everything comes from `GET /api/v1/usage`, which reads the rollups (hourly
//! for the last day or week by hour, daily otherwise), so the page costs the
//! same whatever the traffic: one call for the chart (the eight most expensive
//! groups, the rest as "(other)") and one for the table (every group).

use super::{now_ms, refused};
use crate::chart::{self, Series};
use crate::layout;
use crate::session::Viewer;
use crate::SharedWeb;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use keyward_api::usage::{Usage, UsageGroup, UsageTotals};
use keyward_api::usage_csv;
use keyward_core::Period;
use maud::{html, Markup};
use serde::Deserialize;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Groups drawn in the chart; the rest are summed as "(other)".
const CHART_GROUPS: usize = 8;
/// Rows per page of the groups' table.
const PAGE: usize = 50;

/// The page's choices, from its query string; every one optional.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct View {
    /// `24h`, `7d`, `30d` (the default), `90d` or `12m`.
    #[serde(default)]
    range: String,
    /// `hour`, `day` or `month`; by default the range's natural one.
    #[serde(default)]
    bucket: String,
    /// `key` (the default), `project`, `model` or `tag`.
    #[serde(default)]
    group_by: String,
    /// The table's page, from 0.
    #[serde(default)]
    page: usize,
}

/// A view made whole: its range `[from, to)`, its buckets' starts, and names.
#[derive(Clone, Debug, PartialEq)]
struct Window {
    range: &'static str,
    bucket: &'static str,
    group_by: &'static str,
    from: i64,
    to: i64,
    /// The start of every bucket in the range, oldest first (empty ones too).
    starts: Vec<i64>,
}

const RANGES: [(&str, &str); 5] = [
    ("24h", "Last 24 hours"),
    ("7d", "Last 7 days"),
    ("30d", "Last 30 days"),
    ("90d", "Last 90 days"),
    ("12m", "Last 12 months"),
];
const BUCKETS: [&str; 3] = ["hour", "day", "month"];
const GROUPINGS: [(&str, &str); 4] = [
    ("key", "Key"),
    ("project", "Project"),
    ("model", "Model"),
    ("tag", "Tag"),
];

impl Window {
    /// The window `view` asks for at `now`. Unknown values fall back to the
    /// defaults; hourly buckets are kept to ranges of a week or less (at most
    /// 168 bars), monthly ones to ranges of more than a week.
    fn of(view: &View, now: i64) -> Self {
        let range = RANGES
            .iter()
            .map(|(r, _)| *r)
            .find(|r| *r == view.range)
            .unwrap_or("30d");
        let group_by = GROUPINGS
            .iter()
            .map(|(g, _)| *g)
            .find(|g| *g == view.group_by)
            .unwrap_or("key");
        // Whole UTC days (the daily rollup answers), except the last 24 hours.
        let tomorrow = now - now.rem_euclid(DAY_MS) + DAY_MS;
        let (from, to, natural) = match range {
            "24h" => {
                let to = now - now.rem_euclid(HOUR_MS) + HOUR_MS;
                (to - 24 * HOUR_MS, to, "hour")
            }
            "7d" => (tomorrow - 7 * DAY_MS, tomorrow, "day"),
            "90d" => (tomorrow - 90 * DAY_MS, tomorrow, "day"),
            "12m" => {
                let mut from = Period::Month.start(now);
                for _ in 0..11 {
                    from = Period::Month.start(from - 1);
                }
                (from, tomorrow, "month")
            }
            _ => (tomorrow - 30 * DAY_MS, tomorrow, "day"),
        };
        let short = to - from <= 7 * DAY_MS;
        let bucket = match BUCKETS.iter().find(|b| **b == view.bucket) {
            Some(&"hour") if short => "hour",
            Some(&"month") if !short => "month",
            Some(&"day") if range != "24h" => "day",
            _ => natural,
        };
        let mut starts = Vec::new();
        let mut t = match bucket {
            "hour" => from,
            "day" => from - from.rem_euclid(DAY_MS),
            _ => Period::Month.start(from),
        };
        while t < to {
            starts.push(t);
            t = match bucket {
                "hour" => t + HOUR_MS,
                "day" => t + DAY_MS,
                _ => Period::Month.start(t + 32 * DAY_MS),
            };
        }
        Window {
            range,
            bucket,
            group_by,
            from,
            to,
            starts,
        }
    }

    /// The API query for this window; `top` for the chart's series.
    fn api_path(&self, bucket: bool, top: Option<usize>) -> String {
        let mut path = format!(
            "/api/v1/usage?from={}&to={}&group_by={}",
            self.from, self.to, self.group_by
        );
        if bucket {
            path.push_str("&bucket=");
            path.push_str(self.bucket);
        }
        if let Some(n) = top {
            path.push_str(&format!("&top={n}"));
        }
        path
    }

    /// This view's own query string, with another table page.
    fn query(&self, page: usize) -> String {
        format!(
            "range={}&bucket={}&group_by={}&page={page}",
            self.range, self.bucket, self.group_by
        )
    }

    /// A bucket's label under the chart and in its titles.
    fn label(&self, start: i64) -> String {
        let full = layout::time(start); // YYYY-MM-DD HH:MM
        match self.bucket {
            "hour" => full[11..].to_owned(),
            "day" => full[5..10].to_owned(),
            _ => full[..7].to_owned(),
        }
    }
}

/// `GET /usage`.
pub async fn show(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Query(view): Query<View>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let window = Window::of(&view, now_ms());
    let usage = match web
        .api
        .get(&visitor, &window.api_path(true, Some(CHART_GROUPS)))
        .await
        .parse::<Usage>()
    {
        Ok(u) => u,
        Err(r) => return refused(&me, r, "/"),
    };
    // Absent only when nothing was grouped; then there is no row to show.
    let groups = usage.groups.as_deref().unwrap_or(&[]);
    let pages = groups.len().div_ceil(PAGE).max(1);
    let page = view.page.min(pages - 1);
    let labels: Vec<String> = window.starts.iter().map(|s| window.label(*s)).collect();
    let (cost, tokens) = chart_series(&window, &usage);
    let grouping = GROUPINGS
        .iter()
        .find(|(g, _)| *g == window.group_by)
        .map_or("Group", |(_, name)| *name);
    let body = html! {
        form.filters method="get" action="/usage" {
            label for="range" { "Period" }
            select #range name="range" {
                @for (r, name) in RANGES { option value=(r) selected[r == window.range] { (name) } }
            }
            label for="bucket" { "By" }
            select #bucket name="bucket" {
                @for b in BUCKETS { option value=(b) selected[b == window.bucket] { (b) } }
            }
            label for="group_by" { "Grouped by" }
            select #group_by name="group_by" {
                @for (g, name) in GROUPINGS { option value=(g) selected[g == window.group_by] { (name) } }
            }
            button type="submit" { "Show" }
            a href={ "/usage.csv?" (window.query(0)) } download { "Download CSV" }
        }
        (summary(&usage.totals, &window))
        section {
            h2 { "Cost" }
            (chart::stacked(&format!("Cost per {} by {}", window.bucket, grouping.to_lowercase()), &labels, &cost, dollars))
            h2 { "Tokens" }
            (chart::stacked(&format!("Tokens (input + output) per {} by {}", window.bucket, grouping.to_lowercase()), &labels, &tokens, |v| count(v as i64)))
            (chart::legend(&cost))
        }
        section {
            h2 { "By " (grouping.to_lowercase()) }
            table {
                caption { (groups.len()) " " (grouping.to_lowercase()) "s with usage in this period" }
                thead { tr {
                    th { (grouping) } th.num { "Requests" } th.num { "Errors" }
                    th.num { "Input tokens" } th.num { "Output tokens" } th.num { "Cost" } th.num { "Share" }
                } }
                tbody {
                    @for g in groups.iter().skip(page * PAGE).take(PAGE) {
                        tr {
                            td { (group_cell(&window, g)) }
                            td.num { (count(g.totals.requests)) }
                            td.num { (count(g.totals.errors)) }
                            td.num { (count(g.totals.input_tokens)) }
                            td.num { (count(g.totals.output_tokens)) }
                            td.num { (micros(g.totals.cost_micros)) }
                            td.num { (share(g.totals.cost_micros, usage.totals.cost_micros)) }
                        }
                    }
                }
            }
            @if pages > 1 {
                nav aria-label="Pages" {
                    @for p in 0..pages {
                        @if p == page { span aria-current="page" { (p + 1) } " " }
                        @else { a href={ "/usage?" (window.query(p)) } { (p + 1) } " " }
                    }
                }
            }
        }
    };
    layout::page(&me, "Usage", "/usage", body).into_response()
}

/// `GET /usage.csv`: one row per bucket and group (every group), in the
/// format `keyward usage --csv` writes.
pub async fn csv(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Query(view): Query<View>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let window = Window::of(&view, now_ms());
    let usage = match web
        .api
        .get(&visitor, &window.api_path(true, None))
        .await
        .parse::<Usage>()
    {
        Ok(u) => u,
        Err(r) => return refused(&me, r, "/usage"),
    };
    let lead = ["start", "start_ms", window.group_by, "name"];
    let header: Vec<&str> = lead.iter().chain(&usage_csv::COUNTS).copied().collect();
    let mut out = usage_csv::line(&header);
    for s in usage.series.iter().flatten() {
        for b in &s.buckets {
            let mut cells = vec![
                usage_csv::iso_time(b.start),
                b.start.to_string(),
                s.group.clone(),
                s.name.clone().unwrap_or_default(),
            ];
            cells.extend(usage_csv::counts(&b.totals));
            out.push_str(&usage_csv::line(&cells));
        }
    }
    let file = format!(
        "attachment; filename=\"keyward-usage-{}-{}.csv\"",
        &layout::time(window.from)[..10],
        &layout::time(window.to - 1)[..10]
    );
    let mut response = out.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&file) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

/// The period's totals, in words.
fn summary(t: &UsageTotals, window: &Window) -> Markup {
    html! {
        dl.summary {
            dt { "Period" } dd { (layout::time(window.from)) " – " (layout::time(window.to)) " UTC" }
            dt { "Cost" } dd { (micros(t.cost_micros)) }
            dt { "Requests" } dd { (count(t.requests)) " (" (count(t.errors)) " errors)" }
            dt { "Tokens" } dd { (count(t.input_tokens)) " in (" (count(t.cached_input_tokens)) " cached), " (count(t.output_tokens)) " out" }
            @if t.incomplete > 0 {
                dt { "Estimated" } dd { (count(t.incomplete)) " requests whose usage the upstream never reported (streams cut off), charged from what the gateway saw" }
            }
        }
    }
}

/// The chart's series, cost (dollars) and tokens, one value per bucket.
fn chart_series(window: &Window, usage: &Usage) -> (Vec<Series>, Vec<Series>) {
    let mut cost = Vec::new();
    let mut tokens = Vec::new();
    for s in usage.series.iter().flatten() {
        let mut c = vec![0.0; window.starts.len()];
        let mut t = vec![0.0; window.starts.len()];
        for b in &s.buckets {
            // Buckets come oldest first, like `starts`.
            if let Ok(i) = window.starts.binary_search(&b.start) {
                c[i] = b.totals.cost_micros as f64 / 1e6;
                t[i] = (b.totals.input_tokens + b.totals.output_tokens) as f64;
            }
        }
        let name = display_name(&s.group, s.name.as_deref());
        cost.push(Series {
            name: name.clone(),
            values: c,
        });
        tokens.push(Series { name, values: t });
    }
    (cost, tokens)
}

/// A group as people read it: a key's or project's name, a model, a tag.
fn display_name(group: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => n.to_owned(),
        None if group.is_empty() => "(no model)".to_owned(),
        None => group.to_owned(),
    }
}

/// The table's first cell: keys link to their page.
fn group_cell(window: &Window, g: &UsageGroup) -> Markup {
    let name = display_name(&g.group, g.name.as_deref());
    html! {
        @if window.group_by == "key" {
            a href={ "/keys/" (g.group) } { (name) }
        } @else {
            (name)
        }
    }
}

/// Dollars with enough digits for small amounts (to the micro-dollar).
fn dollars(v: f64) -> String {
    if v > 0.0 && v < 0.01 {
        let digits = format!("{v:.6}");
        format!("${}", digits.trim_end_matches('0'))
    } else {
        format!("${v:.2}")
    }
}

/// Micro-dollars as [`dollars`].
fn micros(m: i64) -> String {
    dollars(m as f64 / 1e6)
}

/// A count with thousands separators.
fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// `part` as a percentage of `whole`.
fn share(part: i64, whole: i64) -> String {
    if whole <= 0 {
        "—".to_owned()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07T10:30:00Z.
    const NOW: i64 = 1_796_639_400_000;

    fn view(range: &str, bucket: &str) -> View {
        View {
            range: range.into(),
            bucket: bucket.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_default_is_thirty_whole_days_by_day_grouped_by_key() {
        let w = Window::of(&View::default(), NOW);
        assert_eq!((w.range, w.bucket, w.group_by), ("30d", "day", "key"));
        assert_eq!(w.to % DAY_MS, 0);
        assert!(w.to > NOW && w.to - NOW <= DAY_MS);
        assert_eq!(w.to - w.from, 30 * DAY_MS);
        assert_eq!(w.starts.len(), 30);
        assert_eq!(w.starts[0], w.from);
        assert_eq!(
            w.api_path(true, Some(8)),
            format!(
                "/api/v1/usage?from={}&to={}&group_by=key&bucket=day&top=8",
                w.from, w.to
            )
        );
    }

    #[test]
    fn the_last_day_is_twenty_four_hourly_buckets_ending_after_now() {
        let w = Window::of(&view("24h", ""), NOW);
        assert_eq!(w.bucket, "hour");
        assert_eq!(w.starts.len(), 24);
        assert!(w.to > NOW && w.to - NOW <= HOUR_MS);
        assert_eq!(w.label(w.starts[0]), "11:00");
    }

    #[test]
    fn twelve_months_are_twelve_calendar_months() {
        let w = Window::of(&view("12m", ""), NOW);
        assert_eq!(w.bucket, "month");
        let labels: Vec<String> = w.starts.iter().map(|s| w.label(*s)).collect();
        assert_eq!(labels.first().map(String::as_str), Some("2026-01"));
        assert_eq!(labels.last().map(String::as_str), Some("2026-12"));
        assert_eq!(labels.len(), 12);
    }

    #[test]
    fn buckets_that_would_draw_too_many_or_too_few_bars_fall_back() {
        assert_eq!(Window::of(&view("90d", "hour"), NOW).bucket, "day");
        assert_eq!(Window::of(&view("24h", "month"), NOW).bucket, "hour");
        assert_eq!(Window::of(&view("7d", "hour"), NOW).starts.len(), 168);
        assert_eq!(Window::of(&view("90d", "month"), NOW).bucket, "month");
        let odd = View {
            range: "1y';drop".into(),
            group_by: "<script>".into(),
            ..Default::default()
        };
        let w = Window::of(&odd, NOW);
        assert_eq!((w.range, w.group_by), ("30d", "key"));
    }

    #[test]
    fn counts_and_amounts_read_as_people_write_them() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(-4_096), "-4,096");
        assert_eq!(dollars(0.0003), "$0.0003");
        assert_eq!(dollars(0.000012), "$0.000012");
        assert_eq!(micros(2_500_000), "$2.50");
        assert_eq!(dollars(12.345), "$12.35");
        assert_eq!(share(1, 4), "25.0%");
        assert_eq!(share(1, 0), "—");
    }
}
