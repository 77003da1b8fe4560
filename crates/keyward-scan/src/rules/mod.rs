//! Detection rules as data.
//!
//! Each provider has one TOML file under `crates/keyward-scan/rules/`, embedded
//! in the binary (see [`builtin`]). A file looks like:
//!
//! ```toml
//! provider = "OpenAI"
//!
//! [[rules]]
//! id = "openai.project-key"
//! name = "OpenAI project API key"
//! pattern = '''\bsk-proj-[A-Za-z0-9_-]{20,200}T3BlbkFJ[A-Za-z0-9_-]{20,200}'''
//! keywords = ["sk-proj-"]
//! examples = ["..."]
//! negative_examples = ["..."]
//! ```
//!
//! Fields: `id` (stable, `provider.kind`), `name`, `pattern` (a byte regex,
//! ASCII semantics; when it has a capture group named `secret`, that group is
//! the secret, otherwise the whole match), `keywords` (literals, matched
//! case-insensitively by the prefilter — every match must contain one),
//! `min_entropy` (Shannon bits per byte of the secret), `validator`
//! (`crc32-base62`), `generic` (a broad rule that yields to specific ones and
//! gets the extra context checks), `references`, `examples`, `negative_examples`.

pub mod builtin;
mod check;
mod lead;
mod validator;

pub use check::{check, CheckFailure};
pub use validator::ValidatorKind;

use regex_automata::meta;
use regex_automata::util::syntax;
use regex_syntax::hir::{Hir, HirKind};
use serde::Deserialize;
use std::sync::OnceLock;

use crate::ScanError;

/// The longest secret a rule may match, in bytes. The scanner's block overlap is
/// larger than this, so no secret is lost at a block boundary.
pub const MAX_SECRET_LEN: usize = 16 * 1024;

/// A rule as written in a rules file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Stable id, e.g. `github.classic-pat`.
    pub id: String,
    /// Human name.
    pub name: String,
    /// The regex.
    pub pattern: String,
    /// Prefilter literals (case-insensitive); at least one.
    pub keywords: Vec<String>,
    /// Minimum Shannon entropy of the secret, bits per byte.
    #[serde(default)]
    pub min_entropy: Option<f64>,
    /// The longest match, in bytes, for a pattern whose body is too long to
    /// spell as a counted repetition: `[…]{64,12000}` unrolls into 12,000
    /// NFA states, forward and reverse, and took 8–11 ms to build. With
    /// `max_len` set, the pattern's open repetitions stay open (see
    /// [`REPETITION_CAP`]) and the matcher's window, `max_len` past the
    /// keyword, bounds the match instead.
    #[serde(default)]
    pub max_len: Option<usize>,
    /// Optional checksum validator.
    #[serde(default)]
    pub validator: Option<ValidatorKind>,
    /// A broad rule: yields to specific rules on overlap and must pass the
    /// context checks that keep ordinary code quiet.
    #[serde(default)]
    pub generic: bool,
    /// Documentation links.
    #[serde(default)]
    pub references: Vec<String>,
    /// Texts that must produce a finding for this rule.
    #[serde(default)]
    pub examples: Vec<String>,
    /// Texts that must not produce a finding for this rule.
    #[serde(default)]
    pub negative_examples: Vec<String>,
}

/// A rules file: one provider, many rules.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// The provider the rules are about.
    pub provider: String,
    /// The rules.
    pub rules: Vec<RuleSpec>,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule as written.
    pub spec: RuleSpec,
    /// The provider (from its file).
    pub provider: String,
    /// `spec.id` shared cheaply with findings.
    pub id: std::sync::Arc<str>,
    /// `spec.name` shared cheaply with findings.
    pub name: std::sync::Arc<str>,
    /// The pattern, parsed and compiled on first use (see [`Rule::compiled`]).
    compiled: OnceLock<Compiled>,
}

/// What a rule's pattern compiles to.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub regex: meta::Regex,
    /// Index of the capture group holding the secret (0 = whole match).
    pub secret_group: usize,
    /// Index of a capture group named `user`: a secret equal to it is a
    /// default credential, not a finding.
    pub user_group: Option<usize>,
    /// The longest text the whole pattern can match (`None` when unbounded),
    /// so that the matcher can search only that far past a keyword hit.
    pub max_match_len: Option<usize>,
    /// What the pattern's matches begin with, when it shows that, so that
    /// the matcher can skip hits no match can begin around and start the
    /// search at the beginning (see [`lead`]).
    pub leads: Option<lead::Leads>,
}

