//! `keyward admin-keys list|create|revoke|rotate`: the management API's own keys.

use super::api::Api;
use super::keys::path_segment;
use super::table;
use clap::Subcommand;
use keyward_api::admin_keys::CreateAdminKey;
use serde_json::{json, Value};

/// Admin key commands.
#[derive(Subcommand)]
pub enum AdminKeysCommand {
    /// List admin keys (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create an admin key; its secret is printed once.
    Create {
        /// Key name.
        #[arg(long)]
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an admin key: refused on the next request. The last active
    /// admin key cannot be revoked.
    Revoke {
        /// Admin key id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a new secret for an admin key; the old one stops at once.
    Rotate {
        /// Admin key id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Columns of the admin key table.
const HEADER: [&str; 5] = ["ID", "NAME", "STATUS", "KEY", "CREATED"];

/// Runs an admin key command.
pub fn run(cmd: AdminKeysCommand) -> anyhow::Result<()> {
    let api = Api::from_env()?;
    match cmd {
        AdminKeysCommand::List { json } => {
            let listed = api.get("/api/v1/admin-keys", &[])?;
            if json {
                println!("{}", listed["data"]);
            } else {
                let rows: Vec<Vec<String>> = listed["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(row)
                    .collect();
                print!("{}", table::render(&HEADER, &rows));
            }
        }
        AdminKeysCommand::Create { name, json } => {
            let created = api.post("/api/v1/admin-keys", &CreateAdminKey { name })?;
            if json {
                println!("{created}");
            } else {
                println!(
                    "Created admin key {} ({}).",
                    s(&created, "id"),
                    s(&created, "name")
                );
                println!("\n    {}\n", s(&created, "key"));
                println!("This is the only time the key is shown. Store it in a secret manager.");
            }
        }
        AdminKeysCommand::Revoke { id, json } => {
            let revoked = api.post(
                &format!("/api/v1/admin-keys/{}/revoke", path_segment(&id)?),
                &json!({}),
            )?;
            if json {
                println!("{revoked}");
            } else {
                print!("{}", table::render(&HEADER, &[row(&revoked)]));
            }
        }
        AdminKeysCommand::Rotate { id, json } => {
            let rotated = api.post(
                &format!("/api/v1/admin-keys/{}/rotate", path_segment(&id)?),
                &json!({}),
            )?;
            if json {
                println!("{rotated}");
            } else {
                println!(
                    "Rotated admin key {id}. The new secret (shown only now):\n\n    {}\n",
                    s(&rotated, "key")
                );
                println!("The old secret no longer works.");
            }
        }
    }
    Ok(())
}

fn row(k: &Value) -> Vec<String> {
    vec![
        s(k, "id"),
        s(k, "name"),
        s(k, "status"),
        s(k, "hint"),
        table::time(k["created_at"].as_i64()),
    ]
}

fn s(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or("-").to_owned()
}
