//! Usage as CSV (RFC 4180, CRLF line ends), the one format both `keyward usage
//! --csv` and the dashboard's export write: rows led by what identifies them,
//! then the same counts, cost in exact dollars. Cells a spreadsheet would run as
//! a formula are neutralised: a key's name, a tag or a model name is chosen by
//! whoever made it, and the file is opened by someone else.

use crate::usage::UsageTotals;

/// The columns every row ends with, in the order of [`counts`].
pub const COUNTS: [&str; 8] = [
    "requests",
    "errors",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "incomplete",
];

/// A row's counts, in the order of [`COUNTS`].
pub fn counts(t: &UsageTotals) -> [String; 8] {
    [
        t.requests.to_string(),
        t.errors.to_string(),
        t.input_tokens.to_string(),
        t.cached_input_tokens.to_string(),
        t.output_tokens.to_string(),
        t.reasoning_tokens.to_string(),
        usd(t.cost_micros),
        t.incomplete.to_string(),
    ]
}

/// Dollars to the micro-dollar (`12.340000`): integer arithmetic, so no
/// amount is rounded.
pub fn usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

/// A time (ms since the epoch) as RFC 3339 UTC to the second.
pub fn iso_time(ms: i64) -> String {
    let secs = ms.div_euclid(1_000);
    let (y, m, d) = keyward_core::budget::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// One line (ending in CRLF) of `cells`, each escaped with [`cell`].
pub fn line<S: AsRef<str>>(cells: &[S]) -> String {
    let mut out = cells
        .iter()
        .map(|c| cell(c.as_ref()))
        .collect::<Vec<_>>()
        .join(",");
    out.push_str("\r\n");
    out
}

/// A cell: prefixed with `'` when it starts as a formula would (`=`, `+`, `-`,
/// `@`, a tab or a carriage return, as OWASP advises against CSV injection)
/// unless it is a number, and quoted when it holds a comma, quote or line
/// break (quotes doubled).
pub fn cell(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) && text.parse::<f64>().is_err()
    {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_with_separators_are_quoted_and_quotes_doubled() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("two\nlines"), "\"two\nlines\"");
        assert_eq!(line(&["a", "b,c"]), "a,\"b,c\"\r\n");
    }

    #[test]
    fn a_name_cannot_become_a_spreadsheet_formula() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("+cmd"), "'+cmd");
        assert_eq!(cell("-1.5"), "-1.5", "negative numbers stay numbers");
    }

    #[test]
    fn dollars_are_exact_to_the_micro_dollar() {
        assert_eq!(usd(0), "0.000000");
        assert_eq!(usd(1), "0.000001");
        assert_eq!(usd(-1), "-0.000001");
        assert_eq!(usd(12_340_000), "12.340000");
        assert_eq!(usd(i64::MAX), "9223372036854.775807");
        assert_eq!(usd(i64::MIN), "-9223372036854.775808");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
        // 2024-01-01T00:00:00Z, plus 1 h 2 min 3 s.
        assert_eq!(
            iso_time(1_704_067_200_000 + 3_723_000),
            "2024-01-01T01:02:03Z"
        );
    }
}
