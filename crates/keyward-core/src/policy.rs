//! What a key may do: endpoints, models, client networks, and rate limits.
//!
//! An empty list means "no restriction". An ephemeral token is checked against its
//! own policy *and* its parent's, so it can never exceed the parent whatever it
//! was created with.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One allowed endpoint: an HTTP method (or `*`) and a path glob (`*` matches any
/// run of characters, `?` one character).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRule {
    /// `GET`, `POST`, … or `*`.
    pub method: String,
    /// Path glob, e.g. `/v1/chat/completions` or `/v1/models*`.
    pub path: String,
}

/// Restrictions and limits attached to a key or token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPolicy {
    /// Allowed endpoints; empty allows all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointRule>,
    /// Allowed model globs; empty allows all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Allowed client networks; empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<IpNet>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens (input + output) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Web origins (`https://app.example.com`) whose pages may call the gateway
    /// with this key from a browser. On a key, empty means no browser may; on an
    /// ephemeral token, empty means its parent's, and a list narrows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<String>,
}

/// Why a policy given by a person was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// Unknown preset or malformed `METHOD /path` pattern.
    #[error("invalid endpoint pattern {0:?}: use a preset (all, read-only, chat-only, inference, embeddings-only) or `METHOD /path` patterns like `POST /v1/chat/completions`")]
    Endpoint(String),
    /// Not an IPv4/IPv6 CIDR.
    #[error("invalid network {0:?}: use CIDR notation such as 10.0.0.0/8, 203.0.113.7/32 or 2001:db8::/32")]
    Network(String),
    /// Empty or absurd model glob.
    #[error("invalid model pattern {0:?}")]
    Model(String),
    /// A limit of zero.
    #[error("{0} must be at least 1")]
    Limit(&'static str),
    /// Not a web origin, or a wildcard.
    #[error("invalid origin {0:?}: give an exact origin such as https://app.example.com or http://localhost:3000 (scheme, host and optional port; no path, no wildcard)")]
    Origin(String),
}

const PRESETS: &[(&str, &[(&str, &str)])] = &[
    ("all", &[("*", "/v1/*")]),
    ("read-only", &[("GET", "/v1/*")]),
    (
        "chat-only",
        &[
            ("POST", "/v1/chat/completions"),
            ("GET", "/v1/models"),
            ("GET", "/v1/models/*"),
        ],
    ),
    (
        "inference",
        &[
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/completions"),
            ("POST", "/v1/responses"),
            ("POST", "/v1/embeddings"),
            ("GET", "/v1/models"),
            ("GET", "/v1/models/*"),
        ],
    ),
    (
        "embeddings-only",
        &[
            ("POST", "/v1/embeddings"),
            ("GET", "/v1/models"),
            ("GET", "/v1/models/*"),
        ],
    ),
];

impl EndpointRule {
    /// Parses a comma-separated list of presets and `METHOD /path` patterns.
    pub fn parse_list(spec: &str) -> Result<Vec<EndpointRule>, PolicyError> {
        let mut rules = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Some((_, preset)) = PRESETS.iter().find(|(name, _)| *name == item) {
                rules.extend(preset.iter().map(|(m, p)| EndpointRule {
                    method: (*m).into(),
                    path: (*p).into(),
                }));
                continue;
            }
            let (method, path) = item
                .split_once(' ')
                .ok_or_else(|| PolicyError::Endpoint(item.into()))?;
            let method = method.trim().to_ascii_uppercase();
            let path = path.trim();
            let method_ok = method == "*"
                || (!method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()));
            if !method_ok || !path.starts_with('/') || path.contains(' ') {
                return Err(PolicyError::Endpoint(item.into()));
            }
            rules.push(EndpointRule {
                method,
                path: path.into(),
            });
        }
        if rules.is_empty() {
            return Err(PolicyError::Endpoint(spec.into()));
        }
        Ok(rules)
    }

    fn allows(&self, method: &str, path: &str) -> bool {
        (self.method == "*" || self.method.eq_ignore_ascii_case(method)) && glob(&self.path, path)
    }
}

