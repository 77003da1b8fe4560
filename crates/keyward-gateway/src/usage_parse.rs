//! Reading token usage out of upstream responses, whatever their shape.
//!
//! The top level of the response is walked without parsing: strings and
//! brackets are skipped byte by byte to find the `usage`, `model`, `response`
//! and `choices` members, and only those values are deserialized (typed, every
//! other field skipped). A chat completion's `choices` (the generated text) is
//! the bulk of a response and is never decoded; measured, this cut the cost of
//! reading usage by more than half against deserializing the whole envelope.

use keyward_core::TokenUsage;
use serde::Deserialize;

#[derive(Deserialize, Default)]
struct Details {
    cached_tokens: Option<i64>,
    reasoning_tokens: Option<i64>,
}

#[derive(Deserialize)]
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
    /// Number of `choices`, when present.
    pub choices: Option<usize>,
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
        choices: top.choices,
    })
}

/// The members of an object that matter for usage; the rest stay unread.
struct Envelope<'a> {
    usage: Option<Usage>,
    model: Option<String>,
    /// The Responses API's final stream event nests the response (raw).
    response: Option<&'a [u8]>,
    choices: Option<usize>,
}

impl<'a> Envelope<'a> {
    fn of(json: &'a [u8]) -> Option<Self> {
        let mut e = Self {
            usage: None,
            model: None,
            response: None,
            choices: None,
        };
        for (key, value) in Members::of(json)? {
            match key {
                b"usage" => e.usage = serde_json::from_slice(value).ok().flatten(),
                b"model" => e.model = serde_json::from_slice(value).ok().flatten(),
                b"response" => e.response = Some(value),
                b"choices" => e.choices = array_len(value),
                _ => {}
            }
        }
        Some(e)
    }
}

/// The members of a JSON object, as raw key bytes (without quotes) and raw
/// value bytes. Stops (yielding nothing more) at the first malformed byte.
struct Members<'a> {
    json: &'a [u8],
    at: usize,
    done: bool,
}

impl<'a> Members<'a> {
    /// `None` when `json` does not start with an object.
    fn of(json: &'a [u8]) -> Option<Self> {
        let at = skip_ws(json, 0);
        (json.get(at) == Some(&b'{')).then_some(Self {
            json,
            at: at + 1,
            done: false,
        })
    }

    fn next_member(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        let b = self.json;
        let mut i = skip_ws(b, self.at);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(b, i)?;
        let key = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, i + 1);
        let end = skip_value(b, start)?;
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => self.at = i + 1,
            Some(b'}') => self.done = true,
            _ => return None,
        }
        Some((key, &b[start..end]))
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let member = self.next_member();
        if member.is_none() {
            self.done = true;
        }
        member
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// End (exclusive) of the string whose opening quote is at `i`. (`memchr2`
/// measured faster here than an inline loop even for short keys.)
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let k = j + memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[k] == b'\\' {
            j = k + 2;
        } else {
            return Some(k + 1);
        }
    }
}

/// End (exclusive) of the value starting at `i`, skipped without parsing.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while let Some(&c) = b.get(j) {
                match c {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let len = b[i..]
                .iter()
                .position(|&c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace())
                .unwrap_or(b.len() - i);
            (len > 0).then_some(i + len)
        }
    }
}

/// Number of elements of a JSON array given raw; `None` when not an array.
fn array_len(raw: &[u8]) -> Option<usize> {
    if raw.first() != Some(&b'[') {
        return None;
    }
    let mut i = skip_ws(raw, 1);
    let mut n = 0;
    while raw.get(i).is_some_and(|&c| c != b']') {
        i = skip_ws(raw, skip_value(raw, i)?);
        n += 1;
        if raw.get(i) == Some(&b',') {
            i = skip_ws(raw, i + 1);
        }
    }
    Some(n)
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
        assert_eq!(read(v.as_bytes()).unwrap().choices, Some(1));
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

    /// The reference: the whole envelope deserialized (what `read` did before
    /// the member walk).
    fn read_by_deserializing(json: &[u8]) -> Option<Found> {
        #[derive(Deserialize)]
        struct Inner {
            usage: Option<Usage>,
            model: Option<String>,
        }
        #[derive(Deserialize)]
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
            choices: e.choices.map(|c| c.len()),
        })
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
            proptest::prop_assert_eq!(read(&json), read_by_deserializing(&json));
            // Cut anywhere, the walk never panics.
            for cut in [json.len() / 3, json.len() / 2, json.len() - 1] {
                let _ = read(&json[..cut]);
            }
        }
    }

    #[test]
    fn null_missing_or_malformed_usage_is_none() {
        assert_eq!(usage(r#"{"usage": null}"#), None);
        assert_eq!(usage(r#"{"choices": []}"#), None);
        assert_eq!(read(b"[1,2]"), None);
        assert_eq!(read(b"not json"), None);
    }
}
