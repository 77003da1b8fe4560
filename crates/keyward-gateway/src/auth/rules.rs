//! The calls into `keyward-auth`, in one place: the CPU-heavy ones (argon2id)
//! moved to the blocking pool, the others adapted to the API's errors.

use crate::json_api::ApiError;
use keyward_auth::password;

/// The most a password may be, in bytes, checked before anything else reads it.
pub const MAX_PASSWORD_BYTES: usize = password::MAX_PASSWORD_BYTES;

/// Checks `candidate` against `phc` (or a dummy hash when there is none, so
/// that a missing account costs the same time). `(ok, needs_rehash)`.
pub async fn verify_password(candidate: &str, phc: Option<&str>) -> (bool, bool) {
    let candidate = candidate.to_owned();
    let phc = phc.map(str::to_owned);
    tokio::task::spawn_blocking(move || match phc {
        Some(phc) => {
            let v = password::verify(&candidate, &phc);
            (v.ok, v.needs_rehash)
        }
        None => {
            password::verify_dummy(&candidate);
            (false, false)
        }
    })
    .await
    .unwrap_or((false, false))
}

/// Hashes a password with today's parameters.
pub async fn hash_password(new: &str) -> Result<String, ApiError> {
    let new = new.to_owned();
    tokio::task::spawn_blocking(move || password::hash(&new))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|e| {
            tracing::error!(error = %e, "password hashing failed");
            ApiError::Internal
        })
}

/// Refuses a new password the policy does not allow (length, blocklist,
/// context words), then, when configured, one the breach range API knows.
pub async fn check_new_password(
    state: &crate::state::AppState,
    new: &str,
    has_second_factor: bool,
    context: &[&str],
) -> Result<(), ApiError> {
    password::check_new_password(new, has_second_factor, context)
        .map_err(|r| ApiError::Password(r.code(), r.to_string()))?;
    if let Some(url) = &state.accounts.settings.breach_check_url {
        match password::breached(&state.accounts.http, url, new).await {
            Ok(true) => {
                return Err(ApiError::Password(
                    "password_blocklisted",
                    "this password appears in known data breaches: choose another".into(),
                ))
            }
            Ok(false) => {}
            // The check is an extra layer: when the service is down the
            // embedded blocklist has already run, so the change goes ahead.
            Err(e) => tracing::warn!(error = %e, "password breach check unavailable"),
        }
    }
    Ok(())
}
