//! Issue 17, item 5: values that look like credentials but are not — a
//! checksummed token format whose checksum fails, a documentation database
//! URL with a stand-in password — are reported by no rule in any common file
//! context, while the real thing in the same place is.

use std::collections::BTreeMap;

use crate::support::*;

/// Every token format whose last six characters are a CRC32 of its random
/// part (`validator = "crc32-base62"` in the rules): prefix, length of the
/// random part, the rule that reports a valid one.
const CHECKSUMMED: &[(&str, usize, &str)] = &[
    ("kwk_", 32, "keyward.standard-key"),
    ("kwe_", 32, "keyward.ephemeral-token"),
    ("kwa_", 32, "keyward.admin-key"),
    ("ghp_", 30, "github.classic-pat"),
    ("gho_", 30, "github.oauth-token"),
    ("ghu_", 30, "github.user-to-server-token"),
    ("ghs_", 30, "github.app-installation-token"),
    ("npm_", 30, "npm.access-token"),
];

/// Where such a value is commonly written: file name and content, with
/// `{}` for the value.
const CONTEXTS: &[(&str, &str)] = &[
    (".env", "API_KEY={}\n"),
    (".env.quoted", "API_KEY=\"{}\"\n"),
    ("Dockerfile", "FROM alpine:3.20\nENV API_KEY={}\n"),
    ("config.yaml", "service:\n  api_key: {}\n"),
    ("config.quoted.yaml", "service:\n  token: \"{}\"\n"),
    ("config.json", "{\n  \"api_key\": \"{}\"\n}\n"),
    (
        "main.go",
        "package main\n\nfunc main() {\n\tapiKey := \"{}\"\n\t_ = apiKey\n}\n",
    ),
    ("app.py", "import os\n\nAPI_KEY = \"{}\"\n"),
    ("app.js", "const apiKey = \"{}\";\n"),
    (
        "call.sh",
        "curl -H \"Authorization: Bearer {}\" https://api.internal/v1\n",
    ),
];

fn token(prefix: &str, random: &str) -> String {
    const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut n = crc32fast::hash(random.as_bytes());
    let mut sum = [b'0'; 6];
    for slot in sum.iter_mut().rev() {
        *slot = B62[(n % 62) as usize];
        n /= 62;
    }
    format!("{prefix}{random}{}", std::str::from_utf8(&sum).unwrap())
}

/// The same token with its last checksum character changed.
fn with_bad_checksum(token: &str) -> String {
    let (body, last) = token.split_at(token.len() - 1);
    let other = if last == "7" { "8" } else { "7" };
    format!("{body}{other}")
}

/// Writes each case under `dir` and returns, per path as reported, what
/// the scan found there (rule ids).
fn scan_cases(cases: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in cases {
        let file = dir.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, content).unwrap();
    }
    let outcome = scan_paths(&scanner(), &[dir.path()]);
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &outcome.findings {
        let rel = f
            .path
            .strip_prefix(&format!("{}/", dir.path().display()))
            .unwrap()
            .to_string();
        found.entry(rel).or_default().push(f.rule_id.to_string());
    }
    found
}

