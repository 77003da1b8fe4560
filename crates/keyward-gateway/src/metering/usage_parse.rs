//! Reading token usage out of upstream responses, whatever their shape.
//!
//! The top level of the response is walked without parsing ([`crate::json_walk`])
//! to find the `usage`, `model`, `response` and `choices` members, and only those
//! are read: `usage` member by member, as integers. A chat completion's `choices`
//! (the generated text) is the bulk of a response and is never decoded. Measured
//! (callgrind), deserializing `usage` with serde cost more than walking the whole
//! envelope; the tests hold the walk to serde's answers.

use crate::json_walk::{int, plain_str, Members};
use keyward_core::TokenUsage;

#[derive(Default, Clone, Copy, serde::Deserialize)]
struct Details {
    cached_tokens: Option<i64>,
    reasoning_tokens: Option<i64>,
}

#[derive(Default, serde::Deserialize)]
struct Usage {
    prompt_tokens: Option<i64>,
    input_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    output_tokens: Option<i64>,
    prompt_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
}

/// What a response (or one stream chunk) says about usage.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Token usage, when reported.
    pub usage: Option<TokenUsage>,
    /// The model named.
    pub model: Option<String>,
    /// Whether `choices` is an empty array (`None` when absent or not an
    /// array): a stream's usage-only chunk.
    pub choices_empty: Option<bool>,
}

/// Reads usage from a JSON object: chat/completions and embeddings
/// (`usage.prompt_tokens`…), the Responses API (`usage.input_tokens`…), and a
/// Responses stream's final event (`response.usage`). `None` when not a JSON object.
pub fn read(json: &[u8]) -> Option<Found> {
    let top = Envelope::of(json)?;
    let (usage, model) = match (top.usage, top.response.and_then(Envelope::of)) {
        (Some(u), _) => (Some(u), top.model),
        (None, Some(inner)) => (inner.usage, inner.model.or(top.model)),
        (None, None) => (None, top.model),
    };
    Some(Found {
        usage: usage.map(tokens),
        model,
        choices_empty: top.choices_empty,
    })
}

/// [`read`] for an object whose keys may be spelled with escapes
/// (`"\u0075sage"`), which the member walk compares as raw bytes: the whole
/// envelope deserialized by serde, which decodes them. Slower; for the rare
/// event that needs it (the tests hold `read` to this answer).
pub fn read_decoding(json: &[u8]) -> Option<Found> {
    #[derive(serde::Deserialize)]
    struct Inner {
        usage: Option<Usage>,
        model: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Full {
        usage: Option<Usage>,
        model: Option<String>,
        response: Option<Inner>,
        choices: Option<Vec<serde::de::IgnoredAny>>,
    }
    let e: Full = serde_json::from_slice(json).ok()?;
    let (usage, model) = match (e.usage, e.response) {
        (Some(u), _) => (Some(u), e.model),
        (None, Some(inner)) => (inner.usage, inner.model.or(e.model)),
        (None, None) => (None, e.model),
    };
    Some(Found {
        usage: usage.map(tokens),
        model,
        choices_empty: e.choices.map(|c| c.is_empty()),
    })
}

/// The members of an object that matter for usage; the rest stay unread.
struct Envelope<'a> {
    usage: Option<Usage>,
    model: Option<String>,
    /// The Responses API's final stream event nests the response (raw).
    response: Option<&'a [u8]>,
    choices_empty: Option<bool>,
}

impl<'a> Envelope<'a> {
    fn of(json: &'a [u8]) -> Option<Self> {
        let mut e = Self {
            usage: None,
            model: None,
            response: None,
            choices_empty: None,
        };
        for (key, value) in Members::of(json)? {
            match key {
                b"usage" => e.usage = usage_of(value),
                b"model" => e.model = string_of(value),
                b"response" => e.response = Some(value),
                b"choices" => e.choices_empty = array_is_empty(value),
                _ => {}
            }
        }
        Some(e)
    }
}

/// A string member as serde reads an `Option<String>`: `None` for `null` and for
/// anything that is not a string.
fn string_of(raw: &[u8]) -> Option<String> {
    match plain_str(raw) {
        Some(s) => Some(s.to_owned()),
        None => serde_json::from_slice(raw).ok().flatten(),
    }
}

