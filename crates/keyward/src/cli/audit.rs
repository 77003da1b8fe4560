//! `keyward audit list`: who did what, newest first; `keyward audit verify`:
//! whether anyone changed the log behind keyward's back.

use super::amount::positive_u32;
use super::api::{typed, Api};
use super::keys::print_json;
use super::table;
use anyhow::Context;
use clap::Subcommand;
use keyward_api::audit::{AuditEvent, AuditVerification};
use keyward_api::List;
use serde_json::Value;

/// Audit commands.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// List audit events, newest first.
    List {
        /// Only events of this organization, by name or id (a scoped admin
        /// key always sees its own only).
        #[arg(long)]
        org: Option<String>,
        /// Only events by this actor (an admin key id, a user id, `system`).
        #[arg(long)]
        actor: Option<String>,
        /// Only events whose action starts with this, e.g. `key.` or `key.revoked`.
        #[arg(long)]
        action: Option<String>,
        /// Only events about this target (a key, project, organization or
        /// budget scope id, …).
        #[arg(long)]
        target: Option<String>,
        /// Only events at or after this time (ms since the Unix epoch).
        #[arg(long, allow_hyphen_values = true)]
        since: Option<i64>,
        /// Only events before this time (ms since the Unix epoch).
        #[arg(long, allow_hyphen_values = true)]
        until: Option<i64>,
        /// Only events older than this one, by id (`aud_…`): to page, pass
        /// the last id of the previous page (`--json` shows ids). Unlike
        /// `--until`, it skips no event sharing that one's millisecond.
        #[arg(long)]
        before: Option<String>,
        /// At most this many events (the server's default is 100, its maximum 1000).
        #[arg(long, allow_hyphen_values = true, value_parser = positive_u32)]
        limit: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the audit log's hash chains (one per organization, one for the
    /// deployment): exit 0 when intact, 1 naming the first event that was
    /// changed or removed. Needs the bootstrap admin key, or `--database`.
    Verify {
        /// Read this database directly instead of asking a server:
        /// `sqlite:///path/keyward.db` or `postgres://…` (it is migrated to
        /// this version first, as `serve` would).
        #[arg(long)]
        database: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an audit command: the exit code (1: `verify` found a break).
pub fn run(cmd: AuditCommand) -> anyhow::Result<i32> {
    match cmd {
        AuditCommand::List {
            org,
            actor,
            action,
            target,
            since,
            until,
            before,
            limit,
            json,
        } => {
            let query: Vec<(&str, String)> = [
                ("org", org),
                ("actor", actor),
                ("action", action),
                ("target", target),
                ("since", since.map(|t| t.to_string())),
                ("until", until.map(|t| t.to_string())),
                ("before", before),
                ("limit", limit.map(|n| n.to_string())),
            ]
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v)))
            .collect();
            list(&query, json).map(|()| 0)
        }
        AuditCommand::Verify { database, json } => {
            let verdict = match database {
                Some(url) => verify_database(&url)?,
                None => typed(Api::from_env()?.get("/api/v1/audit/verify", &[])?)?,
            };
            report(&verdict, json)?;
            Ok(if verdict.ok { 0 } else { 1 })
        }
    }
}

fn list(query: &[(&str, String)], json: bool) -> anyhow::Result<()> {
    let api = Api::from_env()?;
    let answer = api.get("/api/v1/audit", query)?;
    if json {
        return print_json(&answer["data"]);
    }
    let listed: List<AuditEvent<Value>> = typed(answer)?;
    let rows: Vec<Vec<String>> = listed
        .data
        .iter()
        .map(|e| {
            vec![
                table::time(Some(e.at)),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                detail(&e.detail),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["AT", "ACTOR", "ACTION", "TARGET", "DETAIL"], &rows)
    );
    Ok(())
}

/// Verifies the chains of the database at `url`, without a server.
fn verify_database(url: &str) -> anyhow::Result<AuditVerification> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let store = keyward_store::open(url)
            .await
            .context("opening the database")?;
        let verdict = store
            .verify_audit()
            .await
            .context("reading the audit log")?;
        Ok(match verdict {
            Ok(n) => AuditVerification {
                ok: true,
                events: Some(n),
                event_id: None,
                chain: None,
                reason: None,
            },
            Err(b) => AuditVerification {
                ok: false,
                events: None,
                event_id: Some(b.event_id),
                chain: Some(b.chain),
                reason: Some(b.reason),
            },
        })
    })
}

/// Prints the verdict: JSON, or one line (on stderr when broken).
fn report(v: &AuditVerification, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(v);
    }
    if v.ok {
        println!(
            "audit log intact: {} events, every chain ends at its head",
            v.events.unwrap_or(0)
        );
    } else {
        eprintln!(
            "audit log broken at event {} (chain {}): {}",
            v.event_id.as_ref().map_or("?", |id| id.as_str()),
            v.chain.as_deref().unwrap_or("?"),
            v.reason.as_deref().unwrap_or("no reason given"),
        );
    }
    Ok(())
}

/// The detail on one line, cut short: the table is for reading; `--json` has it all.
fn detail(d: &Value) -> String {
    const MAX: usize = 80;
    let text = match d {
        Value::Null => return String::new(),
        other => other.to_string(),
    };
    if text.chars().count() <= MAX {
        text
    } else {
        let cut: String = text.chars().take(MAX - 1).collect();
        format!("{cut}…")
    }
}
