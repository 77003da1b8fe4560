//! The management API client behind every client command.
//! Server URL from `KEYWARD_URL`, admin key from `KEYWARD_ADMIN_KEY`.

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// A connection to one keyward server.
pub struct Api {
    http: reqwest::Client,
    base: String,
    /// The admin key (kwa_), a gateway key for `keyward tokens mint`, or empty
    /// for the OpenAPI document.
    key: String,
    runtime: tokio::runtime::Runtime,
}

impl Api {
    /// Reads `KEYWARD_URL` (default `http://127.0.0.1:8080`) and `KEYWARD_ADMIN_KEY`.
    pub fn from_env() -> anyhow::Result<Self> {
        let base = base_from_env()?;
        let base = base.as_str();
        let admin_key = std::env::var("KEYWARD_ADMIN_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty())
            .context("KEYWARD_ADMIN_KEY is not set: export the admin key (first start writes one to <data-dir>/initial-admin-key)")?;
        Self::new(base, &admin_key)
    }

    /// Reads `KEYWARD_URL` as [`Api::from_env`] does, and authenticates with
    /// the gateway key in the environment variable `var` (never a flag, which
    /// other users could see in the process list).
    pub fn with_key_from(var: &str) -> anyhow::Result<Self> {
        let key = std::env::var(var)
            .ok()
            .filter(|k| !k.trim().is_empty())
            .with_context(|| format!("{var} is not set: export the gateway key (kwk_…) there"))?;
        Self::new(&base_from_env()?, &key)
    }

    fn new(base: &str, key: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Self {
            http,
            base: base.to_owned(),
            key: key.trim().to_owned(),
            runtime,
        })
    }

    /// GET `path` (under the server URL) with query pairs.
    pub fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.send(self.http.get(self.url(path)).query(query))
    }

    /// POST a JSON body.
    pub fn post<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> anyhow::Result<Value> {
        self.send(self.http.post(self.url(path)).json(body))
    }

    /// POST a typed body and read the answer as `T`.
    pub fn post_as<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        typed(self.post(path, body)?)
    }

    /// DELETE.
    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(self.url(path)))
    }

    /// GET `path` and read the answer as `T`.
    pub fn get_as<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        typed(self.get(path, query)?)
    }

    /// POST raw bytes (`application/octet-stream`) with query pairs.
    pub fn post_bytes(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: Vec<u8>,
    ) -> anyhow::Result<Value> {
        self.send(
            self.http
                .post(self.url(path))
                .query(query)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body),
        )
    }

    /// PUT a JSON body.
    pub fn put<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> anyhow::Result<Value> {
        self.send(self.http.put(self.url(path)).json(body))
    }

    /// PATCH a JSON body, reading the answer as `T`.
    pub fn patch_as<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let v = self.send(self.http.patch(self.url(path)).json(body))?;
        Ok(serde_json::from_value(v)?)
    }

    /// DELETE with a typed body.
    pub fn delete_with<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<Value> {
        self.send(self.http.delete(self.url(path)).json(body))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        self.runtime.block_on(async {
            let req = if self.key.is_empty() {
                req
            } else {
                req.bearer_auth(&self.key)
            };
            let resp = req.send().await.with_context(|| {
                format!(
                    "cannot reach the keyward server at {} (set KEYWARD_URL)",
                    self.base
                )
            })?;
            let status = resp.status();
            let text = resp.text().await.context("reading the server's answer")?;
            let body: Value = if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            };
            if !status.is_success() {
                // Any body with an `error.message` (the management API's
                // `keyward_api::error::ErrorBody`, or OpenAI's shape, whose
                // `code` may be null), else the body as it came.
                let message = body
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| body.to_string());
                let code = body
                    .pointer("/error/code")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                return Err(Refused {
                    status,
                    code,
                    message,
                }
                .into());
            }
            Ok(body)
        })
    }
}

/// The server's root URL from `KEYWARD_URL` (default `http://127.0.0.1:8080`).
fn base_from_env() -> anyhow::Result<String> {
    let base = std::env::var("KEYWARD_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let base = base.trim_end_matches('/');
    // Apps are given the gateway's base URL, which ends in /v1; the CLI
    // talks to the management API beside it, at the server's root. Said
    // here, or the request lands on the gateway and is refused there with
    // a message about admin keys that points nowhere near the real mistake.
    if let Some(root) = base.strip_suffix("/v1") {
        bail!(
            "KEYWARD_URL ends in /v1, the gateway's base URL for apps; the CLI needs the \
             server's root: drop /v1 (KEYWARD_URL={root})"
        );
    }
    Ok(base.to_owned())
}

/// The server refused a request: its status and, in the management API's
/// error shape, its code and message. Commands that can say more than the
/// server (which command fixes it) look for this in the error.
#[derive(Debug)]
pub struct Refused {
    /// The HTTP status.
    pub status: reqwest::StatusCode,
    /// `not_found`, `bad_request`, … when the body had one.
    pub code: Option<String>,
    /// The message for people.
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server answered {}: {}", self.status, self.message)
    }
}

impl std::error::Error for Refused {}

impl Refused {
    /// Whether `e` is the server saying that `what` (e.g. `"project"`) does not exist.
    pub fn is_not_found(e: &anyhow::Error, what: &str) -> bool {
        e.downcast_ref::<Refused>().is_some_and(|r| {
            r.code.as_deref() == Some("not_found") && r.message == format!("{what} not found")
        })
    }
}

/// Reads a successful answer as the API type the route returns.
pub fn typed<T: DeserializeOwned>(body: Value) -> anyhow::Result<T> {
    serde_json::from_value(body).context("the server's answer is not in the expected shape")
}

/// `keyward openapi`: the management API's OpenAPI document, from the server
/// (so it describes the version running there, not this binary's).
pub fn print_openapi() -> anyhow::Result<()> {
    // The document holds no data: no key is needed, none is sent.
    let doc = Api::new(&base_from_env()?, "")?.get("/api/v1/openapi.json", &[])?;
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}