/// `usage` as serde reads an `Option<Usage>` (and `None` where serde fails): a
/// known member of the wrong type, a repeated known member, or a malformed
/// object gives `None`; unknown members are skipped.
fn usage_of(raw: &[u8]) -> Option<Usage> {
    let mut u = Usage::default();
    let mut seen = 0u8;
    let mut members = Members::of(raw)?;
    for (key, value) in members.by_ref() {
        let (bit, slot) = match key {
            b"prompt_tokens" => (0, Slot::Int(&mut u.prompt_tokens)),
            b"input_tokens" => (1, Slot::Int(&mut u.input_tokens)),
            b"completion_tokens" => (2, Slot::Int(&mut u.completion_tokens)),
            b"output_tokens" => (3, Slot::Int(&mut u.output_tokens)),
            b"prompt_tokens_details" => (4, Slot::Details(&mut u.prompt_tokens_details)),
            b"input_tokens_details" => (5, Slot::Details(&mut u.input_tokens_details)),
            b"completion_tokens_details" => (6, Slot::Details(&mut u.completion_tokens_details)),
            b"output_tokens_details" => (7, Slot::Details(&mut u.output_tokens_details)),
            _ => continue,
        };
        if seen & (1 << bit) != 0 {
            return None;
        }
        seen |= 1 << bit;
        match slot {
            Slot::Int(v) => *v = optional(value, int)?,
            Slot::Details(v) => *v = optional(value, details_of)?,
        }
    }
    members.complete().then_some(u)
}

/// Where a known `usage` member goes.
enum Slot<'u> {
    Int(&'u mut Option<i64>),
    Details(&'u mut Option<Details>),
}

/// `null` as `Some(None)`, a value `read` accepts as `Some(Some(_))`, anything
/// else as `None` (the whole `usage` is then unreadable, as with serde).
fn optional<T>(raw: &[u8], read: impl Fn(&[u8]) -> Option<T>) -> Option<Option<T>> {
    if raw == b"null" {
        Some(None)
    } else {
        read(raw).map(Some)
    }
}

fn details_of(raw: &[u8]) -> Option<Details> {
    let mut d = Details::default();
    let mut seen = 0u8;
    let mut members = Members::of(raw)?;
    for (key, value) in members.by_ref() {
        let (bit, slot) = match key {
            b"cached_tokens" => (0, &mut d.cached_tokens),
            b"reasoning_tokens" => (1, &mut d.reasoning_tokens),
            _ => continue,
        };
        if seen & (1 << bit) != 0 {
            return None;
        }
        seen |= 1 << bit;
        *slot = optional(value, int)?;
    }
    members.complete().then_some(d)
}

/// Whether a raw JSON array is empty; `None` when not an array.
fn array_is_empty(raw: &[u8]) -> Option<bool> {
    let rest = raw.strip_prefix(b"[")?;
    Some(rest.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b']'))
}

