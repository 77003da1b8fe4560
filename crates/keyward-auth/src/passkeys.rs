//! Passkeys and security keys (WebAuthn) as a second factor: the relying-party half of
//! the two ceremonies, registration and authentication.
//!
//! Why WebAuthn at all: a passkey signs the origin the browser saw, so a look-alike
//! phishing site cannot relay what the user's authenticator produced to keyward, unlike
//! a TOTP code. This module checks that origin, the RP id the authenticator signed for,
//! the challenge, the signature and the signature counter; it delegates the parsing and
//! the cryptography to `webauthn_rp` (MIT/Apache-2.0, pure Rust, no OpenSSL).
//!
//! Each ceremony has two halves, two HTTP requests apart: `start_*` returns the options
//! for the browser (`navigator.credentials.create` / `.get`, in the WebAuthn JSON form)
//! and a state the server keeps; `finish_*` takes that state back with the browser's
//! answer (`PublicKeyCredential.toJSON()`).
//!
//! **Why a serialisable state is safe here.** The state holds no secret: a random
//! 128-bit challenge, the expiry (five minutes), the user handle and the allowed
//! credential ids. What matters is its *integrity* and its *single use*, so the server
//! must keep it server-side (next to the session, never in a cookie or a hidden form
//! field the client could rewrite) and delete it when `finish_*` is called, whatever
//! the result: then an answer made for one challenge cannot be verified against
//! another, and no answer can be verified twice. Expiry uses the system clock since
//! the state can be finished on another server process.
//!
//! Storage stays with the caller: [`StoredPasskey`] is plain data, written back after
//! [`Passkeys::finish_authentication`] updates its counter and last use.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use webauthn_rp::bin::{Decode, Encode};
use webauthn_rp::request::auth::{AllowedCredentials, AuthenticationVerificationOptions};
use webauthn_rp::request::register::{
    Nickname, PublicKeyCredentialUserEntity, RegistrationVerificationOptions, UserHandle, Username,
};
use webauthn_rp::request::{AsciiDomain, Credentials, PublicKeyCredentialDescriptor, RpId};
use webauthn_rp::response::auth::error::AuthCeremonyErr;
use webauthn_rp::response::register::error::RegCeremonyErr;
use webauthn_rp::response::register::{CompressedPubKey, DynamicState, StaticState};
use webauthn_rp::response::{AuthTransports, CredentialId};
use webauthn_rp::{
    AuthenticatedCredential, NonDiscoverableAuthentication,
    NonDiscoverableAuthenticationServerState, NonDiscoverableCredentialRequestOptions,
    PublicKeyCredentialCreationOptions, Registration, RegistrationServerState,
};

/// Length of the WebAuthn user handle: SHA-256 of keyward's user id, so that it is the
/// same for every passkey of a user, has a fixed size whatever the id looks like, and
/// tells an authenticator (or whoever reads it) nothing about the account.
const USER_HANDLE_LEN: usize = 32;
type Handle = UserHandle<USER_HANDLE_LEN>;
/// A credential public key as decoded from storage (Ed25519, P-256, P-384, RSA).
type StoredKey = CompressedPubKey<[u8; 32], [u8; 32], [u8; 48], Vec<u8>>;

/// The relying party: who keyward is to authenticators and browsers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasskeyConfig {
    /// The RP id, a domain (`keyward.example.com`, or `localhost` for a first trial).
    /// Passkeys are bound to it: changing it makes every registered passkey unusable.
    pub rp_id: String,
    /// The one origin the browser must report (`https://keyward.example.com`), i.e. the
    /// public URL's origin. Answers made on any other origin are refused.
    pub rp_origin: String,
    /// The name authenticators show the user ("keyward").
    pub rp_name: String,
}

