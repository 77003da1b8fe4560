//! The request body, read once: [`inspect_body`] deserializes the fields the
//! gateway needs (model, stream flag, output caps, whether the client asked for
//! the usage chunk) and notes the top-level member names, which tell
//! [`rewrite_body`] whether `stream_options` and an output cap can be written in
//! front of the client's members without parsing the body again.
//!
//! The input-token bound is not computed here: admission walks the body for it
//! (`crate::request::input_bound`) only when a token limit or a budget needs it.

use crate::error::GatewayError;
use bytes::Bytes;
use http::header::{self, HeaderMap};
use serde_json::Value;

/// Routes whose request body is always a JSON object, so it is inspected
/// whatever the request's Content-Type says.
const JSON_ROUTES: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
];

/// A request body as the gateway sees it.
pub(super) enum RequestBody {
    /// No body.
    Empty,
    /// A JSON object, read.
    Json(RequestFacts),
    /// Not JSON (a multipart upload, say): forwarded unread.
    Opaque,
}

/// What the gateway learned from a JSON request body.
pub(super) struct RequestFacts {
    /// The model named, or empty.
    pub(super) model: String,
    /// The request's Content-Type did not say JSON: the upstream is told it is,
    /// so that it reads the body as the gateway did.
    pub(super) relabel: bool,
    /// The client asked for a stream.
    pub(super) stream: bool,
    /// The client asked for the usage chunk itself.
    pub(super) client_wants_usage: bool,
    /// The output cap the client set.
    pub(super) requested_output: Option<i64>,
    /// Which top-level members the body has, of those the gateway may set, and
    /// whether it has any at all: where [`prepend_members`] may write.
    members: Members,
}

/// The top-level members of a request body that [`rewrite_body`] needs to know
/// about, noted while the body is deserialized (so it is not walked again).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Members {
    /// The object has at least one member.
    any: bool,
    /// A member's name is escaped, so it could spell one of the names below.
    escaped: bool,
    stream_options: bool,
    max_completion_tokens: bool,
    max_tokens: bool,
    max_output_tokens: bool,
}

impl Members {
    /// Whether the body has a member named `name` (of those tracked).
    fn has(&self, name: &str) -> bool {
        match name {
            "stream_options" => self.stream_options,
            "max_completion_tokens" => self.max_completion_tokens,
            "max_tokens" => self.max_tokens,
            "max_output_tokens" => self.max_output_tokens,
            _ => true,
        }
    }
}

/// Applies the gateway's changes to a JSON body: ask a stream for usage, and set
/// the output cap a budget requires. Serializes only when something changed.
pub(super) fn rewrite_body(
    endpoint: &str,
    facts: Option<&RequestFacts>,
    output_cap: Option<i64>,
    original: Bytes,
) -> Result<Bytes, GatewayError> {
    let Some(facts) = facts else {
        return Ok(original);
    };
    // The Responses API always reports usage in its final event; chat and legacy
    // completions only when asked.
    let ask_usage = facts.stream && !facts.client_wants_usage && endpoint != "/v1/responses";
    if !ask_usage && output_cap.is_none() {
        return Ok(original);
    }
    let cap = output_cap.map(|cap| {
        let field = match endpoint {
            "/v1/completions" => "max_tokens",
            "/v1/responses" => "max_output_tokens",
            _ => "max_completion_tokens",
        };
        (field, cap)
    });
    if let Some(spliced) = prepend_members(&original, &facts.members, ask_usage, cap) {
        return Ok(spliced);
    }
    match reserialize(&original, ask_usage, cap) {
        Some(body) => body.map(Bytes::from),
        None => Ok(original),
    }
}

