use std::path::Path;

use crate::support::*;

fn commit(dir: &Path, file: &str, content: &str, message: &str) -> String {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    git(dir, &["add", file]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"]).trim().to_string()
}

/// main: c1 adds config/app.py with a keyward key, c2 edits it (key kept),
/// c3 deletes it. Branch `feature` (not checked out) adds a GitHub token.
struct Repo {
    dir: tempfile::TempDir,
    c1: String,
    c3: String,
    feature: String,
    key: String,
    token: String,
}

fn repo() -> Repo {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    git(d, &["init", "-q", "-b", "main"]);
    commit(d, "README.md", "# demo\n", "init");
    let key = keyward_key(KEY_RANDOM);
    let c1 = commit(
        d,
        "config/app.py",
        &format!("KEY = \"{key}\"\n"),
        "add config",
    );
    commit(
        d,
        "config/app.py",
        &format!("# settings\nKEY = \"{key}\"\n"),
        "edit config",
    );
    git(d, &["rm", "-q", "config/app.py"]);
    git(d, &["commit", "-q", "-m", "remove secret"]);
    let c3 = git(d, &["rev-parse", "HEAD"]).trim().to_string();
    git(d, &["checkout", "-q", "-b", "feature"]);
    let token = github_token("Ab3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1");
    let feature = commit(
        d,
        "deploy/secrets.env",
        &format!("GITHUB_TOKEN={token}\n"),
        "add token",
    );
    git(d, &["checkout", "-q", "main"]);
    Repo {
        dir,
        c1,
        c3,
        feature,
        key,
        token,
    }
}

#[test]
fn history_finds_deleted_secrets_and_unchecked_out_branches() {
    let r = repo();
    // Nothing in the working tree any more.
    assert!(scan_paths(&scanner(), &[r.dir.path()]).findings.is_empty());
    let out = git_history(&scanner(), r.dir.path(), None);
    assert_eq!(out.findings.len(), 2, "{:#?}", out.findings);
    let key = out.find("keyward.standard-key");
    assert_eq!(key.path, "config/app.py");
    assert_eq!(key.secret.expose(), r.key.as_bytes());
    let c = key
        .commit
        .as_ref()
        .expect("git findings carry their commit");
    assert_eq!(
        c.id, r.c1,
        "attributed to the commit that introduced it, not the edit"
    );
    assert_eq!(c.author, "Ada Lovelace");
    assert_eq!(c.email, "ada@example.org");
    assert!(c.date.len() >= 20, "{}", c.date);
    assert_eq!(key.line, 1);
    let gh = out.find("github.classic-pat");
    assert_eq!(gh.path, "deploy/secrets.env");
    assert_eq!(gh.secret.expose(), r.token.as_bytes());
    assert_eq!(gh.commit.as_ref().unwrap().id, r.feature);
}

#[test]
fn since_scans_only_newer_commits() {
    let r = repo();
    let out = git_history(&scanner(), r.dir.path(), Some(&r.c3));
    assert_eq!(out.rule_ids(), ["github.classic-pat"]);
    let out = git_history(&scanner(), r.dir.path(), Some("feature"));
    assert!(out.findings.is_empty());
}

#[test]
fn unknown_revisions_and_non_repositories_are_errors() {
    let r = repo();
    let sink = keyward_scan::scanner::CollectSink::default();
    assert!(scanner()
        .scan_git_history(r.dir.path(), Some("no-such-rev"), &sink)
        .is_err());
    let plain = tempfile::tempdir().unwrap();
    assert!(scanner()
        .scan_git_history(plain.path(), None, &sink)
        .is_err());
    assert!(scanner().scan_git_staged(plain.path(), &sink).is_err());
}

#[test]
fn staged_scans_the_index_not_the_working_tree() {
    let r = repo();
    let d = r.dir.path();
    assert!(
        git_staged(&scanner(), d).findings.is_empty(),
        "nothing staged yet"
    );
    std::fs::write(d.join("new.env"), format!("AWS={AWS_ID}\n")).unwrap();
    git(d, &["add", "new.env"]);
    // Changed in the working tree after staging: not what will be committed.
    std::fs::write(d.join("new.env"), "AWS=\n").unwrap();
    std::fs::write(d.join("unstaged.env"), format!("KEY={}\n", r.key)).unwrap();
    let out = git_staged(&scanner(), d);
    assert_eq!(out.rule_ids(), ["aws.access-key-id"]);
    assert_eq!(out.findings[0].path, "new.env");
    assert!(out.findings[0].commit.is_none());
}

#[test]
fn staged_works_before_the_first_commit() {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]);
    std::fs::write(dir.path().join("a.txt"), format!("{AWS_ID}\n")).unwrap();
    git(dir.path(), &["add", "a.txt"]);
    assert_eq!(
        git_staged(&scanner(), dir.path()).rule_ids(),
        ["aws.access-key-id"]
    );
}

#[test]
fn archives_committed_to_history_are_expanded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    git(d, &["init", "-q"]);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut e, format!("AWS={AWS_ID}\n").as_bytes()).unwrap();
    std::fs::write(d.join("dump.sql.gz"), e.finish().unwrap()).unwrap();
    git(d, &["add", "."]);
    git(d, &["commit", "-q", "-m", "dump"]);
    let out = git_history(&scanner(), d, None);
    assert_eq!(out.rule_ids(), ["aws.access-key-id"]);
    assert_eq!(out.findings[0].path, "dump.sql.gz");
}