#[test]
fn checksummed_tokens_with_a_bad_checksum_are_found_by_no_rule_in_any_context() {
    let random = "Zr4Qw8Ep2Ty6Ui0Oa3Sd7Fg1Hj5Kl9Xc";
    let mut cases = Vec::new();
    let mut expected = BTreeMap::new();
    for &(prefix, len, rule) in CHECKSUMMED {
        let valid = token(prefix, &random[..len]);
        let bad = with_bad_checksum(&valid);
        for &(name, template) in CONTEXTS {
            for (kind, value, want) in [("valid", &valid, Some(rule)), ("bad", &bad, None)] {
                let path = format!("{prefix}/{kind}/{name}");
                cases.push((path.clone(), template.replace("{}", value)));
                expected.insert(path, want);
            }
        }
    }
    let found = scan_cases(&cases);
    let mut wrong = Vec::new();
    for (path, want) in &expected {
        let got = found.get(path).cloned().unwrap_or_default();
        let ok = match want {
            Some(rule) => got == [rule.to_string()],
            None => got.is_empty(),
        };
        if !ok {
            wrong.push(format!("{path}: expected {want:?}, found {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The table above covers every checksummed format the rules know, so a
/// new one cannot be added without its negative examples.
#[test]
fn every_checksummed_rule_is_in_the_table() {
    let rules = keyward_scan::rules::RuleSet::builtin().unwrap();
    let mut checksummed: Vec<&str> = rules
        .rules()
        .iter()
        .filter(|r| r.spec.validator.is_some())
        .map(|r| &*r.spec.id)
        .collect();
    checksummed.sort_unstable();
    let mut table: Vec<&str> = CHECKSUMMED.iter().map(|&(_, _, rule)| rule).collect();
    table.sort_unstable();
    assert_eq!(checksummed, table);
}

/// Where documentation and samples write database URLs.
const URL_CONTEXTS: &[(&str, &str)] = &[
    (
        "README.md",
        "Set `DATABASE_URL`, e.g.\n\n    export DATABASE_URL={}\n",
    ),
    (
        "docs/setup.md",
        "| variable | example |\n|---|---|\n| `DATABASE_URL` | `{}` |\n",
    ),
    (
        "src/lib.rs",
        "/// Connects to the database, e.g. `{}`.\npub fn connect() {}\n",
    ),
    ("app.py", "# DATABASE_URL = \"{}\"\nimport os\n"),
    (".env.example", "DATABASE_URL={}\n"),
    (
        "docker-compose.yml",
        "services:\n  app:\n    environment:\n      DATABASE_URL: {}\n",
    ),
];

/// Issue 17, item 5: a database URL whose password is a stand-in is
/// reported in no file, documentation or code; a random-looking password
/// is reported everywhere, a `.md` file and a doc comment included.
#[test]
fn documentation_database_urls_with_stand_in_passwords_are_not_findings_real_ones_are() {
    let stand_ins = [
        "postgres://app:password@localhost:5432/app",
        "postgres://app:secret@db:5432/app",
        "postgresql://app:pa$$word@db:5432/app",
        "postgres://postgres:mysecretpassword@localhost/postgres",
        "postgres://app:YOUR_PASSWORD@db.example.org/app",
        "postgres://app:P4ssw0rd!@db/app",
        "mysql://root:changeme@localhost:3306/shop",
        "mysql://app:hunter2@mysql/app",
        "mongodb://admin:example@mongo:27017",
        "mongodb+srv://app:s3cr3t@cluster0.mongodb.net/app",
        "redis://default:<password>@redis:6379",
        "redis://:supersecret@redis:6379/0",
        "postgres://app:${DB_PASSWORD}@db/app",
        "postgres://app:$DB_PASSWORD@db/app",
        "amqp://guest:guest@rabbitmq:5672",
    ];
    let real = [
        "postgres://app:Zq8PidONxwlCt2D@db.internal:5432/app",
        "mysql://svc:h7Kp2xQw9LmZ4tRb@db.prod.internal/shop",
        "mongodb+srv://app:T9vQ2mXk7LpZ4wRs@cluster0.mongodb.net/app",
        "redis://:Qm3Vx8LpR2tZ9wKd@cache.internal:6379/0",
    ];
    let mut cases = Vec::new();
    let mut expected = BTreeMap::new();
    for (i, url) in stand_ins.iter().chain(&real).enumerate() {
        let is_real = i >= stand_ins.len();
        for &(name, template) in URL_CONTEXTS {
            let path = format!("case{i:02}/{name}");
            cases.push((path.clone(), template.replacen("{}", url, 1)));
            expected.insert(path, (*url, is_real));
        }
    }
    let found = scan_cases(&cases);
    let mut wrong = Vec::new();
    for (path, (url, is_real)) in &expected {
        let got = found.get(path).cloned().unwrap_or_default();
        let ok = if *is_real {
            got.len() == 1 && got[0].starts_with("database.")
        } else {
            got.is_empty()
        };
        if !ok {
            wrong.push(format!("{path} ({url}): real={is_real}, found {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
