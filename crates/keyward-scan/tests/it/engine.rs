use keyward_scan::scanner::OVERLAP;
use keyward_scan::{DiagnosticKind, ScanOptions, Validation};

use crate::support::*;

#[test]
fn secret_spanning_a_block_boundary_is_found_exactly_once() {
    let block = OVERLAP; // the smallest block size, so the test data stays small
    let scanner = scanner_with(ScanOptions {
        block_size: block,
        threads: 1,
        ..ScanOptions::default()
    });
    let key = keyward_key(KEY_RANDOM);
    for start in (block - 60)..(block + 5) {
        // Lines of filler so line numbers are checkable; the key sits at `start`.
        let mut text = String::new();
        while text.len() < start {
            text.push_str("let filler = 12;\n");
        }
        text.truncate(start - 1);
        text.push('\n');
        let line = text.matches('\n').count() as u64 + 1;
        text.push_str(&key);
        text.push('\n');
        while text.len() < 3 * block {
            text.push_str("fn more() {}\n");
        }
        let out = scan_bytes(&scanner, text.as_bytes());
        assert_eq!(out.findings.len(), 1, "start {start}: {:#?}", out.findings);
        let f = &out.findings[0];
        assert_eq!((f.line, f.column), (line, 1), "start {start}");
        assert_eq!(f.secret.expose(), key.as_bytes());
    }
}

#[test]
fn many_secrets_across_many_blocks_are_all_found() {
    let scanner = scanner_with(ScanOptions {
        block_size: OVERLAP,
        ..ScanOptions::default()
    });
    let key = keyward_key(KEY_RANDOM);
    let mut text = String::new();
    for i in 0..1500 {
        text.push_str(&format!(
            "line {i} padding padding padding padding padding padding\n"
        ));
        if i % 7 == 0 {
            text.push_str(&format!("k{i} = \"{key}\"\n"));
        }
    }
    let expected = (0..1500).filter(|i| i % 7 == 0).count();
    assert!(text.len() > 2 * OVERLAP, "test must cross blocks");
    let out = scan_bytes(&scanner, text.as_bytes());
    assert_eq!(out.findings.len(), expected);
    let lines: Vec<u64> = out.findings.iter().map(|f| f.line).collect();
    let mut sorted = lines.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), expected, "each finding on its own line");
}

#[test]
fn positions_are_one_based_with_exclusive_end() {
    let key = keyward_key(KEY_RANDOM);
    let out = scan_text(&format!("first\nsecond\n  key: é{key} # trailing\n"));
    let f = out.find("keyward.standard-key");
    assert_eq!((f.line, f.column), (3, 9), "columns count code points");
    assert_eq!((f.end_line, f.end_column), (3, 9 + key.len() as u64));
    assert_eq!(f.validated, Some(Validation::Checksum));
    assert_eq!(f.path, "-");
    assert!(f.commit.is_none());
}

#[test]
fn checksum_failures_are_not_keyward_keys() {
    let mut key = keyward_key(KEY_RANDOM);
    key.pop();
    key.push('Q');
    let out = scan_text(&format!("KEY={key}\n"));
    assert!(
        !out.rule_ids().contains(&"keyward.standard-key"),
        "{:#?}",
        out.findings
    );
}

#[test]
fn binary_files_are_scanned_for_printable_runs() {
    let key = keyward_key(KEY_RANDOM);
    let mut bytes = vec![0u8, 1, 2, 3, 0xff, 0xfe];
    bytes.extend_from_slice(&[0u8; 100]);
    let offset = bytes.len();
    bytes.extend_from_slice(key.as_bytes());
    bytes.extend_from_slice(&[0u8, 7, 7, 0]);
    let out = scan_bytes(&scanner(), &bytes);
    let f = out.find("keyward.standard-key");
    assert_eq!(f.line, 0, "binary content has no lines");
    assert_eq!(f.column, offset as u64 + 1);
    assert_eq!(f.end_column, (offset + key.len()) as u64 + 1);
}