/// Why a passkey ceremony failed. [`PasskeyError::code`] is stable for API answers;
/// neither the code nor `Display` carries challenges, keys or signatures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasskeyError {
    /// The configuration is unusable (bad RP id, origin not on the RP id's domain).
    #[error("passkey configuration invalid: {0}")]
    Config(&'static str),
    /// The user name, display name or passkey name cannot be used.
    #[error("passkey name invalid: {0}")]
    InvalidName(&'static str),
    /// The browser's answer is malformed or fails verification (bad signature,
    /// attestation, flags or extensions).
    #[error("passkey response invalid")]
    Invalid,
    /// The answer was made for another challenge than the one in the state: a replay,
    /// or an answer to another ceremony.
    #[error("passkey response answers another challenge")]
    ChallengeMismatch,
    /// The answer was made on another origin or for another RP id (a phishing site).
    #[error("passkey response made for another origin")]
    OriginMismatch,
    /// The credential is not one of the user's registered passkeys.
    #[error("passkey credential unknown")]
    UnknownCredential,
    /// The credential is already registered (to this user or to the ceremony's exclusions).
    #[error("passkey already registered")]
    AlreadyRegistered,
    /// The signature counter did not increase: the authenticator may have been cloned.
    #[error("passkey signature counter went backwards (possibly a cloned authenticator)")]
    CounterRegression,
    /// The ceremony's five minutes are over.
    #[error("passkey ceremony expired")]
    Expired,
    /// The user has no passkey to authenticate with.
    #[error("no passkey registered")]
    NoPasskeys,
    /// A stored state or credential record cannot be decoded (storage corruption or a
    /// state from another ceremony kind).
    #[error("stored passkey data unreadable: {0}")]
    Storage(&'static str),
}

impl PasskeyError {
    /// Stable machine-readable code for API answers and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Config(_) => "passkey_config_invalid",
            Self::InvalidName(_) => "passkey_name_invalid",
            Self::Invalid => "passkey_invalid",
            Self::ChallengeMismatch => "passkey_challenge_mismatch",
            Self::OriginMismatch => "passkey_origin_mismatch",
            Self::UnknownCredential => "passkey_unknown_credential",
            Self::AlreadyRegistered => "passkey_already_registered",
            Self::CounterRegression => "passkey_counter_regression",
            Self::Expired => "passkey_expired",
            Self::NoPasskeys => "passkey_none_registered",
            Self::Storage(_) => "passkey_storage_invalid",
        }
    }
}

/// A registered passkey as the server stores it, one row per passkey.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPasskey {
    /// Credential id, base64url without padding; unique across all users.
    pub id: String,
    /// The user's name for it ("YubiKey 5", "MacBook").
    pub name: String,
    /// When it was registered, Unix milliseconds.
    pub created_at: i64,
    /// When it last signed in, Unix milliseconds.
    pub last_used_at: Option<i64>,
    /// The verification record (public key, user handle, counter, flags) as JSON; opaque
    /// to the caller, rewritten by [`Passkeys::finish_authentication`].
    pub data: String,
}

/// The verification record inside [`StoredPasskey::data`]: `webauthn_rp`'s own binary
/// encodings, base64url, so that nothing is re-derived by hand.
#[derive(Serialize, Deserialize)]
struct CredentialRecord {
    /// Format version, to change the encoding later without guessing.
    v: u8,
    user_handle: String,
    transports: u8,
    static_state: String,
    dynamic_state: String,
}

/// Registration ceremony state, kept server-side between the two requests (single use).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegistrationState {
    /// `webauthn_rp`'s encoded server state, base64url.
    server: String,
    /// Credential ids the user already has: the new one must not be among them.
    excluded: Vec<String>,
}

/// Authentication ceremony state, kept server-side between the two requests (single use).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthenticationState {
    /// `webauthn_rp`'s encoded server state, base64url.
    server: String,
}

/// The relying party's ceremonies for one deployment.
#[derive(Debug)]
pub struct Passkeys {
    config: PasskeyConfig,
    rp_id: RpId,
}

