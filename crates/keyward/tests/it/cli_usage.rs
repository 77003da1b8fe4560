//! `keyward usage` against a served gateway: month buckets, CSV, the
//! incomplete count.

use crate::support::*;
use serde_json::json;

/// A formula a spreadsheet would run if a CSV cell began with it; any client
/// can put it in usage by naming it as the model.
const FORMULA_MODEL: &str = "=HYPERLINK(\"http://evil.example\",\"x\")";

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn usage_by_month_and_as_csv_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    server.cli_json(&["projects", "create", "demo", "--json"]);
    let created = server.cli_json(&[
        "keys",
        "create",
        "--project",
        "demo",
        "--name",
        "k",
        "--json",
    ]);
    let key = created["key"].as_str().unwrap();
    for model in ["gpt-4o-mini", FORMULA_MODEL] {
        let (status, body) = chat(
            &server.url,
            key,
            json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert_eq!(status, 200, "{body}");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let month = keyward_core::Period::Month.start(now);

    let totals = server.cli_json(&["usage", "--json"]);
    assert_eq!(totals["requests"], 2, "{totals}");
    assert_eq!(totals["incomplete"], 0, "{totals}");
    let cost = totals["cost_micros"].as_i64().unwrap();
    assert!(cost > 0);

    // Totals: a header and one row, money in exact dollars.
    let csv = stdout(&server.cli(&["usage", "--csv"]));
    let want = format!(
        "requests,errors,input_tokens,cached_input_tokens,output_tokens,reasoning_tokens,cost_usd,incomplete\r\n\
         2,0,{},{},{},{},{}.{:06},0\r\n",
        totals["input_tokens"],
        totals["cached_input_tokens"],
        totals["output_tokens"],
        totals["reasoning_tokens"],
        cost / 1_000_000,
        cost % 1_000_000
    );
    assert_eq!(csv, want);

    // Month buckets: UTC calendar months, in JSON, CSV and the table.
    let by_month = server.cli_json(&["usage", "--bucket", "month", "--json"]);
    let buckets = by_month["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 1, "{by_month}");
    assert_eq!(buckets[0]["start"], month);
    assert_eq!(buckets[0]["requests"], 2);
    assert_eq!(buckets[0]["incomplete"], 0);
    let csv = stdout(&server.cli(&["usage", "--bucket", "month", "--csv"]));
    let lines: Vec<&str> = csv.split_terminator("\r\n").collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("start,start_ms,requests,"), "{csv}");
    let first_day = civil_date(month);
    assert!(
        lines[1].starts_with(&format!("{first_day}T00:00:00Z,{month},2,")),
        "{csv}"
    );
    let table = stdout(&server.cli(&["usage", "--bucket", "month"]));
    assert!(table.contains("INCOMPLETE"), "{table}");
    assert!(table.contains(&format!("{first_day} 00:00")), "{table}");

    // Groups: one row each; the client-chosen model name is quoted and cannot
    // run as a spreadsheet formula.
    let csv = stdout(&server.cli(&["usage", "--group-by", "model", "--csv"]));
    let lines: Vec<&str> = csv.split_terminator("\r\n").collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("group,requests,"), "{csv}");
    assert!(
        lines.iter().any(|l| l.starts_with("gpt-4o-mini,1,0,")),
        "{csv}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\",1,0,")),
        "{csv}"
    );
    assert!(!csv.contains("\n="), "no cell starts with a formula: {csv}");
}

/// `YYYY-MM-DD` of a UTC day start, from the civil calendar.
fn civil_date(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[test]
fn usage_flags_that_cannot_work_are_refused_with_exit_2() {
    for (args, says) in [
        (&["usage", "--bucket", "week"][..], "month"),
        (&["usage", "--csv", "--json"][..], "--json"),
        (
            &["usage", "--csv", "--bucket", "day", "--group-by", "model"][..],
            "--bucket or --group-by, not both",
        ),
    ] {
        let out = keyward()
            .args(args)
            .env("KEYWARD_URL", "http://127.0.0.1:9")
            .env("KEYWARD_ADMIN_KEY", "kwa_unused")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
