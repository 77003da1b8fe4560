//! Webhook deliveries: a JSON POST signed with the webhook's secret.
//!
//! `Keyward-Signature: t=<unix ms>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`.
//! A receiver recomputes the HMAC over the timestamp it was given and the raw
//! body, compares in constant time, and refuses timestamps too far from its
//! clock (replay of an old delivery). `Keyward-Event-Id` is the same on every
//! attempt of one event: receivers deduplicate on it.

use super::Failure;
use hmac::{Hmac, Mac};
use keyward_core::Secret;
use keyward_store::{Delivery, Webhook};
use sha2::Sha256;

/// Signature header.
pub const SIGNATURE_HEADER: &str = "keyward-signature";
/// Event id header (stable across retries).
pub const EVENT_ID_HEADER: &str = "keyward-event-id";
/// Event type header.
pub const EVENT_TYPE_HEADER: &str = "keyward-event-type";
/// Delivery id header.
pub const DELIVERY_ID_HEADER: &str = "keyward-delivery-id";

/// The signature header's value for `body` sent at `timestamp_ms`.
pub fn signature(secret: &str, timestamp_ms: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp_ms},v1={}",
        hex::encode(mac(secret, timestamp_ms, body))
    )
}

fn mac(secret: &str, timestamp_ms: i64, body: &[u8]) -> Vec<u8> {
    let mut m =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    m.update(timestamp_ms.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

/// Checks a signature header against `body` (for receivers written in Rust, and
/// for tests): the timestamp it names and an HMAC that matches in constant time.
pub fn verify(secret: &str, header: &str, body: &[u8]) -> Option<i64> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (t, v1) = (t?, v1?);
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.verify_slice(&v1).ok().map(|()| t)
}

/// One attempt, signed with `secret` (the hook's, opened). `Ok` with the status
/// on 2xx; anything else is a failure to retry.
pub async fn send(
    http: &reqwest::Client,
    hook: &Webhook,
    secret: &Secret,
    d: &Delivery,
    now_ms: i64,
) -> Result<Option<u16>, Failure> {
    let body = serde_json::to_vec(&d.payload).map_err(|e| Failure {
        status: None,
        reason: format!("encoding the payload: {e}"),
    })?;
    let sig = signature(secret.expose(), now_ms, &body);
    let response = http
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("user-agent", "keyward-webhooks")
        .header(SIGNATURE_HEADER, sig)
        .header(EVENT_ID_HEADER, d.event_id.as_str())
        .header(EVENT_TYPE_HEADER, &d.event_type)
        .header(DELIVERY_ID_HEADER, d.id.as_str())
        .body(body)
        .send()
        .await
        .map_err(|e| Failure {
            status: None,
            // Without the URL: it may carry a token in its query.
            reason: e.without_url().to_string(),
        })?;
    let status = response.status().as_u16();
    if response.status().is_success() {
        Ok(Some(status))
    } else {
        Err(Failure {
            status: Some(status),
            reason: format!("the receiver answered HTTP {status}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_secret_body_and_timestamp() {
        let h = signature("s3cret", 1_700, b"{\"a\":1}");
        assert_eq!(verify("s3cret", &h, b"{\"a\":1}"), Some(1_700));
        assert_eq!(verify("other", &h, b"{\"a\":1}"), None);
        assert_eq!(verify("s3cret", &h, b"{\"a\":2}"), None);
        let moved = h.replace("t=1700", "t=1701");
        assert_eq!(verify("s3cret", &moved, b"{\"a\":1}"), None);
    }
}