/// [`rewrite_body`] by parsing and re-serializing; `None` when the body is not
/// a JSON object (it is then forwarded as is).
fn reserialize(
    original: &[u8],
    ask_usage: bool,
    cap: Option<(&str, i64)>,
) -> Option<Result<Vec<u8>, GatewayError>> {
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(original) else {
        return None;
    };
    if ask_usage {
        let options = obj
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(o) = options.as_object_mut() {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    if let Some((field, cap)) = cap {
        obj.insert(field.into(), Value::from(cap));
    }
    Some(serde_json::to_vec(&obj).map_err(|_| GatewayError::Internal))
}

/// The common case of [`rewrite_body`] without parsing again: when the body has
/// none of the members the gateway sets, they are written in front of the
/// client's own, which stay byte for byte as sent. `None` when a member to set
/// is already there (or a name is escaped, so could be one): then the body is
/// parsed and re-serialized. `members` are the body's, as [`inspect_body`]
/// noted them: the body is a JSON object serde accepted.
///
/// Why: re-serializing cost as much as the rest of the request's handling on a
/// streamed chat request, and reorders or reformats the client's JSON; writing
/// in front of the first member needs only the position of the `{`.
fn prepend_members(
    body: &[u8],
    members: &Members,
    ask_usage: bool,
    cap: Option<(&str, i64)>,
) -> Option<Bytes> {
    let taken =
        (ask_usage && members.stream_options) || cap.is_some_and(|(field, _)| members.has(field));
    if taken || members.escaped {
        return None;
    }
    let open = body.iter().position(|&b| b == b'{')?;
    let (head, rest) = body.split_at(open + 1);
    let mut out = Vec::with_capacity(body.len() + 80);
    out.extend_from_slice(head);
    if ask_usage {
        out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
    }
    if let Some((field, cap)) = cap {
        if ask_usage {
            out.push(b',');
        }
        out.extend_from_slice(format!("\"{field}\":{cap}").as_bytes());
    }
    if (ask_usage || cap.is_some()) && members.any {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Some(Bytes::from(out))
}

/// Is this Content-Type a JSON media type (`application/json`, `…+json`), in
/// any letter case and with any parameters?
fn is_json_media_type(value: &[u8]) -> bool {
    let essence = value.split(|&b| b == b';').next().unwrap_or_default();
    let essence = essence.trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() > 5
            && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json")
            && essence.contains(&b'/'))
}

/// The fields the gateway reads from a JSON request; everything else is skipped
/// without building a JSON tree. Deserialized by hand (the same checks and
/// error messages as `#[derive(Deserialize)]`) so that the one pass over the
/// body also notes its top-level member names ([`Members`]).
#[derive(Default)]
struct Peek {
    model: Option<Option<String>>,
    stream: Option<Option<bool>>,
    stream_options: Option<Option<StreamOptions>>,
    max_completion_tokens: Option<Option<i64>>,
    max_tokens: Option<Option<i64>>,
    max_output_tokens: Option<Option<i64>>,
    members: Members,
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// The members [`Peek`] reads.
#[derive(Clone, Copy)]
enum Field {
    Model,
    Stream,
    StreamOptions,
    MaxCompletionTokens,
    MaxTokens,
    MaxOutputTokens,
    /// Any other member, skipped.
    Other,
}

impl Field {
    fn of(name: &str) -> Self {
        match name {
            "model" => Self::Model,
            "stream" => Self::Stream,
            "stream_options" => Self::StreamOptions,
            "max_completion_tokens" => Self::MaxCompletionTokens,
            "max_tokens" => Self::MaxTokens,
            "max_output_tokens" => Self::MaxOutputTokens,
            _ => Self::Other,
        }
    }
}

/// A member name, and whether it was written with escapes (read without
/// allocating either way).
struct Key {
    field: Field,
    escaped: bool,
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("field identifier")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key, E> {
                Ok(Key {
                    field: Field::of(v),
                    escaped: false,
                })
            }
            // serde_json lends the name only when it has no escapes; otherwise it
            // hands over the unescaped copy in its scratch buffer.
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(Key {
                    field: Field::of(v),
                    escaped: true,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> serde::Deserialize<'de> for Peek {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Peek;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("struct Peek")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Peek, A::Error> {
                use serde::de::Error;
                fn once<'de, A: serde::de::MapAccess<'de>, T: serde::Deserialize<'de>>(
                    map: &mut A,
                    slot: &mut Option<T>,
                    name: &'static str,
                ) -> Result<(), A::Error> {
                    if slot.is_some() {
                        return Err(A::Error::duplicate_field(name));
                    }
                    *slot = Some(map.next_value()?);
                    Ok(())
                }
                let mut p = Peek::default();
                while let Some(key) = map.next_key::<Key>()? {
                    p.members.any = true;
                    p.members.escaped |= key.escaped;
                    match key.field {
                        Field::Model => once(&mut map, &mut p.model, "model")?,
                        Field::Stream => once(&mut map, &mut p.stream, "stream")?,
                        Field::StreamOptions => {
                            p.members.stream_options = true;
                            once(&mut map, &mut p.stream_options, "stream_options")?
                        }
                        Field::MaxCompletionTokens => {
                            p.members.max_completion_tokens = true;
                            once(
                                &mut map,
                                &mut p.max_completion_tokens,
                                "max_completion_tokens",
                            )?
                        }
                        Field::MaxTokens => {
                            p.members.max_tokens = true;
                            once(&mut map, &mut p.max_tokens, "max_tokens")?
                        }
                        Field::MaxOutputTokens => {
                            p.members.max_output_tokens = true;
                            once(&mut map, &mut p.max_output_tokens, "max_output_tokens")?
                        }
                        Field::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(p)
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads what the gateway needs from a request body.
///
/// Decision: a body is read as JSON when its route always takes JSON
/// ([`JSON_ROUTES`]), when its Content-Type names JSON in any spelling, or when
/// it looks like JSON (starts with `{` or `[`) whatever the header says; it must
/// then be one JSON object, or the request is refused (400). Only a body that
/// is none of these (a multipart upload) is forwarded unread, and admission
/// refuses it under a model restriction, since its model cannot be checked.
pub(super) fn inspect_body(
    endpoint: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<RequestBody, GatewayError> {
    if body.is_empty() {
        return Ok(RequestBody::Empty);
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let declared_json = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_json_media_type(v.as_bytes()));
    if !(declared_json || matches!(first, Some(b'{' | b'[')) || JSON_ROUTES.contains(&endpoint)) {
        return Ok(RequestBody::Opaque);
    }
    if first != Some(&b'{') {
        return Err(GatewayError::BadRequest(
            "The request body must be a JSON object.".into(),
        ));
    }
    let peek: Peek = serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => e.to_string(),
            _ => format!(
                "{}, line {} column {}",
                json_error_kind(&e),
                e.line(),
                e.column()
            ),
        };
        GatewayError::BadRequest(format!(
            "We could not parse the JSON body of your request ({what})."
        ))
    })?;
    let mut requested_output: Option<i64> = None;
    for (field, v) in [
        (
            "max_completion_tokens",
            peek.max_completion_tokens.flatten(),
        ),
        ("max_tokens", peek.max_tokens.flatten()),
        ("max_output_tokens", peek.max_output_tokens.flatten()),
    ] {
        match v {
            None => {}
            Some(n) if n >= 0 => requested_output = Some(requested_output.map_or(n, |r| r.min(n))),
            Some(_) => {
                return Err(GatewayError::BadRequest(format!(
                    "`{field}` must be a non-negative integer."
                )))
            }
        }
    }
    Ok(RequestBody::Json(RequestFacts {
        model: peek.model.flatten().unwrap_or_default(),
        relabel: !declared_json,
        stream: peek.stream.flatten().unwrap_or(false),
        client_wants_usage: peek
            .stream_options
            .flatten()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        requested_output,
        members: peek.members,
    }))
}

fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Io => "read error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// JSON objects with the members the gateway reads or sets, mostly of the
    /// types inspection accepts (a body it refuses is never rewritten), and a
    /// name that is escaped.
    fn body() -> impl Strategy<Value = serde_json::Map<String, Value>> {
        let any_value = || {
            prop_oneof![
                Just(Value::Null),
                any::<i32>().prop_map(Value::from),
                "[ -~\\\\\"]{0,8}".prop_map(Value::String),
                Just(serde_json::json!([{"role": "user", "content": "}{\\\"["}])),
                Just(serde_json::json!({"include_usage": false, "x": 1})),
            ]
        };
        let member = prop_oneof![
            (Just("model"), "[ -~]{0,8}".prop_map(Value::String)),
            (Just("stream"), any::<bool>().prop_map(Value::from)),
            (
                Just("stream_options"),
                prop_oneof![
                    Just(Value::Null),
                    Just(serde_json::json!({"include_usage": false, "x": 1})),
                ]
            ),
            (Just("max_tokens"), (0..100_000i64).prop_map(Value::from)),
            (
                Just("max_completion_tokens"),
                (0..100_000i64).prop_map(Value::from)
            ),
            (Just("messages"), any_value()),
            (Just("temperature"), any_value()),
            (Just("stream\\u005foptions"), any_value()),
            (Just("model"), any_value()),
        ];
        proptest::collection::vec(member, 0..6)
            .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    proptest! {
        /// Prepending members, where it applies, gives the document that parsing
        /// and re-serializing gives.
        #[test]
        fn prepending_agrees_with_reserializing(
            obj in body(),
            ask_usage in any::<bool>(),
            cap in proptest::option::of(0i64..100_000),
            field in proptest::sample::select(vec!["max_tokens", "max_completion_tokens"]),
            pretty in any::<bool>(),
        ) {
            let json = if pretty {
                serde_json::to_vec_pretty(&obj).unwrap()
            } else {
                serde_json::to_vec(&obj).unwrap()
            };
            let cap = cap.map(|c| (field, c));
            let want: Value = serde_json::from_slice(&reserialize(&json, ask_usage, cap).unwrap().unwrap()).unwrap();
            // A body inspection refuses (a member of the wrong type) is never
            // rewritten.
            let Ok(RequestBody::Json(facts)) =
                inspect_body("/v1/chat/completions", &HeaderMap::new(), &json)
            else {
                return Ok(());
            };
            let members = facts.members;
            if let Some(got) = prepend_members(&json, &members, ask_usage, cap) {
                let got: Value = serde_json::from_slice(&got).unwrap();
                prop_assert_eq!(got, want);
                prop_assert!(!obj.contains_key("stream\\u005foptions") || !ask_usage);
            } else {
                prop_assert!(
                    (ask_usage && obj.contains_key("stream_options"))
                        || cap.is_some_and(|(f, _)| obj.contains_key(f))
                        || obj.keys().any(|k| k.contains('\\'))
                );
            }
        }
    }

    /// What [`inspect_body`] reads from `json`, a JSON object.
    fn facts(json: &[u8]) -> RequestFacts {
        match inspect_body("/v1/chat/completions", &HeaderMap::new(), json) {
            Ok(RequestBody::Json(facts)) => facts,
            _ => panic!("not a JSON object"),
        }
    }

    /// The body through [`prepend_members`], with the members inspection noted.
    fn prepend(json: &[u8], ask_usage: bool, cap: Option<(&str, i64)>) -> Option<Bytes> {
        prepend_members(json, &facts(json).members, ask_usage, cap)
    }

    #[test]
    fn prepends_in_front_of_the_clients_members() {
        let got = prepend(br#" {"model": "m", "stream": true} "#, true, None).unwrap();
        assert_eq!(
            &got[..],
            br#" {"stream_options":{"include_usage":true},"model": "m", "stream": true} "#
        );
        let got = prepend(b"{ }", true, Some(("max_tokens", 5))).unwrap();
        assert_eq!(
            &got[..],
            br#"{"stream_options":{"include_usage":true},"max_tokens":5 }"#
        );
        assert_eq!(prepend(br#"{"stream_options": {}}"#, true, None), None);
        assert_eq!(prepend(br#"{"x\u0079": 1}"#, true, None), None);
        // A malformed object never gets this far: inspection refuses it.
        assert!(inspect_body("/v1/chat/completions", &HeaderMap::new(), br#"{"a": 1"#).is_err());
    }
}