impl KeyPolicy {
    /// Checks the limits and patterns a person gave.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for m in &self.models {
            if m.is_empty() || m.len() > 200 {
                return Err(PolicyError::Model(m.clone()));
            }
        }
        if self.rpm == Some(0) {
            return Err(PolicyError::Limit("rpm"));
        }
        if self.tpm == Some(0) {
            return Err(PolicyError::Limit("tpm"));
        }
        if self.max_concurrent == Some(0) {
            return Err(PolicyError::Limit("max_concurrent"));
        }
        for o in &self.origins {
            if parse_origin(o).as_deref() != Some(o.as_str()) {
                return Err(PolicyError::Origin(o.clone()));
            }
        }
        Ok(())
    }

    /// May a page of `origin` use this key from a browser? Only if this key
    /// lists it (see [`KeyPolicy::origins`] for tokens).
    pub fn lists_origin(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == origin)
    }

    /// May this key call `method path`?
    pub fn allows_endpoint(&self, method: &str, path: &str) -> bool {
        self.endpoints.is_empty() || self.endpoints.iter().any(|r| r.allows(method, path))
    }

    /// Does this key restrict models? Then every request that can run one must
    /// name an allowed one.
    pub fn restricts_models(&self) -> bool {
        !self.models.is_empty()
    }

    /// May this key use `model`? Under a restriction an empty name never passes
    /// (not even `*`): an upstream may run a default model for a request that
    /// names none, so "no model" is not "an allowed model".
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || (!model.is_empty() && self.models.iter().any(|g| glob(g, model)))
    }

    /// May a client at `ip` use this key?
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        // An IPv4 client reached over an IPv6 socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.networks.is_empty() || self.networks.iter().any(|n| n.contains(&ip))
    }
}

/// The canonical form of a web origin as a browser sends it in `Origin`:
/// `scheme://host[:port]`, lowercase, without the scheme's default port.
/// `None` for anything else: a path, a query, user info, a wildcard (CORS never
/// allows `*` for requests that carry a key), or a scheme other than http(s).
/// Origins are compared exactly, so a stored origin is always canonical.
pub fn parse_origin(text: &str) -> Option<String> {
    let text = text.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, rest) = text.split_once("://")?;
    let default_port = match scheme {
        "https" => "443",
        "http" => "80",
        _ => return None,
    };
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']')?;
            addr.parse::<std::net::Ipv6Addr>().ok()?;
            (&rest[..addr.len() + 2], after.strip_prefix(':'))
        }
        None => match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    if host.len() != rest.len() - port.map_or(0, |p| p.len() + 1) {
        return None; // something after the host that is not a port
    }
    let port = match port {
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?.to_string())
        }
        Some(_) => return None,
        None => None,
    };
    let host_ok = |h: &str| {
        h.starts_with('[')
            || (!h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    };
    if !host_ok(host) {
        return None;
    }
    Some(match port {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Parses a comma-separated CIDR list; a bare address means that one host.
pub fn parse_networks(spec: &str) -> Result<Vec<IpNet>, PolicyError> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| PolicyError::Network(s.into()))
        })
        .collect()
}