#[test]
fn placeholders_and_documentation_values_are_not_findings() {
    let text = r#"
aws_access_key_id = AKIAIOSFODNN7EXAMPLE
aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY
OPENAI_API_KEY=sk-proj-xxxxxxxxxxxxxxxxxxxxT3BlbkFJxxxxxxxxxxxxxxxxxxxx
api_key = "${OPENAI_API_KEY}"
api_key = "<your-key>"
const apiKey = process.env.OPENAI_API_KEY;
token = "{{ secrets.TOKEN }}"
password = "changeme"
DATABASE_URL=postgres://postgres:postgres@localhost:5432/app
stripe.api_key = "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
"#;
    let out = scan_text(text);
    assert!(out.findings.is_empty(), "{:#?}", out.findings);
}

#[test]
fn real_looking_secrets_in_the_same_shapes_are_findings() {
    let text = format!(
        "aws_access_key_id = {AWS_ID}\nDATABASE_URL=postgres://app:Zq8vN3kW9xLp2Rt@db.internal:5432/app\nconst apiKey = \"q8Zr4Tw9Xm2Lp7Vn3Kd6Hs1Fj5Gb0Yc\";\n" // keyward:allow fixture
    );
    let out = scan_text(&text);
    assert_eq!(
        out.rule_ids(),
        [
            "aws.access-key-id",
            "database.postgres-url",
            "generic.api-key-assignment"
        ],
        "{:#?}",
        out.findings
    );
}

#[test]
fn generic_rules_stay_quiet_on_ordinary_code() {
    let code = r#"
fn token_for(user: &User) -> Result<Token, Error> {
    let api_key = config.get("api_key")?;
    let secret = std::env::var("APP_SECRET").unwrap_or_default();
    let token = format!("{}:{}", user.id, api_key);
    headers.insert("Authorization", format!("Bearer {}", token));
    let password = prompt_password("Password: ")?;
    let secret_key = "SECRET_KEY_NAME_IN_SETTINGS";
    let access_token = "tokens/access_token_v2.json";
    let key = "c0ffee";  let digest = "sha256:3f9a0c7e1b2d4f6a8c0e2b4d";
    let auth_token = "123e4567-e89b-12d3-a456-426614174000";
    let api_key_header = "X-Api-Key-Header-Name-V2";
    const PASSWORD_FIELD: &str = "user_password_confirmation";
}
"#;
    let out = scan_text(code);
    assert!(out.findings.is_empty(), "{:#?}", out.findings);
}

#[test]
fn specific_rules_win_over_generic_ones_on_the_same_secret() {
    let key = keyward_key(KEY_RANDOM);
    let out = scan_text(&format!("api_key = \"{key}\"\n"));
    assert_eq!(out.rule_ids(), ["keyward.standard-key"]);
}

#[test]
fn openai_key_formats_are_all_detected() {
    let body = "Qm3kD8vX2nLp9RtZ7wVb";
    let tail = "a8Kd2mQ9xLp4RtZ7wVb3";
    let cases = [
        (
            format!("sk-proj-{body}T3BlbkFJ{tail}"),
            "openai.project-key",
        ),
        (
            format!("sk-svcacct-{body}T3BlbkFJ{tail}"),
            "openai.service-account-key",
        ),
        (format!("sk-admin-{body}T3BlbkFJ{tail}"), "openai.admin-key"),
        (format!("sk-{body}T3BlbkFJ{tail}"), "openai.legacy-key"),
    ];
    for (key, rule) in cases {
        let out = scan_text(&format!("OPENAI_API_KEY={key}\n"));
        assert_eq!(out.rule_ids(), [rule], "{key}");
    }
}

#[test]
fn unreadable_files_are_reported_and_the_scan_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.env"), format!("AWS={AWS_ID}\n")).unwrap();
    // Reading /proc/self/mem at offset 0 fails with EIO, even as root.
    let unreadable = std::path::Path::new("/proc/self/mem");
    let out = scan_paths(&scanner(), &[unreadable, dir.path()]);
    assert_eq!(out.rule_ids(), ["aws.access-key-id"]);
    assert_eq!(out.diagnostics.len(), 1, "{:#?}", out.diagnostics);
    assert_eq!(out.diagnostics[0].kind, DiagnosticKind::Unreadable);
    assert_eq!(out.diagnostics[0].path, "/proc/self/mem");
}

