//! Plain aligned tables for human output.

/// Renders rows under a header, columns padded to their widest cell.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM` UTC, or `-`.
pub fn time(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm), enough for display.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// `s` as one shell word, quoted only when it needs to be, for commands that
/// an error message suggests running.
pub fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@%+=,".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_shell_words_only_when_needed() {
        assert_eq!(shell_word("web"), "web");
        assert_eq!(shell_word("my app"), "'my app'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn aligns_columns() {
        let t = render(
            &["ID", "NAME"],
            &[
                vec!["key_1".into(), "a".into()],
                vec!["k".into(), "longer".into()],
            ],
        );
        assert_eq!(t, "ID     NAME\nkey_1  a\nk      longer\n");
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(time(Some(0)), "1970-01-01 00:00");
        assert_eq!(time(Some(1_795_716_903_123)), "2026-11-26 18:15");
        assert_eq!(time(None), "-");
    }
}
