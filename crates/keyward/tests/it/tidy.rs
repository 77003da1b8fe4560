//! Repository rules, checked inside `cargo test`: the invariants that
//! docs/ARCHITECTURE.md states, so they cannot silently drift.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn dependencies(krate: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(root().join("crates").join(krate).join("Cargo.toml")).unwrap();
    let manifest: toml::Value = toml::from_str(&text).unwrap();
    manifest
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

fn sources(krate: &str) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push((path.clone(), std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("crates").join(krate).join("src"), &mut out);
    out
}

fn library_crates() -> Vec<String> {
    std::fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "keyward")
        .collect()
}

#[test]
fn core_does_no_io() {
    let deps = dependencies("keyward-core");
    for forbidden in [
        "tokio",
        "sqlx",
        "hyper",
        "axum",
        "reqwest",
        "keyward-store",
        "keyward-gateway",
    ] {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "keyward-core must not depend on {forbidden}"
        );
    }
    for (path, text) in sources("keyward-core") {
        for io in [
            "std::fs",
            "TcpStream",
            "TcpListener",
            "UdpSocket",
            "std::process",
            "std::env",
        ] {
            assert!(
                !text.contains(io),
                "{} uses {io}: keyward-core does no I/O",
                path.display()
            );
        }
    }
}

#[test]
fn scanner_depends_on_no_server_crate_and_no_network() {
    let deps = dependencies("keyward-scan");
    for forbidden in [
        "keyward-store",
        "keyward-gateway",
        "keyward-auth",
        "keyward-web",
        "tokio",
        "hyper",
        "axum",
        "reqwest",
        "sqlx",
    ] {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "keyward-scan must not depend on {forbidden}"
        );
    }
    for (path, text) in sources("keyward-scan") {
        assert!(
            !text.contains("std::net"),
            "{} uses std::net: the scanner does no network I/O",
            path.display()
        );
    }
}

/// The management API's types are shared by the server and every client, so they
/// pull in no runtime, no HTTP stack and no storage: a leaf over keyward-core (utoipa only derives the OpenAPI schemas).
#[test]
fn api_types_are_a_leaf_over_core() {
    let deps = dependencies("keyward-api");
    assert!(
        deps.iter().any(|d| d == "serde"),
        "keyward-api's dependencies were not read: {deps:?}"
    );
    for dep in &deps {
        assert!(
            ["keyward-core", "serde", "utoipa"].contains(&dep.as_str()),
            "keyward-api is a leaf library of serde types; it must not depend on {dep}"
        );
    }
}

/// Management routes are registered only through `utoipa_axum::routes!`, which
/// reads each handler's `#[utoipa::path]`: so every registered route is in the
/// OpenAPI document (the gateway's `openapi` test checks the other direction).
#[test]
fn management_routes_are_registered_with_their_openapi_entry() {
    let dir = root().join("crates/keyward-gateway/src/management");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        files.len() > 5,
        "no management sources in {}",
        dir.display()
    );
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(".route("),
            "{} registers a route without routes!(...): it would be missing from the OpenAPI document",
            path.display()
        );
    }
}

/// The dashboard reads and writes only through the API's own router (issue 19:
/// "no second, weaker path"): it cannot reach storage, the server's state or
/// the accounts rules, because it does not depend on the crates that hold them.
#[test]
fn dashboard_reaches_nothing_but_the_api() {
    let deps = dependencies("keyward-web");
    assert!(
        deps.iter().any(|d| d == "maud"),
        "keyward-web's dependencies were not read: {deps:?}"
    );
    for forbidden in [
        "keyward-store",
        "keyward-gateway",
        "keyward-auth",
        "sqlx",
        "reqwest",
    ] {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "keyward-web must not depend on {forbidden}: pages go through the API"
        );
    }
}

#[test]
fn storage_hides_sqlx_and_knows_nothing_of_the_gateway() {
    assert!(!dependencies("keyward-store")
        .iter()
        .any(|d| d.starts_with("keyward-gateway")));
    for file in ["lib.rs", "model.rs"] {
        let text =
            std::fs::read_to_string(root().join("crates/keyward-store/src").join(file)).unwrap();
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        assert!(
            !code.contains("sqlx::"),
            "keyward-store's public surface ({file}) must not expose sqlx types"
        );
    }
}