impl Passkeys {
    /// Checks the configuration: the RP id must be a domain and the origin must be
    /// `https://` (or `http://localhost`) on that domain or a subdomain of it, as the
    /// WebAuthn spec requires for browsers to accept the RP id at all.
    pub fn new(mut config: PasskeyConfig) -> Result<Passkeys, PasskeyError> {
        if let Some(stripped) = config.rp_origin.strip_suffix('/') {
            config.rp_origin = stripped.to_owned();
        }
        let rp_id = AsciiDomain::try_from(config.rp_id.clone())
            .map(RpId::Domain)
            .map_err(|_| PasskeyError::Config("rp_id is not a domain"))?;
        let (scheme, rest) = config
            .rp_origin
            .split_once("://")
            .ok_or(PasskeyError::Config("rp_origin is not an origin"))?;
        if rest.contains(['/', '?', '#', '@']) {
            return Err(PasskeyError::Config(
                "rp_origin has more than scheme, host and port",
            ));
        }
        let host = rest.rsplit_once(':').map_or(rest, |(host, _port)| host);
        let on_domain = host == config.rp_id || host.ends_with(&format!(".{}", config.rp_id));
        if !on_domain {
            return Err(PasskeyError::Config("rp_origin is not on the rp_id domain"));
        }
        let secure = scheme == "https" || (scheme == "http" && host == "localhost");
        if !secure {
            return Err(PasskeyError::Config(
                "rp_origin must be https (http only for localhost)",
            ));
        }
        if config.rp_name.trim().is_empty() {
            return Err(PasskeyError::Config("rp_name is empty"));
        }
        Ok(Passkeys { config, rp_id })
    }

    /// The configuration in force (origin without a trailing slash).
    pub fn config(&self) -> &PasskeyConfig {
        &self.config
    }

    /// Starts registering a new passkey for a signed-in (and recently re-authenticated)
    /// user. `existing` are the user's passkeys: the browser is told to exclude them, so
    /// one authenticator is not registered twice.
    ///
    /// Options follow `webauthn_rp`'s second-factor profile: user verification and
    /// discoverable credentials are not required, so plain security keys work too.
    pub fn start_registration(
        &self,
        user_id_bytes: &[u8],
        email: &str,
        display_name: &str,
        existing: &[StoredPasskey],
    ) -> Result<(serde_json::Value, RegistrationState), PasskeyError> {
        let handle = user_handle(user_id_bytes);
        let name = Username::try_from(email)
            .map_err(|_| PasskeyError::InvalidName("email cannot be a WebAuthn user name"))?;
        let display_name = match display_name.trim() {
            "" => None,
            shown => Some(
                Nickname::try_from(shown.to_owned())
                    .map_err(|_| PasskeyError::InvalidName("display name is not usable"))?,
            ),
        };
        let mut exclude = Vec::with_capacity(existing.len());
        let mut excluded = Vec::with_capacity(existing.len());
        for passkey in existing {
            let record = CredentialRecord::parse(&passkey.data)?;
            exclude.push(PublicKeyCredentialDescriptor {
                id: credential_id(&passkey.id)?,
                transports: record.transports()?,
            });
            excluded.push(passkey.id.clone());
        }
        let user = PublicKeyCredentialUserEntity {
            name,
            id: &handle,
            display_name,
        };
        let (server, client) =
            PublicKeyCredentialCreationOptions::second_factor(&self.rp_id, user, exclude)
                .start_ceremony()
                .map_err(|_| PasskeyError::Config("registration options rejected"))?;
        let mut options = serde_json::to_value(&client)
            .map_err(|_| PasskeyError::Config("registration options not serialisable"))?;
        // webauthn_rp names the RP after its id; authenticators show this name to the user.
        options["rp"]["name"] = serde_json::Value::String(self.config.rp_name.clone());
        let server = server
            .encode()
            .map_err(|_| PasskeyError::Storage("clock before 1970"))?;
        let state = RegistrationState {
            server: B64URL.encode(server),
            excluded,
        };
        Ok((options, state))
    }

