//! The two-stage matcher.
//!
//! Stage one finds every place where a keyword of a rule starts (all keywords
//! of all rules at once, ASCII case-insensitive; the crate's `keywords`
//! module) and keeps the longest keyword at each. Only rules whose keyword
//! occurs in the haystack go to stage two, where that rule's own regex finds
//! the match and its captures — and only in windows around the keyword hits
//! (`WINDOW_BACK` bytes before a hit to the longest match the rule's pattern
//! allows after it, at most `WINDOW_FORWARD`; overlapping windows merged), so
//! a keyword costs at most a few hundred bytes of regex work for most rules,
//! not a pass over the whole block.
//! Then the secret passes the value checks (entropy, placeholders, checksum
//! validator, generic-rule context) and overlapping matches are resolved so
//! that each secret location is reported once, by the most specific rule.
//!
//! A [`Matcher`] is shared by all threads; each thread owns a [`Scratch`] (regex
//! caches, capture slots, the triggered-rule set) so that matching allocates
//! nothing in steady state and threads never contend.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use regex_automata::meta;
use regex_automata::util::captures::Captures;
use regex_automata::Input;

use crate::filter;
use crate::keywords::KeywordSearch;
use crate::rules::RuleSet;
use crate::Validation;

/// How far before a keyword hit a match may start. Rules keep their keyword
/// near the start of the pattern; `rules::check` proves it for every example.
pub const WINDOW_BACK: usize = 256;

/// How far after a keyword hit a match may end.
pub const WINDOW_FORWARD: usize = crate::rules::MAX_SECRET_LEN + WINDOW_BACK;

/// Extra values and patterns a `.keyward.toml` declares as not secret.
#[derive(Debug, Default, Clone)]
pub struct ValueAllowlist {
    /// Exact values.
    pub values: Vec<Vec<u8>>,
    /// Regexes matched against the whole secret.
    pub patterns: Vec<regex_automata::meta::Regex>,
}

impl ValueAllowlist {
    fn allows(&self, secret: &[u8]) -> bool {
        self.values.iter().any(|v| v == secret) || self.patterns.iter().any(|p| p.is_match(secret))
    }
}

/// A rule match that passed every value check. Offsets are into the haystack
/// given to [`Matcher::find`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawMatch {
    /// Index of the rule in the [`RuleSet`].
    pub rule: usize,
    /// Start of the secret.
    pub start: usize,
    /// End of the secret (exclusive).
    pub end: usize,
    /// Set when a checksum validator confirmed the secret.
    pub validated: Option<Validation>,
}

/// The compiled matcher: rules plus the keyword prefilter.
#[derive(Debug, Clone)]
pub struct Matcher {
    rules: Arc<RuleSet>,
    /// Stage one: where the keywords start.
    prefilter: KeywordSearch,
    /// For each prefilter pattern, the rules it triggers.
    keyword_rules: Vec<Vec<usize>>,
    allow: ValueAllowlist,
}

/// Per-thread scratch space for [`Matcher::find`].
#[derive(Debug)]
pub struct Scratch {
    caches: Vec<Option<meta::Cache>>,
    captures: Vec<Option<Captures>>,
    /// Per rule, the merged haystack windows around its keyword hits.
    windows: Vec<Vec<(usize, usize)>>,
    /// Keyword hits of the current haystack: (start, prefilter pattern).
    hits: Vec<(usize, u32)>,
    triggered: Vec<usize>,
    matches: Vec<RawMatch>,
    kept: Vec<RawMatch>,
}

