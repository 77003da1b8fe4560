//! The price table: USD per 1M tokens in, integer micro-dollars out.

use crate::money::Micros;
use serde::Deserialize;
use std::collections::BTreeMap;

const EMBEDDED: &str = include_str!("prices.toml");

/// Tokens used by one request, as the upstream reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// All input tokens, cached ones included (OpenAI's `prompt_tokens`).
    pub input: i64,
    /// The part of `input` served from the prompt cache.
    pub cached_input: i64,
    /// Output tokens, reasoning included (OpenAI's `completion_tokens`).
    pub output: i64,
    /// The part of `output` spent on reasoning.
    pub reasoning: i64,
}

/// One model's prices, kept as micro-dollars per million tokens so that cost is
/// integer arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelPrice {
    /// Input, micro-dollars per 1M tokens.
    pub input: i64,
    /// Cached input, micro-dollars per 1M tokens.
    pub cached_input: i64,
    /// Output, micro-dollars per 1M tokens.
    pub output: i64,
    /// The model's output token limit, when known.
    pub max_output_tokens: Option<i64>,
}

impl ModelPrice {
    /// Cost of `usage`, rounded up to the next micro-dollar so that budgets err on
    /// the side of the payer.
    pub fn cost(&self, usage: &TokenUsage) -> Micros {
        let cached = usage.cached_input.clamp(0, usage.input.max(0));
        let uncached = usage.input.max(0) - cached;
        let per_million = i128::from(uncached) * i128::from(self.input)
            + i128::from(cached) * i128::from(self.cached_input)
            + i128::from(usage.output.max(0)) * i128::from(self.output);
        let micros = (per_million + 999_999) / 1_000_000;
        Micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }
}

/// Why a price file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PricesError {
    /// Not valid TOML of the expected shape.
    #[error("invalid price table: {0}")]
    Parse(#[from] toml::de::Error),
    /// A price that is negative or not a number.
    #[error("invalid price for model {model:?}: prices must be finite and non-negative")]
    Invalid {
        /// The model with the bad price.
        model: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    #[serde(default)]
    models: BTreeMap<String, PriceEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceEntry {
    input_per_million: f64,
    cached_input_per_million: Option<f64>,
    output_per_million: f64,
    max_output_tokens: Option<i64>,
}

/// Prices per model name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceTable {
    models: BTreeMap<String, ModelPrice>,
}

impl PriceTable {
    /// The table shipped in the binary.
    pub fn embedded() -> Self {
        Self::parse(EMBEDDED).expect("the embedded price table is valid")
    }

    /// Parses a price file.
    pub fn parse(text: &str) -> Result<Self, PricesError> {
        let file: PriceFile = toml::from_str(text)?;
        let mut models = BTreeMap::new();
        for (name, e) in file.models {
            let to_micros = |usd: f64| {
                (0.0..1e6)
                    .contains(&usd)
                    .then(|| (usd * 1e6).round() as i64)
            };
            let invalid = || PricesError::Invalid {
                model: name.clone(),
            };
            let input = to_micros(e.input_per_million).ok_or_else(invalid)?;
            let price = ModelPrice {
                input,
                cached_input: match e.cached_input_per_million {
                    Some(p) => to_micros(p).ok_or_else(invalid)?,
                    None => input,
                },
                output: to_micros(e.output_per_million).ok_or_else(invalid)?,
                max_output_tokens: e.max_output_tokens.filter(|&n| n > 0),
            };
            models.insert(name, price);
        }
        Ok(Self { models })
    }

    /// This table with every model of `overrides` added or replaced.
    pub fn extended_with(mut self, overrides: PriceTable) -> Self {
        self.models.extend(overrides.models);
        self
    }

    /// The price of `model`: an exact entry, else the longest listed prefix followed
    /// by `-` (so `gpt-4o-mini-2024-07-18` is priced as `gpt-4o-mini`, not `gpt-4o`).
    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        if let Some(p) = self.models.get(model) {
            return Some(p);
        }
        self.models
            .iter()
            .filter(|(name, _)| {
                model.len() > name.len()
                    && model.starts_with(name.as_str())
                    && model.as_bytes()[name.len()] == b'-'
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| p)
    }

    /// Number of models listed.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// True when no model is listed.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_table_prices_current_models() {
        let t = PriceTable::embedded();
        let mini = t.get("gpt-4o-mini").unwrap();
        assert_eq!(
            (mini.input, mini.cached_input, mini.output),
            (150_000, 75_000, 600_000)
        );
        assert_eq!(t.get("gpt-4o-mini-2024-07-18"), Some(mini));
        assert_eq!(t.get("gpt-4o-2024-08-06"), t.get("gpt-4o"));
        assert!(t.get("gpt-4omni").is_none());
        assert!(t.get("unknown").is_none());
    }

    #[test]
    fn cost_is_integer_and_rounds_up() {
        let p = PriceTable::embedded().get("gpt-4o-mini").copied().unwrap();
        // 1000 input (200 cached) + 500 output:
        // 800*0.15 + 200*0.075 + 500*0.60 = 120 + 15 + 300 = 435 micro-dollars.
        let u = TokenUsage {
            input: 1000,
            cached_input: 200,
            output: 500,
            reasoning: 0,
        };
        assert_eq!(p.cost(&u), Micros(435));
        // One input token costs 0.15 micro-dollars: rounded up to 1.
        assert_eq!(
            p.cost(&TokenUsage {
                input: 1,
                ..Default::default()
            }),
            Micros(1)
        );
        assert_eq!(p.cost(&TokenUsage::default()), Micros(0));
    }

    #[test]
    fn override_file_extends_and_replaces() {
        let o = PriceTable::parse(
            "[models.\"gpt-4o-mini\"]\ninput_per_million = 1.0\noutput_per_million = 2.0\n\
             [models.custom]\ninput_per_million = 3\ncached_input_per_million = 1\noutput_per_million = 4\n",
        )
        .unwrap();
        let t = PriceTable::embedded().extended_with(o);
        let mini = t.get("gpt-4o-mini").unwrap();
        assert_eq!(
            (mini.input, mini.cached_input, mini.output),
            (1_000_000, 1_000_000, 2_000_000)
        );
        assert_eq!(t.get("custom").unwrap().cached_input, 1_000_000);
    }

    #[test]
    fn bad_price_files_are_refused() {
        assert!(
            PriceTable::parse("[models.x]\ninput_per_million = -1\noutput_per_million = 1")
                .is_err()
        );
        assert!(PriceTable::parse("[models.x]\ninput_per_million = 1").is_err());
        assert!(
            PriceTable::parse("[models.x]\ninput_per_milion = 1\noutput_per_million = 1").is_err()
        );
        assert!(PriceTable::parse("not toml").is_err());
    }
}
