//! A software authenticator and browser for WebAuthn tests: a real P-256 credential
//! that builds attestation objects and assertions byte for byte as the WebAuthn and
//! CTAP2 specs lay them out, behind a "browser" that writes clientDataJSON with the
//! origin it is on. Shared by keyward-auth's and the gateway's tests (the gateway's
//! includes this file by path), so both drive the same authenticator.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

// ---- a minimal CBOR encoder (RFC 8949), canonical as CTAP2 requires ----

pub enum Cbor {
    Int(i64),
    Bytes(Vec<u8>),
    Text(&'static str),
    Map(Vec<(Cbor, Cbor)>),
}

pub fn cbor_head(major: u8, len: u64, out: &mut Vec<u8>) {
    let major = major << 5;
    match len {
        0..=23 => out.push(major | len as u8),
        24..=0xff => out.extend([major | 24, len as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend((len as u16).to_be_bytes());
        }
        _ => {
            out.push(major | 26);
            out.extend((len as u32).to_be_bytes());
        }
    }
}

pub fn cbor(value: &Cbor, out: &mut Vec<u8>) {
    match value {
        Cbor::Int(n) if *n >= 0 => cbor_head(0, *n as u64, out),
        Cbor::Int(n) => cbor_head(1, (-1 - *n) as u64, out),
        Cbor::Bytes(bytes) => {
            cbor_head(2, bytes.len() as u64, out);
            out.extend(bytes);
        }
        Cbor::Text(text) => {
            cbor_head(3, text.len() as u64, out);
            out.extend(text.as_bytes());
        }
        Cbor::Map(entries) => {
            cbor_head(5, entries.len() as u64, out);
            for (key, value) in entries {
                cbor(key, out);
                cbor(value, out);
            }
        }
    }
}

// ---- the authenticator ----

/// One credential on a security key: its key pair, id, signature counter and the RP it
/// was made for. `Clone` models copying the key out of the device (a cloned authenticator).
#[derive(Clone)]
pub struct SoftKey {
    /// The private key.
    pub key: SigningKey,
    /// The credential id.
    pub credential_id: Vec<u8>,
    /// The RP id it was made for.
    pub rp_id: String,
    /// The user handle it was made for.
    pub user_handle: Vec<u8>,
    /// The signature counter.
    pub counter: u32,
}

pub fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).expect("OS randomness");
    bytes
}

pub fn auth_data(rp_id: &str, flags: u8, counter: u32, attested: &[u8]) -> Vec<u8> {
    let mut data = Sha256::digest(rp_id.as_bytes()).to_vec();
    data.push(flags);
    data.extend(counter.to_be_bytes());
    data.extend(attested);
    data
}

pub const USER_PRESENT: u8 = 0x01;
pub const ATTESTED_DATA: u8 = 0x40;

impl SoftKey {
    /// authenticatorMakeCredential: a fresh P-256 key for `rp_id`, "none" attestation.
    pub fn make_credential(rp_id: &str, user_handle: &[u8]) -> (SoftKey, Vec<u8>) {
        SoftKey::make_credential_with_id(rp_id, user_handle, random::<32>().to_vec())
    }

    /// As `make_credential`, with a chosen credential id (a misbehaving client).
    pub fn make_credential_with_id(
        rp_id: &str,
        user_handle: &[u8],
        credential_id: Vec<u8>,
    ) -> (SoftKey, Vec<u8>) {
        let key = loop {
            if let Ok(key) = SigningKey::from_slice(&random::<32>()) {
                break key;
            }
        };
        let soft = SoftKey {
            key,
            credential_id,
            rp_id: rp_id.to_owned(),
            user_handle: user_handle.to_vec(),
            counter: 0,
        };
        let point = soft.key.verifying_key().to_encoded_point(false);
        let cose_key = Cbor::Map(vec![
            (Cbor::Int(1), Cbor::Int(2)),  // kty: EC2
            (Cbor::Int(3), Cbor::Int(-7)), // alg: ES256
            (Cbor::Int(-1), Cbor::Int(1)), // crv: P-256
            (Cbor::Int(-2), Cbor::Bytes(point.x().expect("x").to_vec())),
            (Cbor::Int(-3), Cbor::Bytes(point.y().expect("y").to_vec())),
        ]);
        let mut attested = vec![0u8; 16]; // AAGUID: none
        attested.extend((soft.credential_id.len() as u16).to_be_bytes());
        attested.extend(&soft.credential_id);
        cbor(&cose_key, &mut attested);
        let auth_data = auth_data(rp_id, USER_PRESENT | ATTESTED_DATA, soft.counter, &attested);
        let mut attestation_object = Vec::new();
        cbor(
            &Cbor::Map(vec![
                (Cbor::Text("fmt"), Cbor::Text("none")),
                (Cbor::Text("attStmt"), Cbor::Map(vec![])),
                (Cbor::Text("authData"), Cbor::Bytes(auth_data)),
            ]),
            &mut attestation_object,
        );
        (soft, attestation_object)
    }