impl Matcher {
    /// Builds the prefilter over the rules' keywords.
    pub fn new(rules: RuleSet, allow: ValueAllowlist) -> Self {
        let mut keywords: Vec<String> = Vec::new();
        let mut keyword_rules: Vec<Vec<usize>> = Vec::new();
        let mut position: HashMap<String, usize> = HashMap::new();
        for (i, rule) in rules.rules().iter().enumerate() {
            for kw in &rule.spec.keywords {
                let kw = kw.to_ascii_lowercase();
                match position.get(&kw) {
                    Some(&p) => {
                        if !keyword_rules[p].contains(&i) {
                            keyword_rules[p].push(i);
                        }
                    }
                    None => {
                        position.insert(kw.clone(), keywords.len());
                        keywords.push(kw);
                        keyword_rules.push(vec![i]);
                    }
                }
            }
        }
        // `keyword_hits` keeps, at each position, only the longest keyword
        // starting there; a keyword contained in another one must
        // therefore also trigger when the longer one is seen. The keywords
        // inside each keyword are found with one overlapping search, not by
        // testing every pair.
        let mut triggers = keyword_rules.clone();
        let within = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::Standard)
            .build(&keywords)
            .expect("keywords are plain literals and always compile");
        for (i, long) in keywords.iter().enumerate() {
            for hit in within.find_overlapping_iter(long.as_str()) {
                let j = hit.pattern().as_usize();
                if j == i {
                    continue;
                }
                for &r in &keyword_rules[j] {
                    if !triggers[i].contains(&r) {
                        triggers[i].push(r);
                    }
                }
            }
        }
        let keyword_rules = triggers;
        let prefilter = KeywordSearch::new(&keywords);
        Self {
            rules: Arc::new(rules),
            prefilter,
            keyword_rules,
            allow,
        }
    }

    /// The rules this matcher runs.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Fresh scratch space for one thread.
    pub fn scratch(&self) -> Scratch {
        let n = self.rules.len();
        Scratch {
            caches: (0..n).map(|_| None).collect(),
            captures: (0..n).map(|_| None).collect(),
            windows: vec![Vec::new(); n],
            hits: Vec::new(),
            triggered: Vec::new(),
            matches: Vec::new(),
            kept: Vec::new(),
        }
    }

    /// Finds the secrets in `hay`, sorted by start offset, one per location.
    pub fn find<'s>(&self, scratch: &'s mut Scratch, hay: &[u8]) -> &'s [RawMatch] {
        scratch.matches.clear();
        scratch.kept.clear();
        scratch.triggered.clear();
        self.prefilter.hits(hay, &mut scratch.hits);
        for &(hit_start, pattern) in &scratch.hits {
            let hit_end = hit_start + self.prefilter.len_of(pattern);
            let pattern = pattern as usize;
            let far = hit_start + WINDOW_FORWARD;
            for &rule in &self.keyword_rules[pattern] {
                // A match contains a keyword and starts at most `WINDOW_BACK`
                // before it (or where one of the rule's beginnings that the
                // text fits puts it, when the pattern shows its beginnings),
                // so it ends at most its own length past the keyword's end;
                // a rule with a bounded pattern needs no more than that after
                // a hit. (The rule is compiled here, on its first hit, if it
                // was not yet.)
                let compiled = self.rules.rules()[rule].compiled();
                let start = match &compiled.leads {
                    Some(leads) => match leads.start_for(hay, hit_start) {
                        Some(start) => start,
                        // No match of this rule can hold this hit.
                        None => continue,
                    },
                    None => hit_start.saturating_sub(WINDOW_BACK),
                };
                let forward = compiled
                    .max_match_len
                    .map_or(WINDOW_FORWARD, |l| l.min(WINDOW_FORWARD));
                let end = (hit_end + forward).min(far).min(hay.len());
                let windows = &mut scratch.windows[rule];
                match windows.last_mut() {
                    Some(last) if start <= last.1 => {
                        last.0 = last.0.min(start);
                        last.1 = last.1.max(end);
                    }
                    Some(_) => windows.push((start, end)),
                    None => {
                        windows.push((start, end));
                        scratch.triggered.push(rule);
                    }
                }
            }
        }
        if scratch.triggered.is_empty() {
            return &scratch.kept;
        }
        for t in 0..scratch.triggered.len() {
            let rule_idx = scratch.triggered[t];
            let windows = std::mem::take(&mut scratch.windows[rule_idx]);
            for &(start, end) in &windows {
                self.run_rule(scratch, rule_idx, hay, start, end);
            }
            // Give the allocation back for the next haystack.
            scratch.windows[rule_idx] = windows;
            scratch.windows[rule_idx].clear();
        }
        resolve_overlaps(&self.rules, &mut scratch.matches, &mut scratch.kept);
        &scratch.kept
    }

    /// Runs one rule's regex over `hay[start..end]` (the context of
    /// `hay` stays visible to look-arounds such as `\b`).
    fn run_rule(
        &self,
        scratch: &mut Scratch,
        rule_idx: usize,
        hay: &[u8],
        start: usize,
        end: usize,
    ) {
        let rule = &self.rules.rules()[rule_idx];
        let compiled = rule.compiled();
        let regex = &compiled.regex;
        let cache = scratch.caches[rule_idx].get_or_insert_with(|| regex.create_cache());
        let caps = scratch.captures[rule_idx].get_or_insert_with(|| regex.create_captures());
        let mut pos = start;
        while pos <= end {
            let input = Input::new(hay).range(pos..end);
            regex.search_captures_with(cache, &input, caps);
            let Some(whole) = caps.get_match() else { break };
            pos = if whole.end() > whole.start() {
                whole.end()
            } else {
                whole.end() + 1
            };
            let Some(span) = caps.get_group(compiled.secret_group) else {
                continue;
            };
            let secret = &hay[span.start..span.end];
            if secret.is_empty() || secret.len() > crate::rules::MAX_SECRET_LEN {
                continue;
            }
            if let Some(min) = rule.spec.min_entropy {
                if filter::shannon_entropy(secret) < min {
                    continue;
                }
            }
            if filter::is_placeholder(secret) || self.allow.allows(secret) {
                continue;
            }
            // `user:user@host` style credentials are defaults, not secrets.
            if let Some(user) = compiled.user_group.and_then(|g| caps.get_group(g)) {
                if hay[user.start..user.end].eq_ignore_ascii_case(secret) {
                    continue;
                }
            }
            if rule.spec.validator.is_none() && filter::fails_known_checksum(secret) {
                continue;
            }
            if rule.spec.generic && !filter::generic_value_ok(secret) {
                continue;
            }
            let validated = match rule.spec.validator {
                Some(v) if v.validate(secret) => Some(Validation::Checksum),
                Some(_) => continue,
                None => None,
            };
            scratch.matches.push(RawMatch {
                rule: rule_idx,
                start: span.start,
                end: span.end,
                validated,
            });
        }
    }
}

