//! Reading token usage out of upstream responses, whatever their shape.
//!
//! Typed deserialization with every other field skipped: reading usage from a
//! response never builds a JSON tree.

use keyward_core::TokenUsage;
use serde::de::IgnoredAny;
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

#[derive(Deserialize)]
struct Inner {
    usage: Option<Usage>,
    model: Option<String>,
}

#[derive(Deserialize)]
struct Envelope {
    usage: Option<Usage>,
    model: Option<String>,
    /// The Responses API's final stream event nests the response.
    response: Option<Inner>,
    choices: Option<Vec<IgnoredAny>>,
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
    let e: Envelope = serde_json::from_slice(json).ok()?;
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

    #[test]
    fn null_missing_or_malformed_usage_is_none() {
        assert_eq!(usage(r#"{"usage": null}"#), None);
        assert_eq!(usage(r#"{"choices": []}"#), None);
        assert_eq!(read(b"[1,2]"), None);
        assert_eq!(read(b"not json"), None);
    }
}