#[test]
fn only_the_binary_uses_anyhow_and_clap() {
    for krate in library_crates() {
        let deps = dependencies(&krate);
        for binary_only in ["anyhow", "clap"] {
            assert!(
                !deps.iter().any(|d| d == binary_only),
                "{krate} is a library: use typed errors, not {binary_only}"
            );
        }
    }
}

#[test]
fn no_ignored_tests() {
    let ignore = ["#[", "ignore]"].concat();
    for krate in std::fs::read_dir(root().join("crates")).unwrap() {
        let dir = krate.unwrap().path();
        for sub in ["src", "tests"] {
            let mut stack = vec![dir.join(sub)];
            while let Some(d) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&d) else {
                    continue;
                };
                for e in entries {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|x| x == "rs") {
                        let text = std::fs::read_to_string(&p).unwrap();
                        assert!(
                            !text.contains(&ignore),
                            "{} has an ignored test",
                            p.display()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn readme_commands_are_the_ones_ci_runs() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let head: String = readme.lines().take(15).collect::<Vec<_>>().join("\n");
    assert!(
        head.contains("cargo run --release -- serve"),
        "the README opens with the command that runs the server"
    );
    assert!(
        head.contains("scripts/test"),
        "the README opens with the test command"
    );
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(
        ci.contains("scripts/test"),
        ".ci/run runs the README's test command"
    );
    // Users install with `cargo install --locked`; CI builds what they build.
    assert!(
        ci.contains("scripts/test --locked") && ci.contains("cargo clippy --locked"),
        ".ci/run builds and tests with the locked dependencies"
    );
    assert!(
        readme.contains("cargo install --locked --path crates/keyward"),
        "the README's install section uses the lock file"
    );
}

/// The pre-commit examples pin `rev:` to a commit of this repository, so a
/// user who copies them gets hooks that exist (a made-up tag fails on install).
#[test]
fn pre_commit_examples_pin_a_revision_in_this_history() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(root())
            .output()
    };
    let Ok(shallow) = git(&["rev-parse", "--is-shallow-repository"]) else {
        eprintln!("skipped: git is not available");
        return;
    };
    if !shallow.status.success() {
        eprintln!("skipped: not a git checkout");
        return;
    }
    if String::from_utf8_lossy(&shallow.stdout).trim() == "true" {
        eprintln!("skipped: shallow clone, the pinned revision may be outside it");
        return;
    }
    for file in [".pre-commit-hooks.yaml", "docs/scan.md"] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let revs: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim_start_matches(['#', ' ']).strip_prefix("rev:"))
            .map(|r| r.split('#').next().unwrap().trim())
            .collect();
        assert!(!revs.is_empty(), "{file} shows a pinned rev");
        for rev in revs {
            assert!(
                rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()),
                "{file} pins {rev:?}: pin a full commit SHA (no release tag exists yet)"
            );
            let commit = format!("{rev}^{{commit}}");
            let known = git(&["cat-file", "-e", &commit]).unwrap();
            assert!(
                known.status.success(),
                "{file} pins {rev}, which is not a commit in this repository"
            );
            let hooks = git(&["cat-file", "-e", &format!("{rev}:.pre-commit-hooks.yaml")]).unwrap();
            assert!(
                hooks.status.success(),
                "{file} pins {rev}, which has no .pre-commit-hooks.yaml"
            );
        }
    }
}

/// The container image never carries the upstream key: no build argument or ENV
/// names one; it comes from the environment at `docker run`.
#[test]
fn dockerfile_bakes_in_no_key() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for line in dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
    {
        if line.starts_with("ENV") || line.starts_with("ARG") || line.contains('=') {
            let upper = line.to_ascii_uppercase();
            assert!(
                !upper.contains("API_KEY") && !upper.contains("SECRET") && !upper.contains("TOKEN"),
                "the Dockerfile sets a secret: {line}"
            );
        }
    }
    assert!(
        dockerfile.contains("USER 10001"),
        "the image runs unprivileged"
    );
    assert!(
        dockerfile.contains("HEALTHCHECK"),
        "the image has a health check"
    );
}