    /// Verifies the browser's answer to [`Passkeys::start_registration`] and returns the
    /// passkey to store. The caller must still refuse a credential id that is already
    /// stored for any user (a unique index does it).
    pub fn finish_registration(
        &self,
        state: RegistrationState,
        response: &serde_json::Value,
        name: String,
        now_ms: i64,
    ) -> Result<StoredPasskey, PasskeyError> {
        let name = passkey_name(name)?;
        let server_bytes = decode_b64(&state.server, "registration state")?;
        let server = RegistrationServerState::<USER_HANDLE_LEN>::decode(server_bytes.as_slice())
            .map_err(|_| PasskeyError::Storage("registration state"))?;
        let raw = serde_json::to_vec(response).map_err(|_| PasskeyError::Invalid)?;
        let registration =
            Registration::from_json_relaxed(&raw).map_err(|_| PasskeyError::Invalid)?;
        let options = RegistrationVerificationOptions::<&str, &str> {
            allowed_origins: &[self.config.rp_origin.as_str()],
            ..RegistrationVerificationOptions::default()
        };
        let credential = server
            .verify(&self.rp_id, &registration, &options)
            .map_err(registration_error)?;
        let id = B64URL.encode(credential.id().as_ref());
        if state.excluded.contains(&id) {
            return Err(PasskeyError::AlreadyRegistered);
        }
        let infallible = |_| PasskeyError::Storage("encoding");
        let record = CredentialRecord {
            v: 1,
            user_handle: B64URL.encode(credential.user_id().encode().map_err(infallible)?),
            transports: credential.transports().encode().map_err(infallible)?,
            static_state: B64URL.encode(credential.static_state().encode().map_err(infallible)?),
            dynamic_state: B64URL.encode(credential.dynamic_state().encode().map_err(infallible)?),
        };
        Ok(StoredPasskey {
            id,
            name,
            created_at: now_ms,
            last_used_at: None,
            data: record.to_json()?,
        })
    }

    /// Starts signing in with one of `passkeys` (the user's), as the second factor after
    /// the password: the browser may only offer these credentials.
    pub fn start_authentication(
        &self,
        passkeys: &[StoredPasskey],
    ) -> Result<(serde_json::Value, AuthenticationState), PasskeyError> {
        if passkeys.is_empty() {
            return Err(PasskeyError::NoPasskeys);
        }
        let mut allowed = AllowedCredentials::with_capacity(passkeys.len());
        for passkey in passkeys {
            let record = CredentialRecord::parse(&passkey.data)?;
            let descriptor = PublicKeyCredentialDescriptor {
                id: credential_id(&passkey.id)?,
                transports: record.transports()?,
            };
            // A duplicate id would be refused by `push`; it cannot come from one user's rows.
            allowed.push(descriptor.into());
        }
        let (server, client) =
            NonDiscoverableCredentialRequestOptions::second_factor(&self.rp_id, allowed)
                .map_err(|_| PasskeyError::NoPasskeys)?
                .start_ceremony()
                .map_err(|_| PasskeyError::Config("authentication options rejected"))?;
        let options = serde_json::to_value(&client)
            .map_err(|_| PasskeyError::Config("authentication options not serialisable"))?;
        let server = server
            .encode()
            .map_err(|_| PasskeyError::Storage("authentication state"))?;
        Ok((
            options,
            AuthenticationState {
                server: B64URL.encode(server),
            },
        ))
    }

