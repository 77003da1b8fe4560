use std::sync::Arc;

use keyward_scan::report::{self, Format, ReportOptions};
use keyward_scan::rules::RuleSet;
use keyward_scan::{CommitInfo, Finding};
use serde_json::Value;

use crate::support::*;

fn sample_findings() -> Vec<Finding> {
    let key = keyward_key(KEY_RANDOM);
    let mut text = scan_text(&format!("x\n  KEY={key}\nAWS={AWS_ID}\n")).findings;
    let mut bin = vec![0u8; 10];
    bin.extend_from_slice(AWS_ID.as_bytes());
    bin.push(0);
    let mut binary = scan_bytes(&scanner(), &bin).findings;
    binary[0].path = "dist/app bundle.apk!/classes.dex".into();
    text[1].commit = Some(Arc::new(CommitInfo {
        id: "0123456789abcdef0123456789abcdef01234567".into(),
        author: "Ada".into(),
        email: "ada@example.org".into(),
        date: "2024-05-01T10:00:00+00:00".into(),
    }));
    text.extend(binary);
    text
}

fn render(format: Format, findings: &[Finding], show_secrets: bool) -> String {
    let mut out = Vec::new();
    let rules = RuleSet::builtin().unwrap();
    report::write(
        format,
        &mut out,
        findings,
        &rules,
        ReportOptions {
            show_secrets,
            color: false,
        },
    )
    .unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn sarif_is_valid_against_an_independent_implementation() {
    let findings = sample_findings();
    let text = render(Format::Sarif, &findings, false);
    let original: Value = serde_json::from_str(&text).unwrap();
    // serde-sarif's types are generated from the SARIF 2.1.0 JSON schema:
    // parsing checks required properties and types, and the round trip
    // (which drops anything the schema does not define) must lose nothing.
    let parsed: serde_sarif::sarif::Sarif = serde_json::from_str(&text).expect("valid SARIF 2.1.0");
    let round_trip = serde_json::to_value(&parsed).unwrap();
    assert_eq!(
        round_trip, original,
        "every emitted property is defined by the schema"
    );

    assert_eq!(original["version"], "2.1.0");
    let run = &original["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    assert!(rules.len() >= 150);
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for r in results {
        let idx = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(
            rules[idx]["id"], r["ruleId"],
            "ruleIndex points at the rule"
        );
        assert_eq!(
            r["partialFingerprints"]["secretSha256/v1"]
                .as_str()
                .unwrap()
                .len(),
            64
        );
    }
    let text_region = &results[0]["locations"][0]["physicalLocation"]["region"];
    assert_eq!(text_region["startLine"], 2);
    assert_eq!(text_region["startColumn"], 7);
    let binary = results.iter().find(|r| {
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            == "dist/app%20bundle.apk!/classes.dex"
    });
    let binary = binary.expect("binary finding with an encoded URI");
    assert_eq!(
        binary["locations"][0]["physicalLocation"]["region"]["byteOffset"],
        10
    );
    assert!(!text.contains(KEY_RANDOM), "SARIF is redacted by default");
}

#[test]
fn json_follows_the_stable_contract() {
    let findings = sample_findings();
    let v: Value = serde_json::from_str(&render(Format::Json, &findings, false)).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    for f in arr {
        for field in ["rule_id", "rule_name", "path", "secret_sha256", "redacted"] {
            assert!(f[field].is_string(), "{field} in {f}");
        }
        for field in ["line", "column", "end_line", "end_column"] {
            assert!(f[field].is_u64(), "{field} in {f}");
        }
        assert!(f.get("commit").is_some() && f.get("validated").is_some());
        assert!(f.get("secret").is_none(), "secret only with --show-secrets");
    }
    let kw = arr
        .iter()
        .find(|f| f["rule_id"] == "keyward.standard-key")
        .unwrap();
    assert_eq!(kw["validated"], "checksum");
    assert_eq!(kw["commit"], Value::Null);
    let aws = arr
        .iter()
        .find(|f| f["rule_id"] == "aws.access-key-id" && f["line"] == 3)
        .unwrap();
    assert_eq!(aws["commit"], "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(aws["author"], "Ada");
    assert_eq!(aws["validated"], Value::Null);
    let shown: Value = serde_json::from_str(&render(Format::Json, &findings, true)).unwrap();
    assert_eq!(shown[1]["secret"], AWS_ID);
}

#[test]
fn jsonl_has_one_object_per_line() {
    let findings = sample_findings();
    let text = render(Format::Jsonl, &findings, false);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["rule_id"].is_string());
    }
}

#[test]
fn human_output_is_redacted_unless_asked() {
    let findings = sample_findings();
    let text = render(Format::Human, &findings, false);
    assert!(
        !text.contains(AWS_ID) && !text.contains(KEY_RANDOM),
        "{text}"
    );
    assert!(text.contains("keyward.standard-key") && text.contains("(checksum valid)"));
    assert!(text.contains("-:2:7"));
    assert!(!text.contains('\x1b'), "no colour when not asked");
    assert!(render(Format::Human, &findings, true).contains(AWS_ID));
}