/// The gateway's modules from the bottom up. A module may use only modules of
/// lower layers, so imports point one way (serve → management → proxy/leaks →
/// state → metering → limits → config → leaf modules) and there is no loop. A
/// new module must be placed here; docs/ARCHITECTURE.md's code map says why each
/// sits where it does.
const GATEWAY_LAYERS: &[&[&str]] = &[
    &[
        "json_walk",
        "ttl_map",
        "audit_sample",
        "data_dir",
        "metrics",
        "rate_headers",
    ],
    &["error", "sealing"],
    &[
        "json_api",
        "request",
        "key_cache",
        "origins",
        "notify",
        "bootstrap",
        "github",
    ],
    &["config"],
    &["upstream", "limits", "accounts", "cluster"],
    &["metering"],
    &["state"],
    &["proxy", "leaks", "auth", "invalidation"],
    &["management"],
    &["serve"],
];

/// The storage crate's modules from the bottom up: records and column access,
/// the statement bridge (`sql`), the queries and decoders both backends share
/// (`common`), the backends' own code, then the per-resource traits written
/// once over both.
const STORE_LAYERS: &[&[&str]] = &[
    &["model", "columns"],
    &["sql", "leaks", "accounts"],
    &["common"],
    &["sqlite", "postgres"],
    &["resources"],
];

#[test]
fn gateway_imports_point_down_and_form_no_loop() {
    imports_point_down("keyward-gateway", GATEWAY_LAYERS);
}

#[test]
fn store_imports_point_down_and_form_no_loop() {
    imports_point_down("keyward-store", STORE_LAYERS);
}

/// Fails unless every `crate::module` named in `krate`'s sources (outside
/// comments) is in a lower layer than the module naming it.
fn imports_point_down(krate: &str, layers: &[&[&str]]) {
    let layer_of = |module: &str| layers.iter().position(|l| l.contains(&module));
    let src = root().join("crates").join(krate).join("src");
    let mut violations = Vec::new();
    for (path, text) in sources(krate) {
        let relative = path.strip_prefix(&src).unwrap();
        let first = relative.iter().next().unwrap().to_string_lossy();
        let from = first.trim_end_matches(".rs").to_owned();
        if from == "lib" {
            continue; // the crate root declares the modules and holds shared aliases
        }
        let Some(from_layer) = layer_of(&from) else {
            violations.push(format!(
                "{}: module `{from}` is in no layer",
                relative.display()
            ));
            continue;
        };
        // Comments are blanked (they may name modules freely); the rest is read
        // whole, since a `use crate::{…}` list can span lines.
        let code: String = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("//") {
                    ""
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let line_of = |at: usize| code[..at].matches('\n').count() + 1;
        if let Some(at) = code.find("super::super::") {
            violations.push(format!(
                "{}:{}: name the module imported (`use crate::module::…`)",
                relative.display(),
                line_of(at)
            ));
        }
        for (at, _) in code.match_indices("crate::") {
            if at > 0 && code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `keyward_crate::`
            }
            for to in modules_named(&code[at + "crate::".len()..]) {
                if to == from || to.starts_with(|c: char| c.is_uppercase()) {
                    continue; // itself, or an item of the crate root (`FastMap`)
                }
                match layer_of(&to) {
                    Some(to_layer) if to_layer < from_layer => {}
                    Some(_) => violations.push(format!(
                        "{}:{}: `{from}` uses `{to}`, which is not below it",
                        relative.display(),
                        line_of(at)
                    )),
                    None => violations.push(format!(
                        "{}:{}: `crate::{to}` is in no layer",
                        relative.display(),
                        line_of(at)
                    )),
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// The first path segment of each item after `crate::`: one for `crate::a::b`,
/// one per item for `crate::{a::b, C, d}`.
fn modules_named(after: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(list) = after.strip_prefix('{') else {
        return vec![ident(after)];
    };
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in list.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                out.push(ident(&list[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(ident(&list[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.retain(|m| !m.is_empty());
    out
}