    /// Verifies the browser's answer to [`Passkeys::start_authentication`] against the
    /// user's passkeys; on success updates the used one's counter, flags and
    /// `last_used_at` in place (the caller writes it back) and returns its id.
    ///
    /// A signature counter that does not increase (when the authenticator keeps one) is
    /// refused as [`PasskeyError::CounterRegression`]: two copies of the key exist.
    pub fn finish_authentication(
        &self,
        state: AuthenticationState,
        response: &serde_json::Value,
        passkeys: &mut [StoredPasskey],
        now_ms: i64,
    ) -> Result<String, PasskeyError> {
        let server_bytes = decode_b64(&state.server, "authentication state")?;
        let server = NonDiscoverableAuthenticationServerState::decode(server_bytes.as_slice())
            .map_err(|_| PasskeyError::Storage("authentication state"))?;
        let raw = serde_json::to_vec(response).map_err(|_| PasskeyError::Invalid)?;
        let authentication =
            NonDiscoverableAuthentication::<USER_HANDLE_LEN>::from_json_relaxed(&raw)
                .map_err(|_| PasskeyError::Invalid)?;
        let id = B64URL.encode(authentication.raw_id().as_ref());
        let passkey = passkeys
            .iter_mut()
            .find(|passkey| passkey.id == id)
            .ok_or(PasskeyError::UnknownCredential)?;
        let mut record = CredentialRecord::parse(&passkey.data)?;
        let handle = record.user_handle()?;
        let static_state = record.static_state()?;
        let dynamic_state = record.dynamic_state()?;
        let mut credential = AuthenticatedCredential::new(
            authentication.raw_id(),
            &handle,
            static_state,
            dynamic_state,
        )
        .map_err(|_| PasskeyError::Storage("credential record"))?;
        let options = AuthenticationVerificationOptions::<&str, &str> {
            allowed_origins: &[self.config.rp_origin.as_str()],
            ..AuthenticationVerificationOptions::default()
        };
        server
            .verify(&self.rp_id, &authentication, &mut credential, &options)
            .map_err(authentication_error)?;
        let updated = credential
            .dynamic_state()
            .encode()
            .map_err(|_| PasskeyError::Storage("encoding"))?;
        record.dynamic_state = B64URL.encode(updated);
        passkey.data = record.to_json()?;
        passkey.last_used_at = Some(now_ms);
        Ok(id)
    }
}

/// The WebAuthn user handle for a keyward user id (see [`USER_HANDLE_LEN`]).
fn user_handle(user_id_bytes: &[u8]) -> Handle {
    let digest: [u8; USER_HANDLE_LEN] = Sha256::digest(user_id_bytes).into();
    match Handle::decode(digest) {
        Ok(handle) => handle,
        Err(never) => match never {},
    }
}

