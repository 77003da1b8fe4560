//! Amounts and limits given on the command line, and money as it is shown.
//!
//! Dollar amounts are read as exact micro-dollars (the unit of
//! `keyward_core::Micros`), never through a float, so what is stored is what
//! was typed; and shown with every decimal they have, so a $0.0001 budget does
//! not print as "$0.00". The flags that take these values also accept values
//! starting with a hyphen, so that `--budget-usd -5` is refused for being
//! negative rather than by clap as an unknown flag.

use keyward_core::Micros;

/// The largest amount the server accepts (`Micros::from_usd`): a billion dollars.
const MAX_USD: i64 = 1_000_000_000;

/// Micro-dollars per dollar.
const MICROS_PER_USD: i64 = 1_000_000;

/// A clap value parser: a dollar amount greater than zero, exactly in micro-dollars.
pub fn positive_usd(s: &str) -> Result<Micros, String> {
    let text = s.trim();
    let digits = text.strip_prefix('$').unwrap_or(text);
    if digits.starts_with('-') && digits[1..].starts_with(|c: char| c.is_ascii_digit() || c == '.')
    {
        return Err(format!("must be greater than 0 (got {s})"));
    }
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let plain = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !plain(whole) || !plain(frac) {
        return Err(format!(
            "must be an amount in US dollars such as 5 or 0.25 (got {s})"
        ));
    }
    // Decimals past the sixth must be zeros: a micro-dollar is the smallest amount.
    let (kept, rest) = frac.split_at(frac.len().min(6));
    if rest.bytes().any(|b| b != b'0') {
        return Err(format!(
            "has more decimals than a micro-dollar ($0.000001) can hold (got {s})"
        ));
    }
    let whole: i64 = match whole.trim_start_matches('0') {
        "" => 0,
        w if w.len() > 10 => return Err(format!("must be at most {MAX_USD} (got {s})")),
        w => w
            .parse()
            .map_err(|_| format!("is not an amount (got {s})"))?,
    };
    let frac: i64 = format!("{kept:0<6}")
        .parse()
        .map_err(|_| format!("is not an amount (got {s})"))?;
    let micros = whole * MICROS_PER_USD + frac;
    if micros == 0 {
        return Err(format!("must be greater than 0 (got {s})"));
    }
    if micros > MAX_USD * MICROS_PER_USD {
        return Err(format!("must be at most {MAX_USD} (got {s})"));
    }
    Ok(Micros(micros))
}

/// The amount as the API's `usd` field takes it. The server turns it back into
/// micro-dollars by `round(usd * 1e6)`, which gives the same integer for every
/// amount up to the server's maximum (checked in the tests below).
pub fn usd_field(m: Micros) -> f64 {
    m.0 as f64 / MICROS_PER_USD as f64
}

/// A clap value parser: a count or limit greater than zero.
pub fn positive_u32(s: &str) -> Result<u32, String> {
    let text = s.trim();
    match text.parse::<i64>() {
        Ok(n) if n <= 0 => Err(format!("must be greater than 0 (got {s})")),
        Ok(n) => u32::try_from(n).map_err(|_| format!("must be at most {} (got {s})", u32::MAX)),
        Err(_) => Err(format!("must be a whole number (got {s})")),
    }
}

/// Money as a person reads it: dollars with two decimals, or as many as the
/// amount has (up to six), from the exact micro-dollars.
pub fn usd(m: Micros) -> String {
    let sign = if m.0 < 0 { "-" } else { "" };
    let abs = m.0.unsigned_abs();
    let whole = abs / MICROS_PER_USD as u64;
    let frac = format!("{:06}", abs % MICROS_PER_USD as u64);
    let frac = frac.trim_end_matches('0');
    format!("{sign}${whole}.{frac:0<2}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_amounts_are_read_exactly() {
        for (text, micros) in [
            ("5", 5_000_000),
            ("$5", 5_000_000),
            ("0.0001", 100),
            (".5", 500_000),
            ("1.", 1_000_000),
            ("0.000001", 1),
            ("12.3400000", 12_340_000),
            ("999999999.999999", 999_999_999_999_999),
            ("1000000000", 1_000_000_000_000_000),
        ] {
            assert_eq!(positive_usd(text), Ok(Micros(micros)), "{text}");
        }
    }

    #[test]
    fn negative_zero_and_nonsense_amounts_say_what_is_wrong() {
        for (text, says) in [
            ("-5", "must be greater than 0 (got -5)"),
            ("-0.01", "must be greater than 0 (got -0.01)"),
            ("0", "must be greater than 0 (got 0)"),
            ("0.0000", "must be greater than 0 (got 0.0000)"),
            ("0.0000001", "more decimals than a micro-dollar"),
            ("1000000000.01", "at most 1000000000"),
            ("99999999999", "at most 1000000000"),
            ("1e3", "amount in US dollars"),
            ("five", "amount in US dollars"),
            ("", "amount in US dollars"),
            (".", "amount in US dollars"),
            ("--json", "amount in US dollars"),
            ("NaN", "amount in US dollars"),
        ] {
            let e = positive_usd(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn the_server_reads_back_the_same_micro_dollars() {
        for m in [
            1,
            100,
            123_456,
            5_000_000,
            999_999_999_999_999,
            1_000_000_000_000_000,
        ]
        .into_iter()
        .chain((0..10_000).map(|i| 987_654_321_000_000 + i * 7_919))
        {
            let sent = usd_field(Micros(m));
            assert_eq!(Micros::from_usd(sent), Some(Micros(m)), "{m}");
        }
    }

    #[test]
    fn limits_must_be_positive_whole_numbers() {
        assert_eq!(positive_u32("60"), Ok(60));
        assert_eq!(
            positive_u32("-5").unwrap_err(),
            "must be greater than 0 (got -5)"
        );
        assert_eq!(
            positive_u32("0").unwrap_err(),
            "must be greater than 0 (got 0)"
        );
        assert!(positive_u32("1.5").unwrap_err().contains("whole number"));
        assert!(positive_u32("5000000000").unwrap_err().contains("at most"));
    }

    #[test]
    fn money_shows_every_decimal_it_has() {
        assert_eq!(usd(Micros(100)), "$0.0001");
        assert_eq!(usd(Micros(1)), "$0.000001");
        assert_eq!(usd(Micros(5_000_000)), "$5.00");
        assert_eq!(usd(Micros(5_500_000)), "$5.50");
        assert_eq!(usd(Micros(1_234_567)), "$1.234567");
        assert_eq!(usd(Micros(0)), "$0.00");
        assert_eq!(usd(Micros(-2_500)), "-$0.0025");
    }
}
