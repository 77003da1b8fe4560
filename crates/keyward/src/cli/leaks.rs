//! `keyward leaks list|clear|report|upload`: leak reports, and the admin's way
//! back from a false one.

use super::amount::positive_u32;
use super::api::{typed, Api};
use super::key_ref;
use super::keys::print_json;
use super::table;
use anyhow::{bail, Context};
use clap::Subcommand;
use keyward_api::keys::KeyRecord;
use keyward_api::leaks::{
    ClearLeak, LeakReport, LeakResult, ReportLeaks, ReportedLeak, UploadScan,
};
use keyward_api::List;
use std::io::Read;
use std::path::PathBuf;

/// Leak commands.
#[derive(Subcommand)]
pub enum LeaksCommand {
    /// List leak reports, newest first.
    List {
        /// Only this key's reports: its id (key_…) or PROJECT/NAME.
        #[arg(long)]
        key: Option<String>,
        /// At most this many reports (the server's default is 100, its maximum 1000).
        #[arg(long, allow_hyphen_values = true, value_parser = positive_u32)]
        limit: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mark a leak report as false: the key becomes active again with the same
    /// secret. Recorded in the audit log with the reason.
    Clear {
        #[arg(help = key_ref::HELP)]
        key: String,
        /// Why the report was false.
        #[arg(long)]
        reason: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Report tokens found exposed, read from stdin one per line (never from
    /// the command line, where other users could see them): live keyward keys
    /// among them are disabled at once.
    Report {
        /// The lines are SHA-256 hashes (hex) of the tokens, not the tokens.
        #[arg(long)]
        hashes: bool,
        /// Where they were found (a URL).
        #[arg(long, default_value = "")]
        url: String,
        /// Where in that place (a path and line, …).
        #[arg(long, default_value = "")]
        location: String,
        /// Who found them (the server records `api` when not given).
        #[arg(long)]
        source: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send a file (an app bundle, a log, an archive) to the server, which scans
    /// it for keyward keys and disables the live ones it finds.
    Upload {
        /// The file; `-` for stdin.
        file: PathBuf,
        /// The name the reports give it (the file name otherwise).
        #[arg(long)]
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a leak command.
pub fn run(cmd: LeaksCommand) -> anyhow::Result<()> {
    let api = Api::from_env()?;
    match cmd {
        LeaksCommand::List { key, limit, json } => {
            let mut query = Vec::new();
            if let Some(k) = key {
                query.push(("key", key_ref::resolve(&api, &k)?));
            }
            if let Some(n) = limit {
                query.push(("limit", n.to_string()));
            }
            let answer = api.get("/api/v1/leaks", &query)?;
            if json {
                return print_json(&answer["data"]);
            }
            let listed: List<LeakReport> = typed(answer)?;
            let rows: Vec<Vec<String>> = listed
                .data
                .iter()
                .map(|r| {
                    vec![
                        table::time(Some(r.reported_at)),
                        r.key_id.to_string(),
                        r.outcome.clone(),
                        r.source.clone(),
                        where_found(&r.url, &r.location),
                        r.reporter.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &["REPORTED", "KEY", "OUTCOME", "SOURCE", "WHERE", "REPORTER"],
                    &rows
                )
            );
        }
        LeaksCommand::Clear { key, reason, json } => {
            let id = key_ref::resolve(&api, &key)?;
            let answer = api.post(
                &format!("/api/v1/keys/{id}/clear-leak"),
                &ClearLeak { reason },
            )?;
            if json {
                println!("{answer}");
            } else {
                let k: KeyRecord = typed(answer)?;
                println!(
                    "Cleared the leak report on key {} ({}): it is {} again.",
                    k.id, k.name, k.status
                );
            }
        }
        LeaksCommand::Report {
            hashes,
            url,
            location,
            source,
            json,
        } => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading tokens from stdin")?;
            let leaks: Vec<ReportedLeak> = input
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|line| ReportedLeak {
                    token: (!hashes).then(|| line.to_owned()),
                    token_hash: hashes.then(|| line.to_owned()),
                    url: url.clone(),
                    location: location.clone(),
                    source: source
                        .clone()
                        .unwrap_or_else(|| keyward_api::leaks::DEFAULT_SOURCE.into()),
                })
                .collect();
            if leaks.is_empty() {
                bail!("no tokens on stdin: give one per line");
            }
            let answer = api.post("/api/v1/leaks", &ReportLeaks { leaks })?;
            if json {
                return print_json(&answer["data"]);
            }
            let results: List<LeakResult> = typed(answer)?;
            let rows: Vec<Vec<String>> = results
                .data
                .iter()
                .map(|r| {
                    let o = &r.outcome;
                    vec![
                        r.token_hash.chars().take(12).collect(),
                        o.result.clone(),
                        o.key_id
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                        o.key_name.clone().unwrap_or_default(),
                        o.status.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(&["TOKEN SHA-256", "RESULT", "KEY", "NAME", "STATUS"], &rows)
            );
        }
        LeaksCommand::Upload { file, name, json } => {
            let (bytes, default_name) = if file.as_os_str() == "-" {
                let mut bytes = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut bytes)
                    .context("reading the upload from stdin")?;
                (bytes, None)
            } else {
                let bytes =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let base = file.file_name().map(|n| n.to_string_lossy().into_owned());
                (bytes, base)
            };
            let query: Vec<(&str, String)> = name
                .or(default_name)
                .into_iter()
                .map(|n| ("name", n))
                .collect();
            let answer = api.post_bytes("/api/v1/scan-uploads", &query, bytes)?;
            if json {
                println!("{answer}");
                return Ok(());
            }
            let scan: UploadScan = typed(answer)?;
            if scan.data.is_empty() {
                println!("No keyward keys found in {}.", scan.name);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = scan
                .data
                .iter()
                .map(|f| {
                    let o = &f.outcome;
                    vec![
                        f.location.clone(),
                        o.result.clone(),
                        o.key_id
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                        o.key_name.clone().unwrap_or_default(),
                        o.status.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(&["WHERE", "RESULT", "KEY", "NAME", "STATUS"], &rows)
            );
        }
    }
    Ok(())
}

/// A report's place: the URL and the position in it, whichever are known.
fn where_found(url: &str, location: &str) -> String {
    match (url.is_empty(), location.is_empty()) {
        (true, true) => "-".into(),
        (false, true) => url.into(),
        (true, false) => location.into(),
        (false, false) => format!("{url} {location}"),
    }
}
