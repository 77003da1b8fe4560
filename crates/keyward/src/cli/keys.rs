//! `keyward keys create|list|get|revoke|delete`.

use super::api::Api;
use super::table;
use anyhow::Context;
use clap::Subcommand;
use keyward_api::keys::{
    BudgetInput, CreateKey, CreatedKey, EphemeralRequest, Key, PolicyInput, RotateKey,
};
use keyward_api::List;
use serde_json::json;

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
        #[command(flatten)]
        limits: LimitArgs,
        /// A monthly budget for this key, in US dollars.
        #[arg(long)]
        budget_usd: Option<f64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a new secret for the same key; the old one works for the grace period.
    Rotate {
        /// Key id.
        id: String,
        /// How long the old secret keeps working, e.g. 24h (default) or 0.
        #[arg(long)]
        grace: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a short-lived client token (kwe_) derived from a key.
    Ephemeral {
        /// Parent key id.
        id: String,
        /// Lifetime, e.g. 10m (default) up to 24h.
        #[arg(long)]
        ttl: Option<String>,
        /// The token's own budget for its whole life, in US dollars.
        #[arg(long)]
        budget_usd: Option<f64>,
        #[command(flatten)]
        limits: LimitArgs,
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

/// Restrictions and rate limits shared by `create` and `ephemeral`.
#[derive(clap::Args)]
pub struct LimitArgs {
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<u32>,
    /// Requests in flight at once.
    #[arg(long)]
    max_concurrent: Option<u32>,
    /// Allowed model globs, comma-separated (e.g. gpt-4o-mini*,text-embedding-*).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Allowed endpoints: a preset (all, read-only, chat-only, inference,
    /// embeddings-only) or `METHOD /path` patterns, comma-separated.
    #[arg(long)]
    endpoints: Option<String>,
    /// Allowed client networks, comma-separated CIDRs (IPv4 or IPv6).
    #[arg(long, value_delimiter = ',')]
    allow_ip: Vec<String>,
}

impl LimitArgs {
    /// The restrictions given, or `None` when no flag was.
    fn to_policy(&self) -> Option<PolicyInput> {
        let policy = PolicyInput {
            endpoints: self.endpoints.clone(),
            models: (!self.models.is_empty()).then(|| self.models.clone()),
            networks: (!self.allow_ip.is_empty()).then(|| self.allow_ip.clone()),
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrent: self.max_concurrent,
        };
        (!policy.is_empty()).then_some(policy)
    }
}

fn seconds(flag: &str, value: Option<String>) -> anyhow::Result<Option<i64>> {
    value
        .map(|d| keyward_core::duration::parse_ms(&d).map(|ms| ms / 1000))
        .transpose()
        .map_err(anyhow::Error::msg)
        .with_context(|| flag.to_owned())
}

/// Columns of the key table.
const HEADER: [&str; 8] = [
    "ID",
    "NAME",
    "PROJECT",
    "STATUS",
    "KEY",
    "LAST USED",
    "CREATED",
    "NOTE",
];

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
            limits,
            budget_usd,
            json,
        } => {
            let expires_in_seconds = seconds("--expires-in", expires_in)?;
            let body = CreateKey {
                project,
                org,
                name,
                tags,
                expires_in_seconds,
                create_project: true,
                policy: limits.to_policy(),
                budget: budget_usd.map(|usd| BudgetInput {
                    usd,
                    period: None,
                    soft: None,
                }),
            };
            let created: CreatedKey = api.post_as("/api/v1/keys", &body)?;
            if json {
                print_json(&created)?;
            } else {
                let record = &created.record.record;
                println!(
                    "Created key {} ({}) in project {}.",
                    record.id, record.name, record.project_id
                );
                println!("\n    {}\n", created.key);
                println!("This is the only time the key is shown. Store it in a secret manager or an environment variable.");
            }
        }
        KeysCommand::Rotate { id, grace, json } => {
            let grace_seconds = seconds("--grace", grace)?;
            let rotated: CreatedKey = api.post_as(
                &format!("/api/v1/keys/{}/rotate", path_segment(&id)?),
                &RotateKey { grace_seconds },
            )?;
            if json {
                print_json(&rotated)?;
            } else {
                println!(
                    "Rotated key {id}. The new secret (shown only now):\n\n    {}\n",
                    rotated.key
                );
                println!("The old secret keeps working for the grace period, then stops.");
            }
        }
        KeysCommand::Ephemeral {
            id,
            ttl,
            budget_usd,
            limits,
            json,
        } => {
            let body = EphemeralRequest {
                ttl_seconds: seconds("--ttl", ttl)?,
                policy: limits.to_policy(),
                budget_usd,
            };
            let token: CreatedKey = api.post_as(
                &format!("/api/v1/keys/{}/ephemeral", path_segment(&id)?),
                &body,
            )?;
            if json {
                print_json(&token)?;
            } else {
                println!("{}", token.key);
                eprintln!(
                    "Ephemeral token {} expires at {} UTC.",
                    token.record.record.id,
                    table::time(token.record.record.expires_at)
                );
            }
        }
        KeysCommand::List { project, json } => {
            let query: Vec<(&str, String)> = project.into_iter().map(|p| ("project", p)).collect();
            let listed: List<Key> = api.get_as("/api/v1/keys", &query)?;
            if json {
                print_json(&listed.data)?;
            } else {
                let rows: Vec<Vec<String>> = listed.data.iter().map(row).collect();
                print!("{}", table::render(&HEADER, &rows));
            }
        }
        KeysCommand::Get { id, json } => show(
            api.get_as(&format!("/api/v1/keys/{}", path_segment(&id)?), &[])?,
            json,
        )?,
        KeysCommand::Revoke { id, json } => show(
            api.post_as(
                &format!("/api/v1/keys/{}/revoke", path_segment(&id)?),
                &json!({}),
            )?,
            json,
        )?,
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

fn show(key: Key, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(&key)?;
    } else {
        print!("{}", table::render(&HEADER, &[row(&key)]));
    }
    Ok(())
}

/// Prints an answer as JSON, through a `Value` as before: the same key order.
pub fn print_json<T: serde::Serialize>(answer: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_value(answer)?);
    Ok(())
}

fn row(k: &Key) -> Vec<String> {
    let r = &k.record;
    vec![
        r.id.to_string(),
        r.name.clone(),
        r.project_id.to_string(),
        r.status.clone(),
        r.hint.clone(),
        table::time(r.last_used_at),
        table::time(Some(r.created_at)),
        if k.rotation_due {
            "rotation due".into()
        } else if k.ephemeral {
            "ephemeral".into()
        } else {
            String::new()
        },
    ]
}

/// Ids go into URL paths: refuse anything that is not a plain id.
pub fn path_segment(id: &str) -> anyhow::Result<&str> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(id)
    } else {
        anyhow::bail!("{id:?} is not a valid id")
    }
}