impl Compiled {
    /// Parses `spec`'s pattern, caps its open repetitions (unless it sets
    /// `max_len`) and builds its regex.
    fn new(spec: &RuleSpec) -> Result<Self, String> {
        let syntax = syntax::Config::new().unicode(false).utf8(false);
        let hir = syntax::parse_with(&spec.pattern, &syntax).map_err(|e| e.to_string())?;
        let hir = match spec.max_len {
            Some(_) => hir,
            None => cap_repetitions(hir),
        };
        let bound = hir.properties().maximum_len();
        let keywords: Vec<String> = spec
            .keywords
            .iter()
            .map(|k| k.to_ascii_lowercase())
            .collect();
        Ok(Self {
            leads: lead::Leads::of(&hir, &keywords),
            secret_group: capture_index(&hir, "secret").unwrap_or(0),
            user_group: capture_index(&hir, "user"),
            max_match_len: match (spec.max_len, bound) {
                (Some(declared), Some(bound)) => Some(declared.min(bound)),
                (declared, bound) => declared.or(bound),
            },
            regex: build_regex(&hir)?,
        })
    }
}

impl Rule {
    /// Compiles one rule, reporting a pattern that does not build.
    pub fn compile(spec: RuleSpec, provider: &str) -> Result<Self, ScanError> {
        let rule = Self::parse(spec, provider)?;
        let compiled = Compiled::new(&rule.spec).map_err(|e| ScanError::Rule {
            rule_id: rule.spec.id.clone(),
            message: format!("bad pattern: {e}"),
        })?;
        rule.compiled
            .set(compiled)
            .expect("a new rule is not compiled yet");
        Ok(rule)
    }

    /// Checks one rule's keywords and defers parsing and building its
    /// pattern to its first use: most built-in rules never see their keyword
    /// in a given scan, and parsing and building all 200-odd patterns would
    /// be most of a small scan's time (and, before the walk starts, time
    /// during which only one core works). Only for rules whose patterns are
    /// known to build (the built-in ones, which the tests build).
    fn parse(spec: RuleSpec, provider: &str) -> Result<Self, ScanError> {
        if spec.keywords.is_empty() || spec.keywords.iter().any(|k| k.len() < 2) {
            return Err(ScanError::Rule {
                rule_id: spec.id.clone(),
                message: "needs keywords of at least 2 bytes".into(),
            });
        }
        Ok(Self {
            provider: provider.to_string(),
            id: spec.id.as_str().into(),
            name: spec.name.as_str().into(),
            spec,
            compiled: OnceLock::new(),
        })
    }

    /// The rule's compiled pattern.
    pub(crate) fn compiled(&self) -> &Compiled {
        self.compiled.get_or_init(|| {
            Compiled::new(&self.spec)
                .unwrap_or_else(|e| panic!("built-in rule {} does not build: {e}", self.spec.id))
        })
    }
}

/// Builds a rule's regex; the error is the build error's message.
fn build_regex(hir: &Hir) -> Result<meta::Regex, String> {
    meta::Regex::builder()
        // No one-pass DFA: building it for the rules' long counted
        // repetitions was half of all regex build time, and it only speeds up
        // resolving captures of a match, which is rare (the lazy DFA finds
        // matches; the backtracker or PikeVM then resolves their groups).
        .configure(meta::Config::new().utf8_empty(false).onepass(false))
        .build_from_hir(hir)
        .map_err(|e| e.to_string())
}

/// The group index of the capture named `name` (as the compiled regex
/// numbers its groups: 0 is the whole match, then captures in order).
fn capture_index(hir: &Hir, name: &str) -> Option<usize> {
    match hir.kind() {
        HirKind::Capture(cap) if cap.name.as_deref() == Some(name) => Some(cap.index as usize),
        HirKind::Capture(cap) => capture_index(&cap.sub, name),
        HirKind::Repetition(rep) => capture_index(&rep.sub, name),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => {
            subs.iter().find_map(|h| capture_index(h, name))
        }
        HirKind::Empty | HirKind::Literal(_) | HirKind::Class(_) | HirKind::Look(_) => None,
    }
}

