//! Durations as people write them: `90s`, `10m`, `24h`, `30d`, `2w`, or `0`.

/// Parses a duration into milliseconds. A bare `0` is allowed (no grace, say);
/// other values need a unit so that `10` is never silently seconds or minutes.
pub fn parse_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(0);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {s:?} needs a unit: s, m, h, d or w (e.g. 24h)"))?;
    let (num, unit) = s.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} must start with a whole number (e.g. 30d)"))?;
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => {
            return Err(format!(
                "duration {s:?} has an unknown unit {unit:?}: use s, m, h, d or w"
            ))
        }
    };
    n.checked_mul(unit_ms)
        .filter(|&ms| ms <= 100 * 365 * 86_400_000)
        .ok_or_else(|| format!("duration {s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::parse_ms;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(parse_ms("90s"), Ok(90_000));
        assert_eq!(parse_ms("10m"), Ok(600_000));
        assert_eq!(parse_ms("24h"), Ok(86_400_000));
        assert_eq!(parse_ms("2w"), Ok(1_209_600_000));
        assert_eq!(parse_ms("0"), Ok(0));
        for bad in ["", "10", "h", "-5m", "5x", "1.5h", "99999999999999w"] {
            assert!(parse_ms(bad).is_err(), "{bad} should be refused");
        }
    }
}
