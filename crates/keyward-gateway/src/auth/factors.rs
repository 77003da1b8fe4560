//! Which second factors a user has. A leaf of `auth`: signing in, the profile
//! and the reset links all ask, and none of them has to import another for it.

use crate::json_api::ApiError;
use crate::state::AppState;
use keyward_store::User;

/// The methods a sign-in may finish with, by the names the API uses
/// (`totp` and its `recovery_code`, `passkey`).
pub async fn sign_in_methods(state: &AppState, user: &User) -> Result<Vec<&'static str>, ApiError> {
    let mut methods = Vec::new();
    if user.has_totp() {
        methods.extend(["totp", "recovery_code"]);
    }
    if !state.store.list_passkeys(&user.id).await?.is_empty() {
        methods.push("passkey");
    }
    Ok(methods)
}

/// The user's second factors by kind (recovery codes are part of TOTP).
pub async fn second_factors(state: &AppState, user: &User) -> Result<Vec<&'static str>, ApiError> {
    let mut names = sign_in_methods(state, user).await?;
    names.retain(|m| *m != "recovery_code");
    Ok(names)
}
