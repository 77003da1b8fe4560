//! Finding the client's key in a request.

use axum::http::HeaderMap;

/// Headers a client may carry its key in. All are removed before forwarding.
pub const KEY_HEADERS: [&str; 3] = ["authorization", "api-key", "x-api-key"];

/// The key a client presented: `Authorization: Bearer KEY`, `api-key: KEY` or
/// `x-api-key: KEY`, in that order. `None` when none holds a non-empty value.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        let token = v
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
            .map(|_| v[7..].trim());
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            return Some(t);
        }
    }
    ["api-key", "x-api-key"]
        .iter()
        .filter_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .find(|t| !t.is_empty())
}

/// Query parameter names that carry credentials in some API or SDK, compared
/// after percent-decoding, case-insensitively, with `-` read as `_`.
const KEY_PARAMS: [&str; 9] = [
    "key",
    "api_key",
    "apikey",
    "x_api_key",
    "access_token",
    "token",
    "auth",
    "authorization",
    "bearer",
];

/// The query to forward: `query` without the parameters that carry or may carry
/// a credential. `None` when nothing is removed (the query is forwarded as is,
/// without a copy); `Some("")` when nothing is left.
///
/// The gateway never reads a key from the query string, but a client may put
/// one there anyway (some SDKs do for other APIs), and the request line would
/// then carry it to the upstream and into its logs. Decision: such parameters
/// are stripped, not refused, so a careless client keeps working. A parameter
/// is removed when its name is one of [`KEY_PARAMS`], or its name or value holds
/// text shaped like a keyward key (`<stem>k_`, `<stem>e_`, `<stem>a_`), after
/// percent-decoding. `&` and `;` both separate parameters here, as some servers
/// read either.
///
/// Runs only for requests with a query string (inference calls have none).
pub fn forwardable_query(query: &str, stem: &str) -> Option<String> {
    let is_credential = |param: &str| {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let name = percent_decode(name);
        let named = KEY_PARAMS.iter().any(|k| {
            name.len() == k.len()
                && name
                    .iter()
                    .zip(k.bytes())
                    .all(|(&a, b)| a.to_ascii_lowercase() == b || (a == b'-' && b == b'_'))
        });
        named || holds_key(&name, stem) || holds_key(&percent_decode(value), stem)
    };
    let params = || query.split(['&', ';']);
    if !params().any(is_credential) {
        return None;
    }
    let kept: Vec<&str> = params()
        .filter(|p| !p.is_empty() && !is_credential(p))
        .collect();
    Some(kept.join("&"))
}

/// Does `text` hold a keyward key prefix of this deployment?
fn holds_key(text: &[u8], stem: &str) -> bool {
    text.iter().enumerate().any(|(i, &b)| {
        b == b'_' && crate::request::path::key_prefix_ends_at(text, i, stem.as_bytes())
    })
}

/// Percent-decodes `s` (`+` as a space), copying only when it has an escape.
fn percent_decode(s: &str) -> std::borrow::Cow<'_, [u8]> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return std::borrow::Cow::Borrowed(s.as_bytes());
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', h, l]) => hex(*h).zip(hex(*l)).map(|(h, l)| (h << 4) | l),
            _ => None,
        };
        match (bytes[i], escaped) {
            (_, Some(d)) => {
                out.push(d);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_stripped_from_the_query() {
        let key = "kwk_0123456789abcdefABCDEF0123456789xyzXYZ";
        assert_eq!(forwardable_query("limit=10&after=file-1", "kw"), None);
        assert_eq!(forwardable_query("", "kw"), None);
        for query in [
            format!("api_key={key}"),
            format!("API-KEY={key}"),
            format!("api%5Fkey={key}"),
            "key=sk-anything".to_owned(),
            "access_token=x".to_owned(),
            format!("q={key}"),
            "q=%6Bwk_abc".to_owned(),
            key.to_owned(),
        ] {
            assert_eq!(
                forwardable_query(&query, "kw").as_deref(),
                Some(""),
                "{query}"
            );
        }
        assert_eq!(
            forwardable_query(&format!("limit=2&x-api-key={key};after=a"), "kw").as_deref(),
            Some("limit=2&after=a")
        );
        assert_eq!(
            forwardable_query("q=acmee_x&limit=1", "acme").as_deref(),
            Some("limit=1")
        );
        assert_eq!(forwardable_query("q=kwk_x", "acme"), None);
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn finds_the_key_in_each_header() {
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer kwk_x")])),
            Some("kwk_x")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "bearer  kwk_x ")])),
            Some("kwk_x")
        );
        assert_eq!(
            presented_key(&headers(&[("api-key", "kwk_y")])),
            Some("kwk_y")
        );
        assert_eq!(
            presented_key(&headers(&[("x-api-key", "kwk_z")])),
            Some("kwk_z")
        );
        assert_eq!(
            presented_key(&headers(&[
                ("authorization", "Basic abc"),
                ("x-api-key", "kwk_z")
            ])),
            Some("kwk_z")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer ")])),
            None
        );
        assert_eq!(presented_key(&headers(&[])), None);
    }
}
