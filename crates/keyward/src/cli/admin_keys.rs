//! `keyward admin-keys list|create|revoke|rotate`: the management API's own keys.

use super::api::Api;
use super::keys::path_segment;
use super::keys::print_json;
use super::table;
use clap::Subcommand;
use keyward_api::admin_keys::{AdminKey, CreateAdminKey, CreatedAdminKey};
use keyward_api::List;
use serde_json::json;

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
        /// The one organization (id or name) the key manages. Without it, the
        /// key is the calling key's organization's; only the bootstrap key can
        /// create a deployment-wide key.
        #[arg(long)]
        org: Option<String>,
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
            let listed: List<AdminKey> = api.get_as("/api/v1/admin-keys", &[])?;
            if json {
                print_json(&listed.data)?;
            } else {
                let rows: Vec<Vec<String>> = listed.data.iter().map(row).collect();
                print!("{}", table::render(&HEADER, &rows));
            }
        }
        AdminKeysCommand::Create { name, org, json } => {
            let created: CreatedAdminKey =
                api.post_as("/api/v1/admin-keys", &CreateAdminKey { name, org })?;
            if json {
                print_json(&created)?;
            } else {
                println!(
                    "Created admin key {} ({}).",
                    created.record.id, created.record.name
                );
                println!("\n    {}\n", created.key);
                println!("This is the only time the key is shown. Store it in a secret manager.");
            }
        }
        AdminKeysCommand::Revoke { id, json } => {
            let revoked: AdminKey = api.post_as(
                &format!("/api/v1/admin-keys/{}/revoke", path_segment(&id)?),
                &json!({}),
            )?;
            if json {
                print_json(&revoked)?;
            } else {
                print!("{}", table::render(&HEADER, &[row(&revoked)]));
            }
        }
        AdminKeysCommand::Rotate { id, json } => {
            let rotated: CreatedAdminKey = api.post_as(
                &format!("/api/v1/admin-keys/{}/rotate", path_segment(&id)?),
                &json!({}),
            )?;
            if json {
                print_json(&rotated)?;
            } else {
                println!(
                    "Rotated admin key {id}. The new secret (shown only now):\n\n    {}\n",
                    rotated.key
                );
                println!("The old secret no longer works.");
            }
        }
    }
    Ok(())
}

fn row(k: &AdminKey) -> Vec<String> {
    vec![
        k.id.to_string(),
        k.name.clone(),
        k.status.clone(),
        k.hint.clone(),
        table::time(Some(k.created_at)),
    ]
}
