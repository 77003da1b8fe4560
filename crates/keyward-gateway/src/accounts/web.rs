//! What the browser side of `/auth` and `/api` needs: the public origin, the
//! cross-site check for cookie-authenticated changes, and strict headers.

use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};
use axum::response::Response;

/// `scheme://host[:port]` of a URL, lowercased as browsers send `Origin`.
pub fn origin_of(url: &Uri) -> Option<String> {
    let scheme = url.scheme_str()?.to_ascii_lowercase();
    let authority = url.authority()?.as_str().to_ascii_lowercase();
    // A default port is left out of `Origin` by browsers.
    let authority = match (scheme.as_str(), authority.rsplit_once(':')) {
        ("https", Some((host, "443"))) | ("http", Some((host, "80"))) => host.to_owned(),
        _ => authority,
    };
    Some(format!("{scheme}://{authority}"))
}

/// Whether the URL's host is a loopback name or address (a first trial on
/// plain http is fine there).
pub fn is_loopback(url: &Uri) -> bool {
    match url.host() {
        Some("localhost") => true,
        Some(h) => h
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Whether a request may change state. Safe methods always may. Otherwise the
/// browser must say the request comes from our own origin: `Origin` equal to
/// the public URL's origin (or, without a configured public URL, to
/// `http(s)://` + the `Host` the request was sent to), or `Sec-Fetch-Site:
/// same-origin`. A request without either header is refused when it carries
/// a session cookie: a browser always sends `Origin` on a cross-origin
/// state-changing request, and our own pages are same-origin.
pub fn same_origin(method: &Method, headers: &HeaderMap, public_origin: Option<&str>) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"same-origin")
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let origin = origin.trim().to_ascii_lowercase();
    match public_origin {
        Some(public) => origin == public,
        None => {
            let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
                return false;
            };
            let host = host.trim().to_ascii_lowercase();
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }
    }
}

/// Whether a request without a session cookie (signing in) comes from another
/// site: refused only when the browser says so, since API clients send no
/// `Origin`. Stops login CSRF (signing a victim into the attacker's account).
pub fn declared_cross_site(headers: &HeaderMap, public_origin: Option<&str>) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    headers.get(header::ORIGIN).is_some() && !same_origin(&Method::POST, headers, public_origin)
}

/// Headers on every `/auth` and `/api` answer: nothing is cached (answers carry
/// secrets: a new key, a TOTP secret, recovery codes), framed, sniffed, or
/// leaks a referrer; JSON needs no script, style or source at all.
pub async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ));
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn origins_drop_default_ports_and_case() {
        let u: Uri = "HTTPS://Keys.Example.com:443/app".parse().unwrap();
        assert_eq!(origin_of(&u).unwrap(), "https://keys.example.com");
        let u: Uri = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!(origin_of(&u).unwrap(), "http://127.0.0.1:8080");
        assert!(is_loopback(&u));
        assert!(is_loopback(&"http://[::1]:9".parse().unwrap()));
        assert!(!is_loopback(&"http://example.com".parse().unwrap()));
    }

    #[test]
    fn cross_site_posts_are_refused_and_same_origin_ones_pass() {
        let public = Some("https://keys.example.com");
        let evil = headers(&[("origin", "https://evil.example")]);
        assert!(!same_origin(&Method::POST, &evil, public));
        assert!(same_origin(&Method::GET, &evil, public));
        let ours = headers(&[("origin", "https://keys.example.com")]);
        assert!(same_origin(&Method::DELETE, &ours, public));
        let fetch = headers(&[("sec-fetch-site", "same-origin")]);
        assert!(same_origin(&Method::POST, &fetch, public));
        let sibling = headers(&[
            ("sec-fetch-site", "same-site"),
            ("origin", "https://a.example.com"),
        ]);
        assert!(!same_origin(&Method::POST, &sibling, public));
        assert!(!same_origin(&Method::POST, &HeaderMap::new(), public));
        let by_host = headers(&[("origin", "http://127.0.0.1:9"), ("host", "127.0.0.1:9")]);
        assert!(same_origin(&Method::POST, &by_host, None));
        assert!(declared_cross_site(&evil, public));
        assert!(!declared_cross_site(&HeaderMap::new(), public));
    }
}
