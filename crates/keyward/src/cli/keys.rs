//! `keyward keys create|list|get|revoke|delete|rotate|ephemeral`.

use super::amount::{positive_u32, positive_usd, usd_field};
use super::api::{Api, Refused};
use super::key_ref;
use super::table;
use anyhow::Context;
use clap::Subcommand;
use keyward_api::keys::{
    BudgetInput, CreateKey, CreatedKey, EphemeralRequest, Key, PolicyInput, RotateKey,
};
use keyward_api::List;
use keyward_core::Micros;
use serde_json::json;

/// Key commands.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; its secret is printed once.
    Create {
        /// Project name or id; it must exist (`keyward projects create NAME`).
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
        #[arg(long, allow_hyphen_values = true, value_parser = positive_usd)]
        budget_usd: Option<Micros>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a new secret for the same key; the old one works for the grace period.
    Rotate {
        #[arg(help = key_ref::HELP)]
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
        /// Parent key: its id (key_…) or PROJECT/NAME.
        id: String,
        /// Lifetime, e.g. 10m (default) up to 24h.
        #[arg(long)]
        ttl: Option<String>,
        /// The token's own budget for its whole life, in US dollars.
        #[arg(long, allow_hyphen_values = true, value_parser = positive_usd)]
        budget_usd: Option<Micros>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys.
    List {
        /// Only this project's keys (name or id).
        #[arg(long)]
        project: Option<String>,
        /// Only this organization's keys, or the organization of a `--project` name.
        #[arg(long)]
        org: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Get {
        #[arg(help = key_ref::HELP)]
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: refused on the next request.
    Revoke {
        #[arg(help = key_ref::HELP)]
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a key (its usage history stays).
    Delete {
        #[arg(help = key_ref::HELP)]
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
    #[arg(long, allow_hyphen_values = true, value_parser = positive_u32)]
    rpm: Option<u32>,
    /// Tokens per minute.
    #[arg(long, allow_hyphen_values = true, value_parser = positive_u32)]
    tpm: Option<u32>,
    /// Requests in flight at once.
    #[arg(long, allow_hyphen_values = true, value_parser = positive_u32)]
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
    /// Web origins whose pages may use the key from a browser, exact
    /// (https://app.example.com), repeatable or comma-separated; on a token, a
    /// subset of its parent's.
    #[arg(long = "origin", value_delimiter = ',')]
    origins: Vec<String>,
}

impl LimitArgs {
    /// The restrictions given, or `None` when no flag was.
    pub fn to_policy(&self) -> Option<PolicyInput> {
        let policy = PolicyInput {
            endpoints: self.endpoints.clone(),
            models: (!self.models.is_empty()).then(|| self.models.clone()),
            networks: (!self.allow_ip.is_empty()).then(|| self.allow_ip.clone()),
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrent: self.max_concurrent,
            origins: (!self.origins.is_empty()).then(|| self.origins.clone()),
        };
        (!policy.is_empty()).then_some(policy)
    }
}

/// A duration flag (`10m`, `24h`, …) in whole seconds.
pub fn seconds(flag: &str, value: Option<String>) -> anyhow::Result<Option<i64>> {
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
                project: project.clone(),
                org: org.clone(),
                name,
                tags,
                expires_in_seconds,
                // A mistyped --project must not create a project: creation is
                // `keyward projects create`, said in the error below.
                create_project: false,
                policy: limits.to_policy(),
                budget: budget_usd.map(|m| BudgetInput {
                    usd: usd_field(m),
                    period: None,
                    soft: None,
                }),
            };
            let created: CreatedKey = match api.post_as("/api/v1/keys", &body) {
                Ok(created) => created,
                Err(e) if Refused::is_not_found(&e, "project") => {
                    return Err(no_such_project(&project, org.as_deref()))
                }
                Err(e) => return Err(e),
            };
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
                &format!("/api/v1/keys/{}/rotate", key_ref::resolve(&api, &id)?),
                &RotateKey { grace_seconds },
            )?;
            if json {
                print_json(&rotated)?;
            } else {
                println!(
                    "Rotated key {}. The new secret (shown only now):\n\n    {}\n",
                    rotated.record.record.id, rotated.key
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
                budget_usd: budget_usd.map(usd_field),
            };
            let token: CreatedKey = api.post_as(
                &format!("/api/v1/keys/{}/ephemeral", key_ref::resolve(&api, &id)?),
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
        KeysCommand::List { project, org, json } => {
            let query: Vec<(&str, String)> = project
                .map(|p| ("project", p))
                .into_iter()
                .chain(org.map(|o| ("org", o)))
                .collect();
            let listed: List<Key> = api.get_as("/api/v1/keys", &query)?;
            if json {
                print_json(&listed.data)?;
            } else {
                let rows: Vec<Vec<String>> = listed.data.iter().map(row).collect();
                print!("{}", table::render(&HEADER, &rows));
            }
        }
        KeysCommand::Get { id, json } => show(
            api.get_as(
                &format!("/api/v1/keys/{}", key_ref::resolve(&api, &id)?),
                &[],
            )?,
            json,
        )?,
        KeysCommand::Revoke { id, json } => show(
            api.post_as(
                &format!("/api/v1/keys/{}/revoke", key_ref::resolve(&api, &id)?),
                &json!({}),
            )?,
            json,
        )?,
        KeysCommand::Delete { id, json } => {
            let id = key_ref::resolve(&api, &id)?;
            api.delete(&format!("/api/v1/keys/{id}"))?;
            if json {
                println!("{}", json!({"id": id, "deleted": true}));
            } else {
                println!("Deleted key {id}.");
            }
        }
    }
    Ok(())
}

/// The error for a `--project` name that names no project: which one, and the
/// command that creates it.
pub fn no_such_project(project: &str, org: Option<&str>) -> anyhow::Error {
    let (in_org, org_flag) = match org {
        Some(o) => (
            format!("organization {o:?}"),
            format!(" --org {}", table::shell_word(o)),
        ),
        None => (
            format!("organization {:?}", keyward_api::orgs::DEFAULT_ORG),
            String::new(),
        ),
    };
    anyhow::anyhow!(
        "no project named {project:?} in {in_org}; projects are not created implicitly: \
         create it with `keyward projects create {}{org_flag}`",
        table::shell_word(project)
    )
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
