//! Reading token usage out of upstream responses, whatever their shape.

use keyward_core::TokenUsage;
use serde_json::Value;

/// Token usage in a response object: chat/completions and embeddings
/// (`usage.prompt_tokens`…), the Responses API (`usage.input_tokens`…), and a
/// Responses stream's final event (`response.usage`). `None` when absent or null.
pub fn usage_in(value: &Value) -> Option<TokenUsage> {
    let usage = value.get("usage").filter(|u| u.is_object()).or_else(|| {
        value
            .get("response")
            .and_then(|r| r.get("usage"))
            .filter(|u| u.is_object())
    })?;
    let int = |v: Option<&Value>| v.and_then(Value::as_i64).unwrap_or(0).max(0);
    let input = int(usage
        .get("prompt_tokens")
        .or_else(|| usage.get("input_tokens")));
    let output = int(usage
        .get("completion_tokens")
        .or_else(|| usage.get("output_tokens")));
    let cached = int(usage
        .get("prompt_tokens_details")
        .or_else(|| usage.get("input_tokens_details"))
        .and_then(|d| d.get("cached_tokens")));
    let reasoning = int(usage
        .get("completion_tokens_details")
        .or_else(|| usage.get("output_tokens_details"))
        .and_then(|d| d.get("reasoning_tokens")));
    Some(TokenUsage {
        input,
        cached_input: cached.min(input),
        output,
        reasoning: reasoning.min(output),
    })
}

/// The model a response names, if any.
pub fn model_in(value: &Value) -> Option<&str> {
    value
        .get("model")
        .or_else(|| value.get("response").and_then(|r| r.get("model")))
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_chat_completions_usage() {
        let v = json!({"usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
            "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}}});
        assert_eq!(
            usage_in(&v),
            Some(TokenUsage {
                input: 12,
                cached_input: 4,
                output: 7,
                reasoning: 2
            })
        );
    }

    #[test]
    fn reads_responses_api_and_embeddings_usage() {
        let v = json!({"type": "response.completed", "response": {"model": "gpt-4o", "usage": {"input_tokens": 5, "output_tokens": 9,
            "input_tokens_details": {"cached_tokens": 1}, "output_tokens_details": {"reasoning_tokens": 3}}}});
        assert_eq!(
            usage_in(&v),
            Some(TokenUsage {
                input: 5,
                cached_input: 1,
                output: 9,
                reasoning: 3
            })
        );
        assert_eq!(model_in(&v), Some("gpt-4o"));
        let e = json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}});
        assert_eq!(
            usage_in(&e),
            Some(TokenUsage {
                input: 8,
                ..Default::default()
            })
        );
    }

    #[test]
    fn null_or_missing_usage_is_none() {
        assert_eq!(usage_in(&json!({"usage": null})), None);
        assert_eq!(usage_in(&json!({"choices": []})), None);
    }
}