/// Glob match with `*` (any run, including empty) and `?` (one character).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_exact_and_canonical() {
        let ok = |t: &str, want: &str| assert_eq!(parse_origin(t).as_deref(), Some(want), "{t}");
        ok("https://App.Example.com", "https://app.example.com");
        ok("https://app.example.com/", "https://app.example.com");
        ok("https://app.example.com:443", "https://app.example.com");
        ok("http://localhost:3000", "http://localhost:3000");
        ok("http://127.0.0.1:8080", "http://127.0.0.1:8080");
        ok("http://[::1]:8080", "http://[::1]:8080");
        for bad in [
            "*",
            "https://*.example.com",
            "https://app.example.com/path",
            "https://app.example.com?x=1",
            "https://user@app.example.com",
            "ftp://app.example.com",
            "app.example.com",
            "null",
            "https://",
            "https://app.example.com:99999",
            "https://app.example.com:",
            "http://[::1",
        ] {
            assert_eq!(parse_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn wildcard_origin_is_refused_in_a_policy() {
        let p = KeyPolicy {
            origins: vec!["*".into()],
            ..KeyPolicy::default()
        };
        assert!(matches!(p.validate(), Err(PolicyError::Origin(_))));
        let p = KeyPolicy {
            origins: vec!["https://App.example.com".into()],
            ..KeyPolicy::default()
        };
        assert!(p.validate().is_err(), "a stored origin must be canonical");
    }

    #[test]
    fn globs() {
        assert!(glob("gpt-4o*", "gpt-4o-mini"));
        assert!(glob("gpt-4o*", "gpt-4o"));
        assert!(!glob("gpt-4o*", "gpt-4"));
        assert!(glob("*mini", "gpt-4o-mini"));
        assert!(glob("o?-mini", "o3-mini"));
        assert!(glob("*", ""));
        assert!(!glob("a*b", "acd"));
    }

    #[test]
    fn presets_and_patterns() {
        let chat = EndpointRule::parse_list("chat-only").unwrap();
        let p = KeyPolicy {
            endpoints: chat,
            ..Default::default()
        };
        assert!(p.allows_endpoint("POST", "/v1/chat/completions"));
        assert!(p.allows_endpoint("GET", "/v1/models/gpt-4o"));
        assert!(!p.allows_endpoint("POST", "/v1/embeddings"));
        assert!(!p.allows_endpoint("GET", "/v1/files"));
        let ro = KeyPolicy {
            endpoints: EndpointRule::parse_list("read-only").unwrap(),
            ..Default::default()
        };
        assert!(ro.allows_endpoint("GET", "/v1/files"));
        assert!(!ro.allows_endpoint("POST", "/v1/chat/completions"));
        let custom = EndpointRule::parse_list("post /v1/embeddings, GET /v1/models*").unwrap();
        assert_eq!(custom[0].method, "POST");
        for bad in ["", "everything", "POST", "POST v1/x", "P0ST /v1/x"] {
            assert!(EndpointRule::parse_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn networks_v4_v6_and_mapped() {
        let p = KeyPolicy {
            networks: parse_networks("10.0.0.0/8, 2001:db8::/32, 203.0.113.7").unwrap(),
            ..Default::default()
        };
        assert!(p.allows_ip("10.1.2.3".parse().unwrap()));
        assert!(p.allows_ip("::ffff:10.1.2.3".parse().unwrap()));
        assert!(p.allows_ip("2001:db8:1::5".parse().unwrap()));
        assert!(p.allows_ip("203.0.113.7".parse().unwrap()));
        assert!(!p.allows_ip("203.0.113.8".parse().unwrap()));
        assert!(!p.allows_ip("2001:db9::1".parse().unwrap()));
        assert!(KeyPolicy::default().allows_ip("1.2.3.4".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "2001:db8::/129", "1.2.3"] {
            assert!(parse_networks(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn models_and_limits() {
        let p = KeyPolicy {
            models: vec!["gpt-4o-mini*".into()],
            ..Default::default()
        };
        assert!(p.allows_model("gpt-4o-mini-2024-07-18"));
        assert!(!p.allows_model("gpt-4o"));
        assert!(p.restricts_models() && !KeyPolicy::default().restricts_models());
        let any = KeyPolicy {
            models: vec!["*".into()],
            ..Default::default()
        };
        assert!(!p.allows_model("") && !any.allows_model(""));
        assert!(any.allows_model("gpt-4o") && KeyPolicy::default().allows_model(""));
        assert!(KeyPolicy {
            rpm: Some(0),
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(KeyPolicy {
            rpm: Some(1),
            ..Default::default()
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn policy_json_round_trips_and_refuses_unknown_fields() {
        let p = KeyPolicy {
            rpm: Some(5),
            models: vec!["gpt-*".into()],
            ..Default::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<KeyPolicy>(&json).unwrap(), p);
        assert_eq!(
            serde_json::from_str::<KeyPolicy>("{}").unwrap(),
            KeyPolicy::default()
        );
        assert!(serde_json::from_str::<KeyPolicy>("{\"rpn\": 1}").is_err());
    }
}
