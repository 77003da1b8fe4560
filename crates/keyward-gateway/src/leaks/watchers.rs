//! Watchers: the server scans configured sources on a schedule — local
//! directories and local git mirrors — and app bundles uploaded through the API,
//! with the scanner library and only its keyward rules (checksum-validated), and
//! treats every live key found as leaked. A key found again on the next round is
//! a repeated sighting: recorded once, never re-audited or re-notified.

use crate::config::WatchSource;
use crate::leaks::response::{respond, Sighting, Verdict};
use crate::state::SharedState;
use keyward_scan::matcher::{Matcher, ValueAllowlist};
use keyward_scan::rules::RuleSet;
use keyward_scan::scanner::CollectSink;
use keyward_scan::{Finding, ScanOptions, Scanner};

/// A scanner with only keyward's own rules.
pub fn key_scanner() -> Result<Scanner, String> {
    let mut rules = RuleSet::builtin().map_err(|e| e.to_string())?;
    let others: Vec<String> = rules
        .rules()
        .iter()
        .filter(|r| !r.id.starts_with("keyward."))
        .map(|r| r.id.to_string())
        .collect();
    rules.disable(&others);
    let options = ScanOptions {
        threads: 1,
        ..ScanOptions::default()
    };
    Ok(Scanner::new(
        Matcher::new(rules, ValueAllowlist::default()),
        options,
    ))
}

/// Turns findings into sightings for leak response.
pub fn sightings(
    state: &SharedState,
    findings: &[Finding],
    source: &str,
    reporter: &str,
    url: &str,
) -> Vec<Sighting> {
    findings
        .iter()
        .map(|f| {
            let token = String::from_utf8_lossy(f.secret.expose());
            let location = match &f.commit {
                Some(c) => format!("{}:{} (commit {})", f.path, f.line, c.id),
                None => format!("{}:{}", f.path, f.line),
            };
            Sighting {
                hash: state.config.key_format.parse(&token).ok().map(|p| p.hash),
                source: source.to_owned(),
                url: url.to_owned(),
                location,
                token_type: f.rule_id.to_string(),
                reporter: reporter.to_owned(),
            }
        })
        .collect()
}

/// Scans one source now. Returns the verdicts of what was found.
pub async fn scan_source(
    state: &SharedState,
    source: &WatchSource,
) -> Result<Vec<Verdict>, String> {
    let src = source.clone();
    let findings = tokio::task::spawn_blocking(move || -> Result<Vec<Finding>, String> {
        let scanner = key_scanner()?;
        let sink = CollectSink::default();
        if src.git {
            scanner
                .scan_git_history(&src.path, None, &sink)
                .map_err(|e| e.to_string())?;
        } else {
            scanner
                .scan_paths(std::slice::from_ref(&src.path), &sink)
                .map_err(|e| e.to_string())?;
        }
        Ok(sink
            .findings
            .into_inner()
            .unwrap_or_else(|e| e.into_inner()))
    })
    .await
    .map_err(|e| e.to_string())??;
    let url = format!("file://{}", source.path.display());
    let found = sightings(
        state,
        &findings,
        "watcher",
        &format!("watcher:{}", source.name),
        &url,
    );
    respond(state, &found).await.map_err(|e| e.to_string())
}

/// Starts the schedule: a first round at once, then every `interval`.
pub fn spawn(state: SharedState) {
    let settings = state.config.leaks.watchers.clone();
    if settings.sources.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(settings.interval);
        loop {
            tick.tick().await;
            for source in &settings.sources {
                match scan_source(&state, source).await {
                    Ok(v) => {
                        tracing::info!(watcher = %source.name, found = v.len(), "watcher round done")
                    }
                    Err(e) => {
                        tracing::warn!(watcher = %source.name, error = %e, "watcher round failed")
                    }
                }
            }
        }
    });
}