/// Keeps one match per location: specific rules beat generic ones, then the
/// longer match wins, then the earlier rule. Output is sorted by start.
fn resolve_overlaps(rules: &RuleSet, matches: &mut [RawMatch], kept: &mut Vec<RawMatch>) {
    let rules = rules.rules();
    matches.sort_by_key(|m| {
        (
            rules[m.rule].spec.generic,
            usize::MAX - (m.end - m.start),
            m.rule,
            m.start,
        )
    });
    // start -> end of accepted matches, to find overlaps in O(log n).
    let mut accepted: BTreeMap<usize, usize> = BTreeMap::new();
    for m in matches.iter() {
        let overlaps_before = accepted
            .range(..=m.start)
            .next_back()
            .is_some_and(|(_, &end)| end > m.start);
        let overlaps_after = accepted.range(m.start..m.end).next().is_some();
        if !overlaps_before && !overlaps_after {
            accepted.insert(m.start, m.end);
            kept.push(*m);
        }
    }
    kept.sort_by_key(|m| (m.start, m.end, m.rule));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keywords::MIN_STREAMED_LEN;

    fn rule_ids(hay: &str) -> Vec<String> {
        let matcher = Matcher::new(RuleSet::builtin().unwrap(), ValueAllowlist::default());
        let mut scratch = matcher.scratch();
        matcher
            .find(&mut scratch, hay.as_bytes())
            .iter()
            .map(|m| matcher.rules().rules()[m.rule].spec.id.clone())
            .collect()
    }

    /// The keyword hits as a leftmost-longest Aho-Corasick search restarted
    /// one byte after each hit reports them: the reference for
    /// `keyword_hits`, which must report exactly these.
    fn reference_hits(keywords: &[String], hay: &[u8]) -> Vec<(usize, usize)> {
        let ac = aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(keywords)
            .unwrap();
        let mut hits = Vec::new();
        let mut at = 0;
        while let Some(hit) = ac.find(aho_corasick::Input::new(hay).span(at..hay.len())) {
            at = hit.start() + 1;
            hits.push((hit.start(), hit.end() - hit.start()));
        }
        hits
    }

    fn assert_hits_match_reference(matcher: &Matcher, keywords: &[String], hay: &[u8]) {
        let mut hits = Vec::new();
        matcher.prefilter.hits(hay, &mut hits);
        let got: Vec<(usize, usize)> = hits
            .iter()
            .map(|&(start, p)| (start, matcher.prefilter.len_of(p)))
            .collect();
        assert_eq!(got, reference_hits(keywords, hay));
    }

    /// Every byte of `text` with its case flipped at every other letter.
    fn mixed_case(text: &str) -> String {
        text.chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    }

    #[test]
    fn keyword_hits_equal_a_leftmost_longest_search_across_stream_boundaries() {
        let rules = RuleSet::builtin().unwrap();
        let matcher = Matcher::new(rules.clone(), ValueAllowlist::default());
        let keywords = builtin_keywords(&rules);
        // Every keyword, in mixed case, back to back and separated, then all
        // examples: long enough to be walked as several streams.
        let mut text = String::new();
        for kw in &keywords {
            text.push_str(&mixed_case(kw));
            text.push_str(kw);
            text.push(' ');
            text.push_str(&kw.to_ascii_uppercase());
            text.push('\n');
        }
        for rule in rules.rules() {
            for example in rule
                .spec
                .examples
                .iter()
                .chain(&rule.spec.negative_examples)
            {
                text.push_str(example);
                text.push_str(&mixed_case(example));
                text.push('\n');
            }
        }
        assert!(text.len() > MIN_STREAMED_LEN);
        // Shifting the text moves different keywords across the segment
        // boundaries; every prefix length covers short haystacks too.
        for shift in 0..=64 {
            let hay = format!("{}{text}", "x".repeat(shift));
            assert_hits_match_reference(&matcher, &keywords, hay.as_bytes());
        }
        for len in (0..text.len()).step_by(97) {
            assert_hits_match_reference(&matcher, &keywords, &text.as_bytes()[..len]);
        }
    }

    /// The built-in keywords, lower-cased, as `Matcher::new` collects them.
    fn builtin_keywords(rules: &RuleSet) -> Vec<String> {
        let mut keywords: Vec<String> = Vec::new();
        for rule in rules.rules() {
            for kw in &rule.spec.keywords {
                let kw = kw.to_ascii_lowercase();
                if !keywords.contains(&kw) {
                    keywords.push(kw);
                }
            }
        }
        keywords
    }

    #[test]
    fn keyword_hits_equal_aho_corasick_on_random_and_real_text() {
        let rules = RuleSet::builtin().unwrap();
        let matcher = Matcher::new(rules.clone(), ValueAllowlist::default());
        let keywords = builtin_keywords(&rules);
        // Real text: source code and rule files, which hold every keyword
        // and many words that share their first bytes; cut at many lengths
        // so that keywords also run past the end of a haystack.
        for real in [
            include_str!("matcher.rs"),
            include_str!("keywords.rs"),
            include_str!("scanner.rs"),
            include_str!("../rules/aws.toml"),
            include_str!("../rules/generic.toml"),
            include_str!("../rules/private-key.toml"),
        ] {
            let real = real.as_bytes();
            assert_hits_match_reference(&matcher, &keywords, real);
            for len in (0..real.len()).step_by(331) {
                assert_hits_match_reference(&matcher, &keywords, &real[..len]);
                assert_hits_match_reference(&matcher, &keywords, &real[len..]);
            }
        }
        // Random text: keywords in random case, keywords missing their last
        // byte, and arbitrary bytes (non-ASCII included), in haystacks both
        // shorter and longer than `MIN_STREAMED_LEN`.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..300 {
            let target = next(8 * MIN_STREAMED_LEN);
            let mut hay: Vec<u8> = Vec::new();
            while hay.len() < target {
                let kw = keywords[next(keywords.len())].as_bytes();
                let kw = match next(3) {
                    0 => kw,
                    1 => &kw[..kw.len() - 1],
                    _ => &[],
                };
                hay.extend(kw.iter().map(|&b| {
                    if next(2) == 0 {
                        b.to_ascii_uppercase()
                    } else {
                        b
                    }
                }));
                for _ in 0..next(6) {
                    hay.push(next(256) as u8);
                }
            }
            let mut hits = Vec::new();
            matcher.prefilter.hits(&hay, &mut hits);
            let got: Vec<(usize, usize)> = hits
                .iter()
                .map(|&(start, p)| (start, matcher.prefilter.len_of(p)))
                .collect();
            assert_eq!(got, reference_hits(&keywords, &hay), "round {round}");
        }
    }

    #[test]
    fn every_example_is_found_straddling_a_stream_boundary() {
        let rules = RuleSet::builtin().unwrap();
        let matcher = Matcher::new(rules.clone(), ValueAllowlist::default());
        let mut scratch = matcher.scratch();
        let longest = rules
            .rules()
            .iter()
            .flat_map(|r| r.spec.examples.iter().map(String::len))
            .max()
            .unwrap();
        let len = 4 * MIN_STREAMED_LEN.max(2 * longest);
        let boundary = len.div_ceil(4);
        for (i, rule) in rules.rules().iter().enumerate() {
            for example in &rule.spec.examples {
                // The example's first bytes end one segment, the rest starts
                // the next: each stream sees only part of its keyword.
                for cut in [1, example.len() / 2, example.len() - 1] {
                    let before = boundary - cut;
                    let mut hay = "\n".repeat(before);
                    hay.push_str(example);
                    // Blanks, not line breaks: a PEM-like secret would take
                    // trailing line breaks in and lose its entropy.
                    hay.push_str(&" ".repeat(len - hay.len()));
                    let found = matcher.find(&mut scratch, hay.as_bytes());
                    assert!(
                        found.iter().any(|m| m.rule == i),
                        "{}: {example:?} cut at {cut}",
                        rule.spec.id
                    );
                }
            }
        }
    }

    #[test]
    fn keywords_match_in_any_case() {
        assert_eq!(
            rule_ids("const ApIkEy = \"VeOM5RPOMhRtWoh46qIfK7SWwqyEfFHn\";"), // keyward:allow
            ["generic.api-key-assignment"]
        );
    }

    #[test]
    fn wrong_checksum_tokens_are_not_reported_by_generic_rules() {
        let good = "kwk_Zq8PidONxwlCt2D3fK9mQ4xLp7RtZ1wV2d5ZTn";
        let bad = "kwk_Zq8PidONxwlCt2D3fK9mQ4xLp7RtZ1wV2d5ZTA";
        for context in [
            "api_key = \"{}\"\n",
            "{\"api_key\": \"{}\"}\n",
            "const apiKey = \"{}\";\n",
            "token: \"{}\"\n",
        ] {
            let with = |v: &str| context.replace("{}", v);
            assert!(rule_ids(&with(bad)).is_empty(), "{context}");
            assert_eq!(rule_ids(&with(good)), ["keyward.standard-key"], "{context}");
        }
    }

    #[test]
    fn open_repetitions_are_capped() {
        let rules = RuleSet::builtin().unwrap();
        let generic = rules
            .rules()
            .iter()
            .find(|r| r.spec.id == "generic.api-key-assignment")
            .unwrap();
        assert!(generic.compiled().max_match_len.is_some());
        let blanks = |n: usize| {
            format!(
                "api_key ={}\"VeOM5RPOMhRtWoh46qIfK7SWwqyEfFHn\"",
                " ".repeat(n)
            ) // keyward:allow
        };
        let cap = crate::rules::REPETITION_CAP as usize;
        assert_eq!(rule_ids(&blanks(cap)), ["generic.api-key-assignment"]);
        assert!(rule_ids(&blanks(cap + 1)).is_empty());
    }

    #[test]
    fn private_key_bodies_are_bounded_by_max_len_not_a_count() {
        // Base64 lines of a pseudo-random body, 64 characters each.
        let body = |len: usize| {
            const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut x: u32 = 0x9e37_79b9;
            let mut out = String::new();
            for i in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                out.push(B64[(x % 64) as usize] as char);
                if i % 64 == 63 {
                    out.push('\n');
                }
            }
            out
        };
        let pem = |len: usize| {
            format!(
                "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n",
                body(len)
            )
        };
        // A 4096-bit key's body is about 3,200 characters, an 8192-bit one's
        // about 6,400; the rule's `max_len` is 12,100.
        for len in [100, 3_200, 6_400, 11_500] {
            assert_eq!(rule_ids(&pem(len)), ["private-key.rsa"], "body of {len}");
        }
        assert!(rule_ids(&pem(13_000)).is_empty());
    }

    #[test]
    fn bounded_rule_window_reaches_the_end_of_its_longest_match() {
        let rules = RuleSet::builtin().unwrap();
        let airtable = rules
            .rules()
            .iter()
            .find(|r| r.spec.id == "airtable.personal-access-token")
            .unwrap();
        // `pat` + 14 + `.` + 64: the window after the hit is the match length,
        // not the 16 KiB fallback.
        assert_eq!(airtable.compiled().max_match_len, Some(82));
        let token = format!("pat{}.{}", "Ab3dE6gH9jK2mN", "0123456789abcdef".repeat(4));
        // Many earlier keyword hits of the same rule merge into one window
        // that must still reach the end of the token.
        let hay = format!("{} x = \"{token}\"\n", "path ".repeat(2000));
        assert_eq!(rule_ids(&hay), ["airtable.personal-access-token"]);
    }

    #[test]
    fn url_credentials_found_behind_a_host_longer_than_the_bound() {
        let host = "h".repeat(1000);
        let hay = format!("remote = https://app:Zq8KkJEpeC6FKjY@{host}.internal.corp.org/r.git\n"); // keyward:allow
        assert_eq!(rule_ids(&hay), ["database.url-credentials"]);
    }
}
