//! Security: the user's own account — changing the password, enrolling and
//! removing TOTP (QR code, then the ten recovery codes once), passkeys, and
//! sessions with "log out of all other devices" and "log out everywhere".
//! Every form posts here and is passed on to the `/auth` route that does it;
//! actions that need a recent sign-in come back through `/reauthenticate`.

use super::{redirect_with, refused};
use crate::api::{Answer, Visitor};
use crate::layout::{self, Message};
use crate::session::{Me, Viewer};
use crate::SharedWeb;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup, PreEscaped};
use qrcode::render::svg;
use qrcode::QrCode;
use serde::Deserialize;
use serde_json::{json, Value};

const BACK: &str = "/security";

/// What was just done, for the notice after a redirect. Only these fixed
/// words travel in the URL; the notice text is ours, never the query's.
#[derive(Deserialize, Default)]
pub struct Done {
    #[serde(default)]
    done: String,
}

fn notice(done: &str) -> Option<&'static str> {
    Some(match done {
        "password" => "Password changed. Every other session of your account has ended.",
        "totp-removed" => "The authenticator app is removed, with its recovery codes. Every other session has ended.",
        "passkey-removed" => "Passkey removed. Every other session has ended.",
        "session-ended" => "That session has ended: its next request is refused.",
        "others-ended" => "Every other session has ended: their next request is refused.",
        _ => return None,
    })
}

/// A session as `GET /auth/sessions` lists it.
#[derive(Deserialize)]
struct Session {
    id: String,
    current: bool,
    created_at: i64,
    last_seen_at: i64,
    ip: Option<String>,
    device: Option<String>,
}

/// A passkey as `GET /auth/passkeys` lists it (never its key material).
#[derive(Deserialize)]
struct Passkey {
    id: String,
    name: String,
    created_at: i64,
    last_used_at: Option<i64>,
}

#[derive(Deserialize)]
struct Listed<T> {
    data: Vec<T>,
}

/// `GET /security`.
pub async fn show(State(web): State<SharedWeb>, viewer: Viewer, Query(q): Query<Done>) -> Response {
    page(&web, &viewer, notice(&q.done).map(|n| (Message::Notice, n)))
        .await
        .into_response()
}

