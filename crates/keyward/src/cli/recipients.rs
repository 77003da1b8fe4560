//! `keyward email-recipients add|list|remove`: who is e-mailed leak and budget alerts.

use super::api::{typed, Api};
use super::keys::{path_segment, print_json};
use super::table;
use clap::Subcommand;
use keyward_api::notify::{ChannelScope, ChannelScopeInput, CreateRecipient, Recipient};
use keyward_api::List;
use serde_json::json;

/// E-mail recipient commands.
#[derive(Subcommand)]
pub enum RecipientsCommand {
    /// Add an e-mail recipient (the server needs SMTP settings to send).
    Add {
        /// The e-mail address.
        address: String,
        /// Event types, comma-separated [default: key.leaked]
        /// (key.leaked, budget.threshold_crossed, webhook.test, …).
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Only events about this organization (name or id).
        #[arg(long)]
        org: Option<String>,
        /// Only events about this project (name or id).
        #[arg(long)]
        project: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List e-mail recipients.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an e-mail recipient.
    Remove {
        /// Recipient id (rcp_…).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an e-mail recipient command.
pub fn run(cmd: RecipientsCommand) -> anyhow::Result<()> {
    let api = Api::from_env()?;
    match cmd {
        RecipientsCommand::Add {
            address,
            events,
            org,
            project,
            json,
        } => {
            let body = CreateRecipient {
                address,
                scope: ChannelScopeInput {
                    events: (!events.is_empty()).then_some(events),
                    org,
                    project,
                },
            };
            let answer = api.post("/api/v1/email-recipients", &body)?;
            if json {
                println!("{answer}");
            } else {
                let r: Recipient = typed(answer)?;
                println!(
                    "Added e-mail recipient {} ({}) for {}.",
                    r.address,
                    r.id,
                    r.scope.events.join(", ")
                );
            }
        }
        RecipientsCommand::List { json } => {
            let answer = api.get("/api/v1/email-recipients", &[])?;
            if json {
                return print_json(&answer["data"]);
            }
            let listed: List<Recipient> = typed(answer)?;
            let rows: Vec<Vec<String>> = listed
                .data
                .iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        r.address.clone(),
                        r.scope.events.join(","),
                        about(&r.scope),
                        table::time(Some(r.created_at)),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(&["ID", "ADDRESS", "EVENTS", "ABOUT", "CREATED"], &rows)
            );
        }
        RecipientsCommand::Remove { id, json } => {
            api.delete(&format!("/api/v1/email-recipients/{}", path_segment(&id)?))?;
            if json {
                println!("{}", json!({"id": id, "deleted": true}));
            } else {
                println!("Removed e-mail recipient {id}.");
            }
        }
    }
    Ok(())
}

/// Whose keys a channel hears about.
pub fn about(scope: &ChannelScope) -> String {
    match (&scope.org_id, &scope.project_id) {
        (_, Some(p)) => format!("project {p}"),
        (Some(o), None) => format!("org {o}"),
        (None, None) => "all keys".into(),
    }
}