    /// authenticatorGetAssertion: counter + 1, signature over authData || SHA-256(clientDataJSON).
    pub fn get_assertion(&mut self, rp_id: &str, client_data_json: &[u8]) -> (Vec<u8>, Vec<u8>) {
        self.counter += 1;
        let auth_data = auth_data(rp_id, USER_PRESENT, self.counter, &[]);
        let mut signed = auth_data.clone();
        signed.extend(Sha256::digest(client_data_json));
        let signature: Signature = self.key.sign(&signed);
        (auth_data, signature.to_der().as_bytes().to_vec())
    }
}

// ---- the browser ----

/// The client: on `origin`, it writes clientDataJSON as browsers do and asks the
/// authenticator for the RP id in the options.
pub struct Browser {
    /// The origin the page is on.
    pub origin: String,
}

impl Browser {
    /// A browser on `origin`.
    pub fn on(origin: &str) -> Browser {
        Browser {
            origin: origin.to_owned(),
        }
    }

    pub fn client_data(&self, kind: &str, challenge: &str) -> Vec<u8> {
        format!(
            r#"{{"type":"{kind}","challenge":"{challenge}","origin":"{}","crossOrigin":false}}"#,
            self.origin
        )
        .into_bytes()
    }

    /// navigator.credentials.create(options), then `.toJSON()`.
    pub fn create(&self, options: &Value) -> (SoftKey, Value) {
        let challenge = options["challenge"].as_str().expect("challenge");
        let rp_id = options["rp"]["id"].as_str().expect("rp.id");
        let user_handle = B64URL
            .decode(options["user"]["id"].as_str().expect("user.id"))
            .expect("user.id is base64url");
        let client_data = self.client_data("webauthn.create", challenge);
        let (key, attestation_object) = SoftKey::make_credential(rp_id, &user_handle);
        let id = B64URL.encode(&key.credential_id);
        let response = json!({
            "id": id,
            "rawId": id,
            "type": "public-key",
            "response": {
                "clientDataJSON": B64URL.encode(&client_data),
                "attestationObject": B64URL.encode(&attestation_object),
                "transports": ["usb"],
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "cross-platform",
        });
        (key, response)
    }

    /// navigator.credentials.get(options) with `key`, then `.toJSON()`. Signs for the
    /// RP id the options name, as the authenticator holding the credential would.
    pub fn get(&self, options: &Value, key: &mut SoftKey) -> Value {
        let challenge = options["challenge"].as_str().expect("challenge");
        let rp_id = options["rpId"].as_str().expect("rpId").to_owned();
        assert_eq!(
            rp_id, key.rp_id,
            "an authenticator only signs for its own RP id"
        );
        let client_data = self.client_data("webauthn.get", challenge);
        let (auth_data, signature) = key.get_assertion(&rp_id, &client_data);
        let id = B64URL.encode(&key.credential_id);
        json!({
            "id": id,
            "rawId": id,
            "type": "public-key",
            "response": {
                "clientDataJSON": B64URL.encode(&client_data),
                "authenticatorData": B64URL.encode(&auth_data),
                "signature": B64URL.encode(&signature),
                "userHandle": B64URL.encode(&key.user_handle),
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "cross-platform",
        })
    }
}