/// How many times more than its minimum an open-ended repetition (`*`, `+`,
/// `{n,}`) of a rule's pattern may repeat.
///
/// Every rule is compiled with its open repetitions capped (unless it
/// declares its own [`RuleSpec::max_len`]), so that every
/// pattern has a bounded match length and the matcher searches only that far
/// past a keyword hit (see [`crate::matcher`]) instead of the 16 KiB fallback.
/// Open repetitions in rules are runs of whitespace between a name and its
/// value (`key\s*=\s*"…"`), URL schemes and netrc fields; none is legitimately
/// longer than this. A value written more than 64 blanks after its `=` is no
/// longer found: a deliberate trade of that corner for a scan several times
/// faster on source code, where `key` and `token` occur every few KiB.
/// (It was 256 until the 74 `\s*` of the rules, each unrolled into as many
/// NFA states forward and reverse, were measured at a third of the time spent
/// building regexes; gitleaks' generic rule allows 5 blanks.)
pub const REPETITION_CAP: u32 = 64;

/// `hir` with every open-ended repetition bounded by [`REPETITION_CAP`].
fn cap_repetitions(hir: Hir) -> Hir {
    match hir.into_kind() {
        HirKind::Repetition(mut rep) => {
            rep.sub = Box::new(cap_repetitions(*rep.sub));
            if rep.max.is_none() {
                rep.max = Some(rep.min.saturating_add(REPETITION_CAP));
            }
            Hir::repetition(rep)
        }
        HirKind::Capture(mut cap) => {
            cap.sub = Box::new(cap_repetitions(*cap.sub));
            Hir::capture(cap)
        }
        HirKind::Concat(subs) => Hir::concat(subs.into_iter().map(cap_repetitions).collect()),
        HirKind::Alternation(subs) => {
            Hir::alternation(subs.into_iter().map(cap_repetitions).collect())
        }
        HirKind::Empty => Hir::empty(),
        HirKind::Literal(lit) => Hir::literal(lit.0),
        HirKind::Class(class) => Hir::class(class),
        HirKind::Look(look) => Hir::look(look),
    }
}

/// An ordered set of compiled rules. Order matters only to break ties when two
/// rules of equal priority match the same text: the earlier rule wins.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    /// The rules shipped with keyward.
    pub fn builtin() -> Result<Self, ScanError> {
        let mut set = Self::default();
        for (file, text) in builtin::FILES {
            set.add_rules_file(file, text, Rule::parse)?;
        }
        Ok(set)
    }

    /// Adds every rule of a TOML rules file. Ids must stay unique.
    pub fn add_toml(&mut self, file: &str, text: &str) -> Result<(), ScanError> {
        self.add_rules_file(file, text, Rule::compile)
    }

    fn add_rules_file(
        &mut self,
        file: &str,
        text: &str,
        compile: fn(RuleSpec, &str) -> Result<Rule, ScanError>,
    ) -> Result<(), ScanError> {
        let parsed: RuleFile = toml::from_str(text).map_err(|e| ScanError::RuleFile {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        for spec in parsed.rules {
            self.add(compile(spec, &parsed.provider)?)?;
        }
        Ok(())
    }

    /// Adds one compiled rule.
    pub fn add(&mut self, rule: Rule) -> Result<(), ScanError> {
        if self.rules.iter().any(|r| r.spec.id == rule.spec.id) {
            return Err(ScanError::Rule {
                rule_id: rule.spec.id.clone(),
                message: "duplicate rule id".into(),
            });
        }
        self.rules.push(rule);
        Ok(())
    }

    /// Removes the rules with these ids (a `.keyward.toml` can disable rules).
    pub fn disable(&mut self, ids: &[String]) {
        self.rules.retain(|r| !ids.contains(&r.spec.id));
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rules_build_lazily_with_the_groups_their_regex_numbers() {
        let rules = RuleSet::builtin().unwrap();
        assert!(rules.rules().iter().all(|r| r.compiled.get().is_none()));
        for rule in rules.rules() {
            let compiled = rule.compiled();
            let info = compiled.regex.group_info();
            let index = |name| info.to_index(regex_automata::PatternID::ZERO, name);
            assert_eq!(
                index("secret").unwrap_or(0),
                compiled.secret_group,
                "{}",
                rule.spec.id
            );
            assert_eq!(index("user"), compiled.user_group, "{}", rule.spec.id);
        }
    }

    #[test]
    fn custom_rules_with_a_regex_too_large_to_build_are_refused_up_front() {
        let spec = RuleSpec {
            id: "custom.huge".into(),
            name: "huge".into(),
            pattern: r"key(?:\w{1000}){1000}".into(),
            keywords: vec!["key".into()],
            min_entropy: None,
            max_len: None,
            validator: None,
            generic: false,
            references: vec![],
            examples: vec![],
            negative_examples: vec![],
        };
        assert!(Rule::compile(spec, "custom").is_err());
    }
}
