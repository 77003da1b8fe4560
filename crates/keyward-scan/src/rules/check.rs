//! `keyward rules check`: every rule's examples must be found by that rule
//! through the whole pipeline (prefilter, regex, value checks), and none of its
//! negative examples may be.

use crate::matcher::{Matcher, ValueAllowlist};
use crate::rules::RuleSet;

/// One failed example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    /// The rule.
    pub rule_id: String,
    /// What went wrong.
    pub message: String,
}

/// Checks every rule of `rules` against its own examples. Returns the
/// failures (empty when every example holds).
pub fn check(rules: &RuleSet) -> Vec<CheckFailure> {
    let matcher = Matcher::new(rules.clone(), ValueAllowlist::default());
    let mut scratch = matcher.scratch();
    let mut failures = Vec::new();
    for (i, rule) in rules.rules().iter().enumerate() {
        let fail = |message: String| CheckFailure {
            rule_id: rule.spec.id.clone(),
            message,
        };
        if rule.spec.examples.is_empty() {
            failures.push(fail("has no examples".into()));
        }
        if rule.spec.negative_examples.is_empty() {
            failures.push(fail("has no negative examples".into()));
        }
        for example in &rule.spec.examples {
            let lower = example.to_ascii_lowercase();
            if !rule
                .spec
                .keywords
                .iter()
                .any(|k| lower.contains(&k.to_ascii_lowercase()))
            {
                failures.push(fail(format!(
                    "example contains none of the keywords: {example:?}"
                )));
                continue;
            }
            let found = matcher.find(&mut scratch, example.as_bytes());
            if !found.iter().any(|m| m.rule == i) {
                let other: Vec<&str> = found
                    .iter()
                    .map(|m| rules.rules()[m.rule].spec.id.as_str())
                    .collect();
                failures.push(fail(format!(
                    "example not found: {example:?} (found by: {other:?})"
                )));
            }
        }
        for negative in &rule.spec.negative_examples {
            let found = matcher.find(&mut scratch, negative.as_bytes());
            if found.iter().any(|m| m.rule == i) {
                failures.push(fail(format!("negative example found: {negative:?}")));
            }
        }
    }
    failures
}
