//! `keyward webhooks add|list|remove|test|deliveries`.

use super::amount::positive_u32;
use super::api::Api;
use super::keys::path_segment;
use super::keys::print_json;
use super::table;
use clap::Subcommand;
use keyward_api::notify::{
    ChannelScopeInput, CreateWebhook, CreatedWebhook, Delivery, TestQueued, Webhook,
};
use keyward_api::List;
use serde_json::{json, Value};

/// Webhook commands.
#[derive(Subcommand)]
pub enum WebhooksCommand {
    /// Add a webhook; its signing secret is printed once.
    Add {
        /// Where to POST events (https://…).
        url: String,
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
        /// A note for people.
        #[arg(long, default_value = "")]
        description: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List webhooks.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a webhook.
    Remove {
        /// Webhook id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send a signed test event.
    Test {
        /// Webhook id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a webhook's delivery log.
    Deliveries {
        /// Webhook id.
        id: String,
        /// At most this many deliveries (the server's default is 50, its maximum 1000).
        #[arg(long, allow_hyphen_values = true, value_parser = positive_u32)]
        limit: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a webhook command.
pub fn run(cmd: WebhooksCommand) -> anyhow::Result<()> {
    let api = Api::from_env()?;
    match cmd {
        WebhooksCommand::Add {
            url,
            events,
            org,
            project,
            description,
            json,
        } => {
            let body = CreateWebhook {
                url,
                description,
                scope: ChannelScopeInput {
                    events: (!events.is_empty()).then_some(events),
                    org,
                    project,
                },
            };
            let created: CreatedWebhook = api.post_as("/api/v1/webhooks", &body)?;
            if json {
                print_json(&created)?;
            } else {
                println!(
                    "Added webhook {}. Its signing secret (shown only now):\n\n    {}\n",
                    created.webhook.id, created.secret
                );
                println!("Verify `Keyward-Signature: t=…,v1=…` as HMAC-SHA256(secret, \"t.\" + body); see docs/leaks.md.");
            }
        }
        WebhooksCommand::List { json } => {
            let listed: List<Webhook> = api.get_as("/api/v1/webhooks", &[])?;
            if json {
                print_json(&listed.data)?;
            } else {
                let rows: Vec<Vec<String>> = listed
                    .data
                    .iter()
                    .map(|w| {
                        Ok(vec![
                            w.id.to_string(),
                            w.url.clone(),
                            serde_json::to_string(&w.scope.events)?,
                            super::recipients::about(&w.scope),
                            w.description.clone(),
                        ])
                    })
                    .collect::<anyhow::Result<_>>()?;
                print!(
                    "{}",
                    table::render(&["ID", "URL", "EVENTS", "ABOUT", "DESCRIPTION"], &rows)
                );
            }
        }
        WebhooksCommand::Remove { id, json } => {
            api.delete(&format!("/api/v1/webhooks/{}", path_segment(&id)?))?;
            if json {
                println!("{}", json!({"id": id, "deleted": true}));
            } else {
                println!("Removed webhook {id}.");
            }
        }
        WebhooksCommand::Test { id, json } => {
            let sent: TestQueued = api.post_as(
                &format!("/api/v1/webhooks/{}/test", path_segment(&id)?),
                &json!({}),
            )?;
            if json {
                println!("{}", serde_json::to_value(&sent)?);
            } else {
                println!(
                    "Queued test event {}: `keyward webhooks deliveries {id}` shows how it went.",
                    sent.event_id
                );
            }
        }
        WebhooksCommand::Deliveries { id, limit, json } => {
            let query: Vec<(&str, String)> = limit
                .into_iter()
                .map(|n| ("limit", n.to_string()))
                .collect();
            let log: List<Delivery<Value>> = api.get_as(
                &format!("/api/v1/webhooks/{}/deliveries", path_segment(&id)?),
                &query,
            )?;
            if json {
                print_json(&log.data)?;
            } else {
                let rows: Vec<Vec<String>> = log
                    .data
                    .into_iter()
                    .map(|d| {
                        vec![
                            d.event_id.to_string(),
                            d.event_type,
                            d.status,
                            d.attempts.to_string(),
                            d.last_error.unwrap_or_default(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table::render(
                        &["EVENT", "TYPE", "STATUS", "ATTEMPTS", "LAST ERROR"],
                        &rows
                    )
                );
            }
        }
    }
    Ok(())
}
