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

#[cfg(test)]
mod tests {
    use super::*;

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
