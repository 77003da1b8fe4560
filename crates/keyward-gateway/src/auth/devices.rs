//! New-device alerts. A device is recognised by a long-lived random cookie;
//! without it (cleared cookies, another browser), by the pair of its user
//! agent and network prefix (/24 for IPv4, /48 for IPv6). A sign-in from
//! neither, for a user who has signed in before, is a new device: the audit
//! log records it, a signed webhook `user.new_device` goes out through the
//! notifier, and the user gets an email with a "this wasn't me" link.

use super::session::{self, Origin};
use crate::json_api::ApiError;
use crate::notify::Event;
use crate::state::AppState;
use axum::http::{HeaderMap, HeaderValue};
use keyward_core::EventId;
use keyward_store::User;
use serde_json::json;
use std::net::IpAddr;

/// A device cookie lives a year.
const DEVICE_COOKIE_MAX_AGE_S: i64 = 365 * 24 * 3_600;

/// The network prefix an address belongs to, for device recognition.
pub fn network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

/// Records the sign-in's device; alerts when it is new. Returns the device
/// cookie to set when the browser had none.
pub async fn seen(
    state: &AppState,
    user: &User,
    origin: &Origin,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, ApiError> {
    let now = state.clock.now_ms();
    let net = network(origin.ip);
    let ua = origin.user_agent.as_deref().unwrap_or("");
    let cookies = &state.accounts.cookies;
    let (device_secret, set_cookie) = match session::cookie(headers, cookies.device) {
        Some(v) if v.len() == keyward_auth::token::SECRET_HEX_LEN => (v.to_owned(), None),
        _ => {
            let fresh = keyward_auth::token::generate();
            let cookie = cookies.set(cookies.device, &fresh, DEVICE_COOKIE_MAX_AGE_S);
            (fresh, Some(cookie))
        }
    };
    let by_cookie = keyward_auth::token::digest(&format!("cookie\0{device_secret}"));
    let by_shape = keyward_auth::token::digest(&format!("shape\0{ua}\0{net}"));
    let store = &state.store;
    // The first sign-in ever is from a new device by definition: no alert.
    let first_ever = !store.has_devices(&user.id).await?;
    let new_cookie = store
        .remember_device(&user.id, &by_cookie, Some(ua), Some(&net), now)
        .await?;
    let new_shape = store
        .remember_device(&user.id, &by_shape, Some(ua), Some(&net), now)
        .await?;
    if new_cookie && new_shape && !first_ever {
        alert(state, user, origin, &net).await;
        let what = format!(
            "{} from {net}",
            origin
                .user_agent
                .as_deref()
                .map_or("an unknown browser".into(), super::profile::device_name)
        );
        super::links::send_not_me(state, user, headers, &what).await?;
    }
    Ok(set_cookie)
}

async fn alert(state: &AppState, user: &User, origin: &Origin, net: &str) {
    let detail = json!({"user_id": user.id, "email": user.email, "network": net});
    super::events::record(
        state,
        Some(user),
        user.id.as_str(),
        "user.new_device",
        origin,
        detail.clone(),
    )
    .await;
    let mut data = detail;
    data["ip"] = origin.ip_text().into();
    data["user_agent"] = origin.user_agent.clone().into();
    let event = Event {
        id: EventId::generate(),
        event_type: "user.new_device".into(),
        created_at: state.clock.now_ms(),
        org_id: Some(user.org_id.clone()),
        project_id: None,
        summary: format!("New sign-in to keyward for {} from {net}", user.email),
        data,
    };
    if let Err(e) = state.leaks.notifier.publish(&event).await {
        tracing::error!(error = %e, "could not queue the new-device alert");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_prefixes() {
        assert_eq!(network("203.0.113.77".parse().unwrap()), "203.0.113.0/24");
        assert_eq!(
            network("2001:db8:1:2::9".parse().unwrap()),
            "2001:db8:1::/48"
        );
    }
}