#[test]
fn a_missing_path_is_an_error() {
    let sink = keyward_scan::scanner::CollectSink::default();
    let err = scanner().scan_paths(&["/nonexistent/keyward".into()], &sink);
    assert!(err.is_err());
}

#[test]
fn gitignored_files_are_scanned_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]);
    std::fs::write(dir.path().join(".gitignore"), ".env\n").unwrap();
    std::fs::write(dir.path().join(".env"), format!("AWS={AWS_ID}\n")).unwrap();
    let out = scan_paths(&scanner(), &[dir.path()]);
    assert_eq!(
        out.rule_ids(),
        ["aws.access-key-id"],
        "ignored .env is scanned by default"
    );
    let respecting = scanner_with(ScanOptions {
        respect_gitignore: true,
        ..ScanOptions::default()
    });
    assert!(scan_paths(&respecting, &[dir.path()]).findings.is_empty());
}

#[test]
fn paths_join_the_given_root_and_the_relative_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("src/conf")).unwrap();
    std::fs::write(
        dir.path().join("src/conf/app.yml"),
        format!("id: {AWS_ID}\n"),
    )
    .unwrap();
    let out = scan_paths(&scanner(), &[dir.path()]);
    assert_eq!(
        out.findings[0].path,
        dir.path().join("src/conf/app.yml").display().to_string()
    );
}

#[test]
fn files_around_the_sniffed_head_length_are_scanned_whole() {
    // A file's first 64 KiB are read once to tell archives from content;
    // a key before, across and after that point, in files shorter, equal
    // and longer than it, is found once at its line.
    const HEAD: usize = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let scanner = scanner();
    let key = keyward_key(KEY_RANDOM);
    for (i, (start, len)) in [
        (10, HEAD - 1),
        (HEAD - key.len() - 1, HEAD),
        (HEAD - 20, HEAD + 100),
        (HEAD + 10, 3 * HEAD),
    ]
    .into_iter()
    .enumerate()
    {
        let mut text = "x\n".repeat(start / 2);
        let line = text.matches('\n').count() as u64 + 1;
        text.push_str(&key);
        while text.len() < len {
            text.push('\n');
        }
        text.truncate(len.max(start + key.len()));
        let path = dir.path().join(format!("f{i}.txt"));
        std::fs::write(&path, &text).unwrap();
        let out = scan_paths(&scanner, &[&path]);
        assert_eq!(out.findings.len(), 1, "case {i}: {:#?}", out.findings);
        assert_eq!(out.findings[0].line, line, "case {i}");
        assert_eq!(out.findings[0].secret.expose(), key.as_bytes());
    }
}

#[test]
fn files_scanned_where_they_were_read_report_what_streams_report() {
    // A file that fits in the 64 KiB read to sniff archives is scanned in
    // that buffer; a reader goes through the block buffer. Same findings,
    // same positions (columns in code points), same suppression.
    let key = keyward_key(KEY_RANDOM);
    let token = github_token("Ab3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1");
    let text = format!(
        "é\n  key: {key}\n\t\tß→ {token} and {key}\nallowed {token} # keyward:allow\nlast {key}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conf.txt");
    std::fs::write(&path, &text).unwrap();
    let scanner = scanner();
    let positions = |out: &Outcome| -> Vec<_> {
        out.findings
            .iter()
            .map(|f| {
                let at = (f.line, f.column, f.end_line, f.end_column);
                (f.rule_id.to_string(), at, f.secret_sha256.clone())
            })
            .collect()
    };
    let in_place = positions(&scan_paths(&scanner, &[&path]));
    let streamed = positions(&scan_bytes(&scanner, text.as_bytes()));
    assert_eq!(in_place.len(), 4, "{in_place:#?}");
    assert_eq!(in_place, streamed);
    assert_eq!(in_place[1].1, (3, 6, 3, 6 + token.len() as u64));
}