async fn page(web: &SharedWeb, viewer: &Viewer, message: Option<(Message, &str)>) -> Response {
    let Viewer { me, visitor } = viewer;
    let sessions = match web
        .api
        .get(visitor, "/auth/sessions")
        .await
        .parse::<Listed<Session>>()
    {
        Ok(l) => l.data,
        Err(r) => return refused(me, r, "/"),
    };
    let passkeys = match web
        .api
        .get(visitor, "/auth/passkeys")
        .await
        .parse::<Listed<Passkey>>()
    {
        Ok(l) => l.data,
        Err(r) => return refused(me, r, "/"),
    };
    let totp = me.second_factors.iter().any(|f| f == "totp");
    let body = html! {
        @if let Some((kind, text)) = message { (layout::message(kind, text)) }
        section {
            h2 { "Password" }
            p { "At least 15 characters (8 once a second factor is on). A password manager is welcome: paste works everywhere. Changing it ends every other session." }
            form.stack method="post" action="/security/password" {
                // For password managers: which account this password belongs to.
                input type="hidden" name="username" autocomplete="username" value=(me.email);
                label for="current_password" { "Current password" }
                input #current_password type="password" name="current_password" autocomplete="current-password" required;
                label for="new_password" { "New password" }
                input #new_password type="password" name="new_password" autocomplete="new-password" required minlength="8";
                button type="submit" { "Change password" }
            }
        }
        section {
            h2 { "Authenticator app (TOTP)" }
            @if totp {
                p { "On. Sign-ins ask for a six-digit code or one of your recovery codes." }
                form.inline method="post" action="/security/totp/remove" {
                    button.danger type="submit" data-confirm="Remove the authenticator app and its recovery codes? Every other session will end." { "Remove authenticator app" }
                }
            } @else {
                p { "Off. Adding one ends every other session, so a thief signed in with your password is thrown out." }
                form.inline method="post" action="/security/totp" {
                    button type="submit" { "Set up an authenticator app" }
                }
            }
        }
        section {
            h2 { "Passkeys and security keys" }
            @if passkeys.is_empty() {
                p { "None yet." }
            } @else {
                table {
                    thead { tr { th { "Name" } th { "Added" } th { "Last used" } th { "Action" } } }
                    tbody {
                        @for p in &passkeys {
                            tr {
                                td { (p.name) }
                                td { (layout::time(p.created_at)) }
                                td { (p.last_used_at.map(layout::time).unwrap_or_else(|| "never".into())) }
                                td {
                                    form.inline method="post" action={ "/security/passkeys/" (segment(&p.id)) "/remove" } {
                                        button.danger type="submit" aria-label={ "Remove passkey " (p.name) } data-confirm="Remove this passkey? Every other session will end." { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p.error #passkey-error role="alert" hidden {}
            p {
                label for="passkey_name" { "Name of the new passkey" }
                " "
                input #passkey_name name="passkey_name" maxlength="100" placeholder="e.g. laptop" autocomplete="off";
                " "
                button type="button" data-passkey-register data-name="#passkey_name" { "Add passkey" }
            }
            noscript { p { "Adding a passkey needs JavaScript (the browser's WebAuthn)." } }
        }
        section {
            h2 { "Sessions" }
            table {
                thead { tr { th { "Device" } th { "Address" } th { "Signed in" } th { "Last seen" } th { "Action" } } }
                tbody {
                    @for s in &sessions {
                        tr {
                            td { (s.device.as_deref().unwrap_or("Unknown device")) @if s.current { " " strong { "(this one)" } } }
                            td { (s.ip.as_deref().unwrap_or("-")) }
                            td { (layout::time(s.created_at)) }
                            td { (layout::time(s.last_seen_at)) }
                            td {
                                @if !s.current {
                                    form.inline method="post" action={ "/security/sessions/" (segment(&s.id)) "/end" } {
                                        button type="submit" aria-label={ "End the session of " (s.device.as_deref().unwrap_or("Unknown device")) } { "End" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form.inline method="post" action="/security/sessions/end-others" {
                button type="submit" { "Log out of all other devices" }
            }
            form.inline method="post" action="/security/sessions/end-all" {
                button.danger type="submit" { "Log out everywhere" }
            }
        }
    };
    layout::page(me, "Security", "/security", body).into_response()
}

/// An id as one path segment: ids are letters, digits, `-` and `_`
/// (base64url); anything else becomes `-`, which no object has.
pub(super) fn segment(id: &str) -> &str {
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    if ok {
        id
    } else {
        "-"
    }
}

/// The password form.
#[derive(Deserialize)]
pub struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// `POST /security/password`: `POST /auth/password`; a refusal
/// (`password_too_short`, a wrong current password…) is shown on the page.
pub async fn change_password(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Form(form): Form<PasswordChange>,
) -> Response {
    let body =
        json!({"current_password": form.current_password, "new_password": form.new_password});
    let answer = send(
        &web,
        &viewer.visitor,
        Method::POST,
        "/auth/password",
        Some(&body),
    )
    .await;
    if answer.ok() {
        return redirect_with("/security?done=password", answer.cookies);
    }
    let refusal = answer.refusal();
    if matches!(
        refusal.code.as_str(),
        "unauthorized" | "reauthentication_required"
    ) {
        return refused(&viewer.me, refusal, BACK);
    }
    let message = if refusal.code == "invalid_credentials" {
        "The current password is wrong.".to_owned()
    } else {
        refusal.message.clone()
    };
    let mut page = page(&web, &viewer, Some((Message::Error, &message))).await;
    if page.status() == StatusCode::OK {
        *page.status_mut() = refusal.status;
    }
    page
}

async fn send(
    web: &SharedWeb,
    visitor: &Visitor,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Answer {
    web.api.send(visitor, method, path, body).await
}

/// `POST /security/totp`: `POST /auth/totp`; shows the secret and its QR
/// code, and asks for the first code.
pub async fn start_totp(State(web): State<SharedWeb>, viewer: Viewer) -> Response {
    let answer = send(&web, &viewer.visitor, Method::POST, "/auth/totp", None).await;
    #[derive(Deserialize)]
    struct Started {
        secret: String,
        otpauth_uri: String,
    }
    let started = match answer.parse::<Started>() {
        Ok(s) => s,
        Err(r) => return refused(&viewer.me, r, BACK),
    };
    let qr = match qr_svg(&started.otpauth_uri) {
        Some(svg) => svg,
        None => {
            tracing::error!("the TOTP URI did not fit in a QR code");
            PreEscaped(String::new())
        }
    };
    let body = html! {
        ol {
            li { "Scan this code with your authenticator app, or type the secret below into it." }
            li { "Enter the six-digit code the app then shows." }
        }
        figure.qr { (qr) }
        p {
            label for="totp_secret" { "Secret" }
            " "
            input #totp_secret readonly value=(started.secret) size="40" autocomplete="off";
            " "
            button type="button" data-copy="#totp_secret" { "Copy" }
            span.copied role="status" aria-live="polite" {}
        }
        (confirm_form())
    };
    layout::page(&viewer.me, "Set up an authenticator app", "/security", body).into_response()
}

fn confirm_form() -> Markup {
    html! {
        form.stack method="post" action="/security/totp/confirm" {
            label for="code" { "Six-digit code from the app" }
            input #code name="code" autocomplete="one-time-code" inputmode="numeric" required;
            button type="submit" { "Turn on" }
        }
    }
}

/// The otpauth URI as a QR code: inline SVG with presentation attributes
/// only (the CSP forbids inline style), drawn on the server so the secret
/// never leaves the page for an image service or a script.
pub(crate) fn qr_svg(uri: &str) -> Option<PreEscaped<String>> {
    let code = QrCode::new(uri.as_bytes()).ok()?;
    let svg = code
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build();
    // Inline in HTML: no XML declaration; a name for screen readers.
    let start = svg.find("<svg")?;
    let svg = svg[start..].replacen(
        "<svg ",
        r#"<svg class="qr" role="img" aria-label="QR code for your authenticator app" "#,
        1,
    );
    Some(PreEscaped(svg))
}

/// The confirm form.
#[derive(Deserialize)]
pub struct TotpCode {
    code: String,
}

/// `POST /security/totp/confirm`: `POST /auth/totp/confirm`; the ten
/// recovery codes are shown this once.
pub async fn confirm_totp(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Form(form): Form<TotpCode>,
) -> Response {
    let body = json!({"code": form.code.trim()});
    let answer = send(
        &web,
        &viewer.visitor,
        Method::POST,
        "/auth/totp/confirm",
        Some(&body),
    )
    .await;
    #[derive(Deserialize)]
    struct Confirmed {
        recovery_codes: Vec<String>,
    }
    match answer.parse::<Confirmed>() {
        Ok(c) => {
            let codes = c.recovery_codes.join("\n");
            let body = html! {
                (layout::message(Message::Notice, "The authenticator app is on, and every other session has ended. Save these recovery codes now: you will not see them again. Each works once, in place of a code from the app."))
                label for="recovery_codes" { "Recovery codes" }
                textarea #recovery_codes readonly rows=(c.recovery_codes.len()) cols="24" autocomplete="off" { (codes) }
                p {
                    button type="button" data-copy="#recovery_codes" { "Copy" }
                    span.copied role="status" aria-live="polite" {}
                }
                p { a href="/security" { "Done" } }
            };
            layout::page(&viewer.me, "Recovery codes", "/security", body).into_response()
        }
        Err(r)
            if matches!(
                r.code.as_str(),
                "unauthorized" | "reauthentication_required"
            ) =>
        {
            refused(&viewer.me, r, BACK)
        }
        Err(r) => {
            let message = if r.code == "invalid_credentials" {
                "That code is not right: check the app's clock and try the next code."
            } else {
                &r.message
            };
            let body = html! {
                (layout::message(Message::Error, message))
                (confirm_form())
                form.inline method="post" action="/security/totp" {
                    button type="submit" { "Start again with a new secret" }
                }
            };
            (
                r.status,
                layout::page(&viewer.me, "Set up an authenticator app", "/security", body),
            )
                .into_response()
        }
    }
}

/// After an action: the notice on success, else the refusal.
fn after(me: &Me, answer: Answer, done: &str) -> Response {
    if answer.ok() {
        return redirect_with(&format!("/security?done={done}"), answer.cookies);
    }
    refused(me, answer.refusal(), BACK)
}

/// `POST /security/totp/remove`: `DELETE /auth/totp`.
pub async fn remove_totp(State(web): State<SharedWeb>, viewer: Viewer) -> Response {
    let answer = send(&web, &viewer.visitor, Method::DELETE, "/auth/totp", None).await;
    after(&viewer.me, answer, "totp-removed")
}

/// `POST /security/passkeys/{id}/remove`: `DELETE /auth/passkeys/{id}`.
pub async fn remove_passkey(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let path = format!("/auth/passkeys/{}", segment(&id));
    let answer = send(&web, &viewer.visitor, Method::DELETE, &path, None).await;
    after(&viewer.me, answer, "passkey-removed")
}

/// `POST /security/sessions/{id}/end`: `DELETE /auth/sessions/{id}`.
pub async fn end_session(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let path = format!("/auth/sessions/{}", segment(&id));
    let answer = send(&web, &viewer.visitor, Method::DELETE, &path, None).await;
    if answer.ok() && id == viewer.me.session {
        return redirect_with("/sign-in", answer.cookies);
    }
    after(&viewer.me, answer, "session-ended")
}

/// `POST /security/sessions/end-others`: "log out of all other devices".
pub async fn end_others(State(web): State<SharedWeb>, viewer: Viewer) -> Response {
    let answer = send(
        &web,
        &viewer.visitor,
        Method::POST,
        "/auth/sessions/end-others",
        None,
    )
    .await;
    after(&viewer.me, answer, "others-ended")
}

/// `POST /security/sessions/end-all`: "log out everywhere", this browser
/// too; it lands on the sign-in page with its cookie cleared.
pub async fn end_all(State(web): State<SharedWeb>, viewer: Viewer) -> Response {
    let answer = send(
        &web,
        &viewer.visitor,
        Method::POST,
        "/auth/sessions/end-all",
        None,
    )
    .await;
    if answer.ok() {
        return redirect_with("/sign-in", answer.cookies);
    }
    match answer.refusal() {
        r if r.code == "unauthorized" => Redirect::to("/sign-in").into_response(),
        r => refused(&viewer.me, r, BACK),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str =
        "otpauth://totp/keyward:a%40example.com?secret=JBSWY3DPEHPK3PXP&issuer=keyward";

    #[test]
    fn the_qr_code_is_inline_svg_without_style_for_the_csp() {
        let svg = qr_svg(URI).expect("fits").into_string();
        assert!(svg.starts_with("<svg "), "{}", &svg[..40]);
        assert!(svg.ends_with("</svg>"));
        assert!(!svg.contains("<?xml"));
        for inline in ["style=", "<style", "<script", "href=", "<image"] {
            assert!(!svg.contains(inline), "{inline} in the QR code");
        }
        assert!(svg.contains(r#"aria-label="QR code"#));
    }

    #[test]
    fn the_qr_code_draws_the_modules_of_the_uri() {
        // One square per dark module of the URI's own QR code: the picture
        // is this URI's code, not a placeholder or another string's.
        let svg = qr_svg(URI).expect("fits").into_string();
        let dark = QrCode::new(URI.as_bytes())
            .expect("fits")
            .to_colors()
            .into_iter()
            .filter(|c| *c == qrcode::Color::Dark)
            .count();
        assert_eq!(svg.matches('M').count(), dark);
        let other = URI.replace("JBSWY3DPEHPK3PXP", "KRSXG5CTMVRXEZLU");
        assert_ne!(qr_svg(&other).expect("fits").into_string(), svg);
    }

    #[test]
    fn ids_in_paths_cannot_climb_or_add_a_query() {
        for bad in ["../users", "a/b", "x?y=1", "", "a%2fb", "a b"] {
            assert_eq!(segment(bad), "-", "{bad}");
        }
        assert_eq!(segment("AbC-_09"), "AbC-_09");
    }

    #[test]
    fn notices_come_from_a_fixed_list() {
        assert!(notice("password").is_some());
        assert!(notice("<script>").is_none());
    }
}
