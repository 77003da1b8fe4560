use keyward_scan::rules::{check, RuleSet};

#[test]
fn every_builtin_rule_example_holds() {
    let rules = RuleSet::builtin().expect("builtin rules compile");
    let failures = check(&rules);
    assert!(
        failures.is_empty(),
        "{} failures:\n{:#?}",
        failures.len(),
        failures
    );
}

#[test]
fn at_least_150_rules_with_required_providers() {
    let rules = RuleSet::builtin().unwrap();
    assert!(rules.len() >= 150, "only {} rules", rules.len());
    let ids: Vec<&str> = rules.rules().iter().map(|r| r.spec.id.as_str()).collect();
    for required in [
        "openai.project-key",
        "openai.service-account-key",
        "openai.admin-key",
        "openai.legacy-key",
        "anthropic.api-key",
        "aws.access-key-id",
        "gcp.api-key",
        "gcp.service-account-key",
        "azure.storage-account-key",
        "github.classic-pat",
        "github.fine-grained-pat",
        "gitlab.personal-access-token",
        "slack.bot-token",
        "stripe.live-secret-key",
        "twilio.auth-token",
        "sendgrid.api-key",
        "npm.access-token",
        "pypi.upload-token",
        "huggingface.access-token",
        "private-key.rsa",
        "database.postgres-url",
        "jwt.token",
        "keyward.standard-key",
    ] {
        assert!(ids.contains(&required), "missing rule {required}");
    }
    for checksummed in [
        "github.classic-pat",
        "keyward.standard-key",
        "keyward.admin-key",
        "npm.access-token",
    ] {
        let rule = rules
            .rules()
            .iter()
            .find(|r| r.spec.id == checksummed)
            .unwrap();
        assert!(
            rule.spec.validator.is_some(),
            "{checksummed} must be checksum-validated"
        );
    }
}

#[test]
fn a_broken_example_is_reported_by_check() {
    let mut rules = RuleSet::default();
    rules
        .add_toml(
            "t.toml",
            r#"
provider = "Test"
[[rules]]
id = "t.token"
name = "T"
pattern = '\btt_[a-z0-9]{20}\b'
keywords = ["tt_"]
examples = ["tt_short"]
negative_examples = ["tt_abcdefghij0123456789"]
"#,
        )
        .unwrap();
    let failures = check(&rules);
    assert_eq!(failures.len(), 2, "{failures:#?}");
}

#[test]
fn invalid_rule_files_are_errors() {
    let mut rules = RuleSet::default();
    assert!(rules.add_toml("x.toml", "provider = 1").is_err());
    let bad_regex = "provider = \"X\"\n[[rules]]\nid = \"x\"\nname = \"x\"\npattern = \"(\"\nkeywords = [\"xx\"]\n";
    assert!(rules.add_toml("x.toml", bad_regex).is_err());
    let no_keywords =
        "provider = \"X\"\n[[rules]]\nid = \"x\"\nname = \"x\"\npattern = \"x\"\nkeywords = []\n";
    assert!(rules.add_toml("x.toml", no_keywords).is_err());
}

#[test]
fn overlapping_and_contained_keywords_all_trigger_their_rules() {
    let mut rules = RuleSet::default();
    let rule = |id: &str, pattern: &str, keyword: &str| {
        format!("[[rules]]\nid = \"{id}\"\nname = \"{id}\"\npattern = '{pattern}'\nkeywords = [\"{keyword}\"]\n")
    };
    let text = format!(
        "provider = \"T\"\n{}{}{}",
        rule("t.inner", r"tok[0-9]{12}", "tok"),
        rule("t.outer", r"mytok[0-9]{12}X", "mytok"),
        rule("t.overlap", r"k12[0-9]{10}", "k12"),
    );
    rules.add_toml("t.toml", &text).unwrap();
    let matcher = keyward_scan::matcher::Matcher::new(rules, Default::default());
    let mut scratch = matcher.scratch();
    // "mytok" contains "tok"; "tok" and "k12" overlap without containment.
    let found: Vec<usize> = matcher
        .find(&mut scratch, b"x mytok123456789012 y")
        .iter()
        .map(|m| m.rule)
        .collect();
    assert_eq!(
        found,
        [0],
        "`tok` only occurs inside `mytok`, yet its rule ran"
    );
    let found: Vec<(usize, usize)> = matcher
        .find(&mut scratch, b"tok123456789012")
        .iter()
        .map(|m| (m.rule, m.start))
        .collect();
    assert_eq!(found, [(0, 0)]);
    let found: Vec<(usize, usize)> = matcher
        .find(&mut scratch, b"== tok99 k121234567890")
        .iter()
        .map(|m| (m.rule, m.start))
        .collect();
    assert_eq!(found, [(2, 9)]);
}
