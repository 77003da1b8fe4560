//! What a client is told about its rate limits: OpenAI's `x-ratelimit-*`
//! headers and the refusal that carries them. The limits themselves are in
//! `crate::limits::rate`; this sits below them so that the gateway's error can
//! carry a refusal without knowing how limits are kept.

/// What a client is told about one kind of allowance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Allowance {
    /// The limit.
    pub limit: u32,
    /// What is left now.
    pub remaining: u32,
    /// Milliseconds until the allowance is full again.
    pub reset_ms: i64,
}

/// The allowances reported in `x-ratelimit-*` headers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateHeaders {
    /// Requests.
    pub requests: Option<Allowance>,
    /// Tokens.
    pub tokens: Option<Allowance>,
}

/// A refusal.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimited {
    /// Which limit, in words.
    pub message: String,
    /// When to retry, ms.
    pub retry_after_ms: i64,
    /// Allowances to report.
    pub headers: RateHeaders,
}

/// Adds OpenAI's `x-ratelimit-*` headers.
pub fn write_headers(headers: &mut http::HeaderMap, allowances: &RateHeaders) {
    use http::HeaderName as N;
    // Constants, so no name is parsed per request.
    const NAMES: [(N, N, N); 2] = [
        (
            N::from_static("x-ratelimit-limit-requests"),
            N::from_static("x-ratelimit-remaining-requests"),
            N::from_static("x-ratelimit-reset-requests"),
        ),
        (
            N::from_static("x-ratelimit-limit-tokens"),
            N::from_static("x-ratelimit-remaining-tokens"),
            N::from_static("x-ratelimit-reset-tokens"),
        ),
    ];
    let count =
        3 * (usize::from(allowances.requests.is_some()) + usize::from(allowances.tokens.is_some()));
    if count == 0 {
        return;
    }
    // Room for all of them at once, rather than growing the map as they go in.
    headers.reserve(count);
    for ((limit, remaining, reset), a) in NAMES
        .into_iter()
        .zip([allowances.requests, allowances.tokens])
    {
        let Some(a) = a else { continue };
        headers.insert(limit, http::HeaderValue::from(a.limit));
        headers.insert(remaining, http::HeaderValue::from(a.remaining));
        if let Ok(v) = http::HeaderValue::try_from(format_reset(a.reset_ms)) {
            headers.insert(reset, v);
        }
    }
}

/// Formats a reset time as OpenAI does (`120ms`, `1.5s`, `6m0s`). Integer
/// arithmetic only: this runs for every rate-limited request.
pub fn format_reset(ms: i64) -> String {
    let ms = ms.max(0);
    let mut out = String::with_capacity(8);
    if ms < 1_000 {
        out.push_str(&ms.to_string());
        out.push_str("ms");
    } else if ms < 60_000 {
        out.push_str(&(ms / 1000).to_string());
        let frac = ms % 1000;
        if frac > 0 {
            let digits = format!("{frac:03}");
            out.push('.');
            out.push_str(digits.trim_end_matches('0'));
        }
        out.push('s');
    } else {
        out.push_str(&(ms / 60_000).to_string());
        out.push('m');
        out.push_str(&((ms % 60_000) / 1000).to_string());
        out.push('s');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_format_matches_openai() {
        assert_eq!(format_reset(120), "120ms");
        assert_eq!(format_reset(1_500), "1.5s");
        assert_eq!(format_reset(20_000), "20s");
        assert_eq!(format_reset(360_000), "6m0s");
        // The same text as the float formatting it replaced, everywhere.
        for ms in (0..120_000).step_by(7) {
            let old = if ms < 1_000 {
                format!("{ms}ms")
            } else if ms < 60_000 {
                let s = format!("{:.3}", ms as f64 / 1000.0);
                format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
            } else {
                format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
            };
            assert_eq!(format_reset(ms), old, "{ms} ms");
        }
    }
}
