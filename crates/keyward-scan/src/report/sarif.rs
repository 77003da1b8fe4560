//! SARIF 2.1.0, as GitHub code scanning ingests it.
//!
//! Every rule of the rule set is listed under `tool.driver.rules`; results
//! point at them by `ruleId` and `ruleIndex`. Columns are Unicode code points
//! (`columnKind`). Findings in binary files (line 0) use a byte region. The
//! secret's hash is the partial fingerprint, so GitHub tracks an alert across
//! moves exactly as the baseline does.

use std::collections::HashMap;
use std::io::{self, Write};

use serde_json::{json, Value};

use super::ReportOptions;
use crate::rules::RuleSet;
use crate::Finding;

/// The SARIF schema URI written in the log.
pub const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// Builds the SARIF log.
pub fn log(findings: &[Finding], rules: &RuleSet, options: ReportOptions) -> Value {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let descriptors: Vec<Value> = rules
        .rules()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            index.insert(&r.spec.id, i);
            let mut d = json!({
                "id": r.spec.id,
                "name": r.spec.id.replace(['.', '-'], "_"),
                "shortDescription": { "text": r.spec.name },
                "fullDescription": { "text": format!("{} ({}) found in source", r.spec.name, r.provider) },
                "defaultConfiguration": { "level": "error" },
                "help": { "text": "Revoke or rotate this secret, then remove it from the code and its history." },
                "properties": {
                    "tags": ["security", "secret"],
                    "precision": if r.spec.generic { "medium" } else { "high" },
                    "security-severity": "8.0",
                },
            });
            if let Some(url) = r.spec.references.first() {
                d["helpUri"] = json!(url);
            }
            d
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let region = if f.line == 0 {
                json!({ "byteOffset": f.column - 1, "byteLength": f.end_column - f.column })
            } else {
                json!({
                    "startLine": f.line,
                    "startColumn": f.column,
                    "endLine": f.end_line,
                    "endColumn": f.end_column,
                })
            };
            let shown = if options.show_secrets {
                String::from_utf8_lossy(f.secret.expose()).into_owned()
            } else {
                f.secret.redacted()
            };
            let mut result = json!({
                "ruleId": &*f.rule_id,
                "level": "error",
                "message": { "text": format!("{} found: {}", f.rule_name, shown) },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": uri(&f.path) },
                        "region": region,
                    }
                }],
                "partialFingerprints": { "secretSha256/v1": f.secret_sha256 },
            });
            if let Some(&i) = index.get(&*f.rule_id) {
                result["ruleIndex"] = json!(i);
            }
            let mut props = serde_json::Map::new();
            if let Some(v) = f.validated {
                props.insert("validated".into(), json!(v.as_str()));
            }
            if let Some(c) = &f.commit {
                props.insert("commit".into(), json!(c.id));
                props.insert("author".into(), json!(c.author));
                props.insert("date".into(), json!(c.date));
            }
            if !props.is_empty() {
                result["properties"] = Value::Object(props);
            }
            result
        })
        .collect();
    json!({
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": "keyward",
                    "semanticVersion": env!("CARGO_PKG_VERSION"),
                    "informationUri": "https://github.com/keyward/keyward",
                    "rules": descriptors,
                }
            },
            "columnKind": "unicodeCodePoints",
            "results": results,
        }]
    })
}

/// Writes the SARIF log as pretty JSON.
pub fn write(
    out: &mut dyn Write,
    findings: &[Finding],
    rules: &RuleSet,
    options: ReportOptions,
) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, &log(findings, rules, options))?;
    writeln!(out)
}

/// A relative URI reference for a report path: `./` dropped, reserved and
/// non-ASCII bytes percent-encoded, absolute paths as `file://` URIs.
pub fn uri(path: &str) -> String {
    let path = path.strip_prefix("./").unwrap_or(path);
    let mut out = String::with_capacity(path.len());
    if path.starts_with('/') {
        out.push_str("file://");
    }
    for &b in path.as_bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b);
        if keep {
            out.push(b as char);
        } else if b == b'\\' {
            out.push('/');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn uri_encoding() {
        assert_eq!(super::uri("./src/a b.rs"), "src/a%20b.rs");
        assert_eq!(super::uri("app.apk!/res/x.xml"), "app.apk!/res/x.xml");
        assert_eq!(super::uri("/tmp/x#1"), "file:///tmp/x%231");
    }
}