/// A passkey's display name: trimmed, not empty, at most 64 characters, no control
/// characters (it is shown in lists and audit events).
fn passkey_name(name: String) -> Result<String, PasskeyError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(PasskeyError::InvalidName("passkey name is empty"));
    }
    if name.chars().count() > 64 {
        return Err(PasskeyError::InvalidName(
            "passkey name is longer than 64 characters",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(PasskeyError::InvalidName(
            "passkey name has control characters",
        ));
    }
    Ok(name.to_owned())
}

fn decode_b64(text: &str, what: &'static str) -> Result<Vec<u8>, PasskeyError> {
    B64URL.decode(text).map_err(|_| PasskeyError::Storage(what))
}

fn credential_id(id: &str) -> Result<CredentialId<Vec<u8>>, PasskeyError> {
    let bytes = decode_b64(id, "credential id")?;
    CredentialId::<Vec<u8>>::decode(bytes).map_err(|_| PasskeyError::Storage("credential id"))
}

impl CredentialRecord {
    fn parse(data: &str) -> Result<CredentialRecord, PasskeyError> {
        let record: CredentialRecord =
            serde_json::from_str(data).map_err(|_| PasskeyError::Storage("credential record"))?;
        if record.v != 1 {
            return Err(PasskeyError::Storage("credential record version"));
        }
        Ok(record)
    }

    fn to_json(&self) -> Result<String, PasskeyError> {
        serde_json::to_string(self).map_err(|_| PasskeyError::Storage("credential record"))
    }

    fn transports(&self) -> Result<AuthTransports, PasskeyError> {
        AuthTransports::decode(self.transports).map_err(|_| PasskeyError::Storage("transports"))
    }

    fn user_handle(&self) -> Result<Handle, PasskeyError> {
        let bytes: [u8; USER_HANDLE_LEN] = decode_b64(&self.user_handle, "user handle")?
            .try_into()
            .map_err(|_| PasskeyError::Storage("user handle"))?;
        match Handle::decode(bytes) {
            Ok(handle) => Ok(handle),
            Err(never) => match never {},
        }
    }

    fn static_state(&self) -> Result<StaticState<StoredKey>, PasskeyError> {
        let bytes = decode_b64(&self.static_state, "public key")?;
        StaticState::<StoredKey>::decode(bytes.as_slice())
            .map_err(|_| PasskeyError::Storage("public key"))
    }

    fn dynamic_state(&self) -> Result<DynamicState, PasskeyError> {
        let bytes: [u8; 7] = decode_b64(&self.dynamic_state, "counter")?
            .try_into()
            .map_err(|_| PasskeyError::Storage("counter"))?;
        DynamicState::decode(bytes).map_err(|_| PasskeyError::Storage("counter"))
    }
}

fn registration_error(err: RegCeremonyErr) -> PasskeyError {
    match err {
        RegCeremonyErr::Timeout => PasskeyError::Expired,
        RegCeremonyErr::ChallengeMismatch => PasskeyError::ChallengeMismatch,
        RegCeremonyErr::OriginMismatch
        | RegCeremonyErr::CrossOrigin
        | RegCeremonyErr::TopOriginMismatch
        | RegCeremonyErr::RpIdHashMismatch => PasskeyError::OriginMismatch,
        _ => PasskeyError::Invalid,
    }
}

fn authentication_error(err: AuthCeremonyErr) -> PasskeyError {
    match err {
        AuthCeremonyErr::Timeout => PasskeyError::Expired,
        AuthCeremonyErr::ChallengeMismatch => PasskeyError::ChallengeMismatch,
        AuthCeremonyErr::OriginMismatch
        | AuthCeremonyErr::CrossOrigin
        | AuthCeremonyErr::TopOriginMismatch
        | AuthCeremonyErr::RpIdHashMismatch => PasskeyError::OriginMismatch,
        AuthCeremonyErr::SignatureCounter => PasskeyError::CounterRegression,
        AuthCeremonyErr::NoMatchingAllowedCredential
        | AuthCeremonyErr::CredentialIdMismatch
        | AuthCeremonyErr::UserHandleMismatch => PasskeyError::UnknownCredential,
        _ => PasskeyError::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rp_id: &str, origin: &str) -> PasskeyConfig {
        PasskeyConfig {
            rp_id: rp_id.to_owned(),
            rp_origin: origin.to_owned(),
            rp_name: "keyward".to_owned(),
        }
    }

    #[test]
    fn config_accepts_origin_on_the_rp_domain_and_refuses_others() {
        assert!(Passkeys::new(config("keyward.example", "https://keyward.example")).is_ok());
        assert!(Passkeys::new(config("example.com", "https://keys.example.com:8443/")).is_ok());
        assert!(Passkeys::new(config("localhost", "http://localhost:3000")).is_ok());
        for (rp_id, origin) in [
            ("keyward.example", "https://keyward.example.evil"),
            ("keyward.example", "https://notkeyward.example"),
            ("keyward.example", "http://keyward.example"),
            ("keyward.example", "https://keyward.example/login"),
            ("keyward.example", "keyward.example"),
        ] {
            let err = Passkeys::new(config(rp_id, origin)).unwrap_err();
            assert_eq!(err.code(), "passkey_config_invalid", "{origin}");
        }
    }

    #[test]
    fn user_handle_is_stable_and_distinct_per_user() {
        assert_eq!(
            user_handle(b"usr_1").as_ref(),
            user_handle(b"usr_1").as_ref()
        );
        assert_ne!(
            user_handle(b"usr_1").as_ref(),
            user_handle(b"usr_2").as_ref()
        );
    }

    #[test]
    fn passkey_names_are_trimmed_and_bounded() {
        assert_eq!(passkey_name("  YubiKey 5 ".into()).unwrap(), "YubiKey 5");
        assert!(passkey_name("   ".into()).is_err());
        assert!(passkey_name("a".repeat(65)).is_err());
        assert!(passkey_name("bad\nname".into()).is_err());
    }
}