fn tokens(u: Usage) -> TokenUsage {
    let clamp = |v: Option<i64>| v.unwrap_or(0).max(0);
    let input = clamp(u.prompt_tokens.or(u.input_tokens));
    let output = clamp(u.completion_tokens.or(u.output_tokens));
    let cached = clamp(
        u.prompt_tokens_details
            .or(u.input_tokens_details)
            .and_then(|d| d.cached_tokens),
    );
    let reasoning = clamp(
        u.completion_tokens_details
            .or(u.output_tokens_details)
            .and_then(|d| d.reasoning_tokens),
    );
    TokenUsage {
        input,
        cached_input: cached.min(input),
        output,
        reasoning: reasoning.min(output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    fn usage(json: &str) -> Option<TokenUsage> {
        read(json.as_bytes()).and_then(|f| f.usage)
    }

    #[test]
    fn reads_chat_completions_usage() {
        let v = r#"{"choices":[{"index":0}],"usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
            "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}}}"#;
        assert_eq!(
            usage(v),
            Some(TokenUsage {
                input: 12,
                cached_input: 4,
                output: 7,
                reasoning: 2
            })
        );
        assert_eq!(read(v.as_bytes()).unwrap().choices_empty, Some(false));
    }

    #[test]
    fn reads_responses_api_and_embeddings_usage() {
        let v = r#"{"type": "response.completed", "response": {"model": "gpt-4o", "usage": {"input_tokens": 5, "output_tokens": 9,
            "input_tokens_details": {"cached_tokens": 1}, "output_tokens_details": {"reasoning_tokens": 3}}}}"#;
        let found = read(v.as_bytes()).unwrap();
        assert_eq!(
            found.usage,
            Some(TokenUsage {
                input: 5,
                cached_input: 1,
                output: 9,
                reasoning: 3
            })
        );
        assert_eq!(found.model.as_deref(), Some("gpt-4o"));
        assert_eq!(
            usage(r#"{"usage": {"prompt_tokens": 8, "total_tokens": 8}}"#),
            Some(TokenUsage {
                input: 8,
                ..Default::default()
            })
        );
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            "[ -~\\\\\"\n\u{e9}\u{1F600}]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z\"{}\\[\\]]{0,6}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn the_member_walk_agrees_with_full_deserialization(
            filler in json_value(),
            choices in proptest::collection::vec(json_value(), 0..4),
            tokens in proptest::option::of((0i64..1_000_000, 0i64..1_000_000)),
            model in proptest::option::of("[a-z0-9.-]{1,12}"),
            nested in proptest::bool::ANY,
            pretty in proptest::bool::ANY,
        ) {
            let mut top = serde_json::Map::new();
            top.insert("id".into(), filler.clone());
            top.insert("choices".into(), serde_json::Value::Array(choices));
            if let Some(m) = &model {
                top.insert("model".into(), m.clone().into());
            }
            let usage = tokens.map(|(i, o)| serde_json::json!({
                "prompt_tokens": i, "completion_tokens": o, "note": filler.clone()
            }));
            if let Some(u) = usage {
                if nested {
                    top.insert("response".into(), serde_json::json!({"usage": u, "x": filler}));
                } else {
                    top.insert("usage".into(), u);
                }
            }
            let json = if pretty {
                serde_json::to_vec_pretty(&top).unwrap()
            } else {
                serde_json::to_vec(&top).unwrap()
            };
            proptest::prop_assert_eq!(read(&json), read_decoding(&json));
            // Cut anywhere, the walk never panics.
            for cut in [json.len() / 3, json.len() / 2, json.len() - 1] {
                let _ = read(&json[..cut]);
            }
        }
    }

    proptest::proptest! {
        /// Known members with values of every type, nested details, unknown
        /// members: the hand-written reader gives serde's answer.
        #[test]
        fn usage_is_read_as_serde_reads_it(
            members in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "prompt_tokens", "input_tokens", "completion_tokens", "output_tokens",
                        "prompt_tokens_details", "input_tokens_details",
                        "completion_tokens_details", "output_tokens_details", "total_tokens",
                    ]),
                    proptest::prop_oneof![
                        json_value(),
                        (0i64..1_000_000).prop_map(serde_json::Value::from),
                        (
                            proptest::option::of(0i64..1_000),
                            proptest::option::of(0i64..1_000),
                            json_value(),
                        )
                            .prop_map(|(c, r, x)| serde_json::json!({
                                "cached_tokens": c, "reasoning_tokens": r, "x": x
                            })),
                    ],
                ),
                0..8,
            ),
        ) {
            // serde also reads a struct from an array, by position; no upstream
            // sends details that way, and the reader does not (usage is then None).
            proptest::prop_assume!(!members.iter().any(|(k, v)| k.ends_with("_details") && v.is_array()));
            let obj: serde_json::Map<String, serde_json::Value> =
                members.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let json = serde_json::to_vec(&obj).unwrap();
            let ours = usage_of(&json).map(tokens);
            let serde = serde_json::from_slice::<Option<Usage>>(&json).ok().flatten().map(tokens);
            proptest::prop_assert_eq!(ours, serde);
        }
    }

    #[test]
    fn a_repeated_or_mistyped_usage_member_makes_usage_unreadable() {
        for json in [
            r#"{"usage": {"prompt_tokens": 1, "prompt_tokens": 2}}"#,
            r#"{"usage": {"prompt_tokens": "1"}}"#,
            r#"{"usage": {"prompt_tokens": 1.5}}"#,
            r#"{"usage": {"prompt_tokens_details": {"cached_tokens": 1, "cached_tokens": 1}}}"#,
            r#"{"usage": {"prompt_tokens": 1 "completion_tokens": 2}}"#,
        ] {
            assert_eq!(usage(json), None, "{json}");
            #[derive(serde::Deserialize)]
            struct Top {
                #[allow(dead_code, reason = "only whether it parses matters")]
                usage: Option<Usage>,
            }
            assert!(
                serde_json::from_str::<Top>(json).is_err(),
                "serde agrees: {json}"
            );
        }
        assert_eq!(
            usage(
                r#"{"usage": {"prompt_tokens": null, "completion_tokens": 3, "x": [1, {"y": "}"}]}}"#
            ),
            Some(TokenUsage {
                output: 3,
                ..Default::default()
            })
        );
    }

    #[test]
    fn null_missing_or_malformed_usage_is_none() {
        assert_eq!(usage(r#"{"usage": null}"#), None);
        assert_eq!(usage(r#"{"choices": []}"#), None);
        assert_eq!(read(b"[1,2]"), None);
        assert_eq!(read(b"not json"), None);
    }
}
