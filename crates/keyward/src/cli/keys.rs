//! `keyward keys create|list|get|revoke|delete`.

use super::api::Api;
use super::table;
use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

/// Key commands.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; its secret is printed once.
    Create {
        /// Project name or id (created if no project has that name).
        #[arg(long)]
        project: String,
        /// Key name.
        #[arg(long)]
        name: String,
        /// Organization name or id (default organization otherwise).
        #[arg(long)]
        org: Option<String>,
        /// Tag for usage reports; repeat for several.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Expiry, e.g. 30d or 12h.
        #[arg(long)]
        expires_in: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys.
    List {
        /// Only this project's keys.
        #[arg(long)]
        project: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Get {
        /// Key id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: refused on the next request.
    Revoke {
        /// Key id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a key (its usage history stays).
    Delete {
        /// Key id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a key command.
pub fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    let api = Api::from_env()?;
    match cmd {
        KeysCommand::Create {
            project,
            name,
            org,
            tags,
            expires_in,
            json,
        } => {
            let expires_in_seconds = expires_in
                .map(|d| keyward_core::duration::parse_ms(&d).map(|ms| ms / 1000))
                .transpose()
                .map_err(anyhow::Error::msg)
                .context("--expires-in")?;
            let body = json!({"project": project, "org": org, "name": name, "tags": tags,
                              "expires_in_seconds": expires_in_seconds, "create_project": true});
            let created = api.post("/api/v1/keys", &body)?;
            if json {
                println!("{created}");
            } else {
                println!(
                    "Created key {} ({}) in project {}.",
                    s(&created, "id"),
                    s(&created, "name"),
                    s(&created, "project_id")
                );
                println!("\n    {}\n", s(&created, "key"));
                println!("This is the only time the key is shown. Store it in a secret manager or an environment variable.");
            }
        }
        KeysCommand::List { project, json } => {
            let query: Vec<(&str, String)> = project.into_iter().map(|p| ("project", p)).collect();
            let listed = api.get("/api/v1/keys", &query)?;
            if json {
                println!("{}", listed["data"]);
            } else {
                let rows: Vec<Vec<String>> = listed["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(row)
                    .collect();
                print!(
                    "{}",
                    table::render(
                        &[
                            "ID",
                            "NAME",
                            "PROJECT",
                            "STATUS",
                            "KEY",
                            "LAST USED",
                            "CREATED"
                        ],
                        &rows
                    )
                );
            }
        }
        KeysCommand::Get { id, json } => show(
            api.get(&format!("/api/v1/keys/{}", path_segment(&id)?), &[])?,
            json,
        ),
        KeysCommand::Revoke { id, json } => show(
            api.post(
                &format!("/api/v1/keys/{}/revoke", path_segment(&id)?),
                &json!({}),
            )?,
            json,
        ),
        KeysCommand::Delete { id, json } => {
            api.delete(&format!("/api/v1/keys/{}", path_segment(&id)?))?;
            if json {
                println!("{}", json!({"id": id, "deleted": true}));
            } else {
                println!("Deleted key {id}.");
            }
        }
    }
    Ok(())
}

fn show(key: Value, json: bool) {
    if json {
        println!("{key}");
    } else {
        print!(
            "{}",
            table::render(
                &[
                    "ID",
                    "NAME",
                    "PROJECT",
                    "STATUS",
                    "KEY",
                    "LAST USED",
                    "CREATED"
                ],
                &[row(&key)]
            )
        );
    }
}

fn row(k: &Value) -> Vec<String> {
    vec![
        s(k, "id"),
        s(k, "name"),
        s(k, "project_id"),
        s(k, "status"),
        s(k, "hint"),
        table::time(k["last_used_at"].as_i64()),
        table::time(k["created_at"].as_i64()),
    ]
}

fn s(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or("-").to_owned()
}

/// Ids go into URL paths: refuse anything that is not a plain id.
pub fn path_segment(id: &str) -> anyhow::Result<&str> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(id)
    } else {
        anyhow::bail!("{id:?} is not a valid id")
    }
}
