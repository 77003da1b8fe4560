//! The frame every page shares (navigation by role, the stylesheet and the
//! script) and the headers every answer carries.

use crate::session::Me;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use keyward_core::Role;
use maud::{html, Markup, DOCTYPE};

/// No inline script or style anywhere, no other origin, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Sets the security headers on every dashboard answer; pages are never
/// cached (a new key's secret must not stay in the browser's cache or history),
/// assets keep the short cache they set.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The sections of the navigation, with the least role that sees each.
const SECTIONS: [(&str, &str, Role); 9] = [
    ("/", "Overview", Role::Viewer),
    ("/keys", "Keys", Role::Viewer),
    ("/usage", "Usage", Role::Viewer),
    ("/budgets", "Budgets", Role::Viewer),
    ("/leaks", "Leaks", Role::Viewer),
    ("/activity", "Activity", Role::Viewer),
    ("/members", "Members", Role::Admin),
    ("/settings", "Webhooks & email", Role::Admin),
    ("/security", "Security", Role::Viewer),
];

/// A page for a signed-in user; `active` is its section's path.
pub fn page(me: &Me, title: &str, active: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/" { "keyward" }
                    nav aria-label="Sections" {
                        ul {
                            @for (path, name, role) in SECTIONS {
                                @if me.can(role) {
                                    li {
                                        @if path == active {
                                            a href=(path) aria-current="page" { (name) }
                                        } @else {
                                            a href=(path) { (name) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span { (me.email) " · " (me.org.as_deref().unwrap_or("")) " · " (me.role.as_str()) }
                        form method="post" action="/sign-out" {
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page for someone not signed in (sign-in, reset).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main id="main" {
                    p.brand { "keyward" }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · keyward" }
            // No favicon request (and no 404 in the console).
            link rel="icon" href="data:,";
            link rel="stylesheet" href="/assets/app.css";
            script src="/assets/app.js" defer {}
        }
    }
}

/// A message box: an error (`role=alert`) or a notice.
pub fn message(kind: Message, text: &str) -> Markup {
    match kind {
        Message::Error => html! { p.error role="alert" { (text) } },
        Message::Notice => html! { p.notice role="status" { (text) } },
    }
}

/// What a message is.
#[derive(Clone, Copy, Debug)]
pub enum Message {
    /// Something was refused.
    Error,
    /// Something was done.
    Notice,
}

/// A time in Unix milliseconds as UTC text (`2026-12-05 14:03`).
pub fn time(ms: i64) -> String {
    let secs = ms.div_euclid(1_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = keyward_core::budget::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3_600,
        rem % 3_600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(time(0), "1970-01-01 00:00");
        assert_eq!(time(1_796_514_883_398), "2026-12-05 23:54");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00");
    }
}
