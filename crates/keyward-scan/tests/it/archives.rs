use std::io::{Cursor, Write};

use keyward_scan::input::archive::ArchiveLimits;
use keyward_scan::{DiagnosticKind, ScanOptions};

use crate::support::*;

fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in entries {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn nested_archives_report_member_paths() {
    let key = keyward_key(KEY_RANDOM);
    let jar = zip(&[
        ("META-INF/MANIFEST.MF", b"Manifest-Version: 1.0\n"),
        ("app.properties", format!("aws.id={AWS_ID}\n").as_bytes()),
    ]);
    let apk = zip(&[
        (
            "assets/config.json",
            format!("{{\"key\": \"{key}\"}}").as_bytes(),
        ),
        ("lib/vendor.jar", &jar),
    ]);
    let bundle = gzip(&tar(&[
        ("./release/app.apk", &apk),
        ("README", b"nothing here\n"),
    ]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    std::fs::write(&path, bundle).unwrap();
    let out = scan_paths(&scanner(), &[&path]);
    let shown = path.display().to_string();
    let paths: Vec<String> = out.findings.iter().map(|f| f.path.clone()).collect();
    assert_eq!(
        paths,
        [
            format!("{shown}!/release/app.apk!/assets/config.json"),
            format!("{shown}!/release/app.apk!/lib/vendor.jar!/app.properties"),
        ],
        "{:#?}",
        out.diagnostics
    );
    assert_eq!(out.find("keyward.standard-key").line, 1);
    assert!(out.diagnostics.is_empty());
}

#[test]
fn plain_tarballs_and_gzip_files_are_scanned() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("src.tar"),
        tar(&[("a/.env", format!("AWS={AWS_ID}\n").as_bytes())]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("app.log.gz"),
        gzip(format!("boot\nAWS={AWS_ID}\n").as_bytes()),
    )
    .unwrap();
    let out = scan_paths(&scanner(), &[dir.path()]);
    let mut paths: Vec<String> = out
        .findings
        .iter()
        .map(|f| f.path.rsplit('/').next().unwrap().to_string())
        .collect();
    paths.sort();
    assert_eq!(paths, [".env", "app.log.gz"]);
    let gz = out
        .findings
        .iter()
        .find(|f| f.path.ends_with("app.log.gz"))
        .unwrap();
    assert_eq!(gz.line, 2);
}

#[test]
fn stdin_may_be_an_archive() {
    let data = gzip(&tar(&[(
        "x/config.py",
        format!("KEY = '{AWS_ID}'\n").as_bytes(),
    )]));
    let out = scan_bytes(&scanner(), &data);
    assert_eq!(out.findings[0].path, "-!/x/config.py");
}

#[test]
fn a_decompression_bomb_is_refused_and_the_scan_goes_on() {
    let zeros = vec![0u8; 64 << 20];
    let bomb = zip(&[
        ("zeros.bin", &zeros),
        ("after.env", format!("AWS={AWS_ID}\n").as_bytes()),
    ]);
    assert!(
        bomb.len() < 1 << 20,
        "the bomb compresses well: {}",
        bomb.len()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bomb.zip"), &bomb).unwrap();
    std::fs::write(dir.path().join("other.txt"), format!("id={AWS_ID}\n")).unwrap();
    let out = scan_paths(&scanner(), &[dir.path()]);
    let bombs: Vec<_> = out
        .diagnostics
        .iter()
        .filter(|d| d.kind == DiagnosticKind::ArchiveBomb)
        .collect();
    assert_eq!(bombs.len(), 1, "{:#?}", out.diagnostics);
    assert!(
        bombs[0].path.ends_with("bomb.zip!/zeros.bin"),
        "{}",
        bombs[0].path
    );
    assert!(
        bombs[0].to_string().contains("decompression bomb"),
        "{}",
        bombs[0]
    );
    let mut found: Vec<String> = out
        .findings
        .iter()
        .map(|f| f.path.rsplit('/').next().unwrap().to_string())
        .collect();
    found.sort();
    assert_eq!(
        found,
        ["after.env", "other.txt"],
        "other members and files are still scanned"
    );
}

#[test]
fn the_total_expansion_budget_stops_one_input() {
    let data = vec![b'a'; 4 << 20];
    let blob = gzip(&tar(&[
        ("big.txt", &data),
        ("later.env", format!("AWS={AWS_ID}\n").as_bytes()),
    ]));
    let scanner = scanner_with(ScanOptions {
        archives: ArchiveLimits {
            max_expanded_bytes: 1 << 20,
            max_ratio: u64::MAX / 2,
            ..ArchiveLimits::default()
        },
        ..ScanOptions::default()
    });
    let out = scan_bytes(&scanner, &blob);
    assert_eq!(out.diagnostics.len(), 1, "{:#?}", out.diagnostics);
    assert_eq!(out.diagnostics[0].kind, DiagnosticKind::ArchiveBomb);
    assert!(out.findings.is_empty());
}

#[test]
fn corrupt_archives_are_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut corrupt_zip = b"PK\x03\x04".to_vec();
    corrupt_zip.extend_from_slice(&[0x55; 200]);
    std::fs::write(dir.path().join("broken.jar"), corrupt_zip).unwrap();
    let mut corrupt_gz = gzip(b"hello world, this is some text to compress\n");
    let mid = corrupt_gz.len() / 2;
    corrupt_gz[mid..].iter_mut().for_each(|b| *b ^= 0xA5);
    std::fs::write(dir.path().join("broken.gz"), corrupt_gz).unwrap();
    std::fs::write(dir.path().join("fine.env"), format!("AWS={AWS_ID}\n")).unwrap();
    let out = scan_paths(&scanner(), &[dir.path()]);
    assert_eq!(out.rule_ids(), ["aws.access-key-id"]);
    let mut kinds: Vec<(String, DiagnosticKind)> = out
        .diagnostics
        .iter()
        .map(|d| (d.path.rsplit('/').next().unwrap().to_string(), d.kind))
        .collect();
    kinds.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        kinds,
        [
            ("broken.gz".to_string(), DiagnosticKind::CorruptArchive),
            ("broken.jar".to_string(), DiagnosticKind::CorruptArchive)
        ]
    );
}

#[test]
fn nesting_deeper_than_the_limit_is_not_opened() {
    let inner = zip(&[("deep.env", format!("AWS={AWS_ID}\n").as_bytes())]);
    let outer = zip(&[
        ("inner.zip", &inner),
        ("top.env", format!("id={AWS_ID}\n").as_bytes()),
    ]);
    let scanner = scanner_with(ScanOptions {
        archives: ArchiveLimits {
            max_depth: 1,
            ..ArchiveLimits::default()
        },
        ..ScanOptions::default()
    });
    let out = scan_bytes(&scanner, &outer);
    assert_eq!(out.findings.len(), 1);
    assert_eq!(out.findings[0].path, "-!/top.env");
    assert_eq!(out.diagnostics.len(), 1);
    assert_eq!(out.diagnostics[0].kind, DiagnosticKind::ArchiveTooDeep);
    assert_eq!(out.diagnostics[0].path, "-!/inner.zip");
}
