//! `keyward audit list`: who did what, newest first.

use super::amount::positive_u32;
use super::api::{typed, Api};
use super::keys::print_json;
use super::table;
use clap::Subcommand;
use keyward_api::audit::AuditEvent;
use keyward_api::List;
use serde_json::Value;

/// Audit commands.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// List audit events, newest first.
    List {
        /// Only events about this target (a key, project, organization or
        /// budget scope id, …).
        #[arg(long)]
        target: Option<String>,
        /// At most this many events (the server's default is 100, its maximum 1000).
        #[arg(long, allow_hyphen_values = true, value_parser = positive_u32)]
        limit: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an audit command.
pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    let api = Api::from_env()?;
    let AuditCommand::List {
        target,
        limit,
        json,
    } = cmd;
    let mut query = Vec::new();
    if let Some(t) = target {
        query.push(("target", t));
    }
    if let Some(n) = limit {
        query.push(("limit", n.to_string()));
    }
    let answer = api.get("/api/v1/audit", &query)?;
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
