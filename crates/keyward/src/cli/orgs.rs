//! `keyward orgs create|list` and `keyward projects create|list|policy`.

use super::amount::positive_u32;
use super::api::{typed, Api};
use super::keys::{path_segment, print_json};
use super::table;
use anyhow::bail;
use clap::Subcommand;
use keyward_api::orgs::{
    CreateOrg, CreateProject, Org, Project, ProjectPolicy, SetProjectPolicy, DEFAULT_ORG,
};
use keyward_api::List;
use keyward_core::ProjectId;
use serde_json::Value;

/// Organization commands.
#[derive(Subcommand)]
pub enum OrgsCommand {
    /// Create an organization.
    Create {
        /// Its name, unique on this server.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List organizations.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Project commands.
#[derive(Subcommand)]
pub enum ProjectsCommand {
    /// Create a project: keys are created in existing projects only.
    Create {
        /// Its name, unique within the organization.
        name: String,
        /// The organization (name or id); the default organization otherwise.
        #[arg(long)]
        org: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List projects.
    List {
        /// Only this organization's projects (name or id).
        #[arg(long)]
        org: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show or set a project's shared limits and key-age rule.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

/// `keyward projects policy get|set`.
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Show a project's policy.
    Get {
        /// The project: its name or id.
        project: String,
        /// The organization of a project name (default organization otherwise).
        #[arg(long)]
        org: Option<String>,
        /// Print JSON (the policy object of the API's project).
        #[arg(long)]
        json: bool,
    },
    /// Replace a project's policy: a limit not given is removed.
    Set {
        /// The project: its name or id.
        project: String,
        /// The organization of a project name (default organization otherwise).
        #[arg(long)]
        org: Option<String>,
        /// Requests per minute across all the project's keys.
        #[arg(long, allow_hyphen_values = true, value_parser = positive_u32)]
        rpm: Option<u32>,
        /// Tokens per minute across all the project's keys.
        #[arg(long, allow_hyphen_values = true, value_parser = positive_u32)]
        tpm: Option<u32>,
        /// Requests in flight at once across all the project's keys.
        #[arg(long, allow_hyphen_values = true, value_parser = positive_u32)]
        max_concurrent: Option<u32>,
        /// Keys whose secret is older than this many days are flagged for rotation.
        #[arg(long, allow_hyphen_values = true, value_parser = positive_u32)]
        max_key_age_days: Option<u32>,
        /// Print JSON (the API's answer: the project).
        #[arg(long)]
        json: bool,
    },
}

/// Runs an organization command.
pub fn run_orgs(cmd: OrgsCommand) -> anyhow::Result<()> {
    let api = Api::from_env()?;
    match cmd {
        OrgsCommand::Create { name, json } => {
            let answer = api.post("/api/v1/orgs", &CreateOrg { name })?;
            if json {
                println!("{answer}");
            } else {
                let org: Org = typed(answer)?;
                println!("Created organization {} ({}).", org.name, org.id);
            }
        }
        OrgsCommand::List { json } => {
            let answer = api.get("/api/v1/orgs", &[])?;
            if json {
                print_json(&answer["data"])?;
            } else {
                let listed: List<Org> = typed(answer)?;
                let rows: Vec<Vec<String>> = listed
                    .data
                    .iter()
                    .map(|o| {
                        vec![
                            o.id.to_string(),
                            o.name.clone(),
                            table::time(Some(o.created_at)),
                        ]
                    })
                    .collect();
                print!("{}", table::render(&["ID", "NAME", "CREATED"], &rows));
            }
        }
    }
    Ok(())
}

/// Runs a project command.
pub fn run_projects(cmd: ProjectsCommand) -> anyhow::Result<()> {
    let api = Api::from_env()?;
    match cmd {
        ProjectsCommand::Create { name, org, json } => {
            let answer = api.post("/api/v1/projects", &CreateProject { name, org })?;
            if json {
                println!("{answer}");
            } else {
                let p: Project = typed(answer)?;
                println!(
                    "Created project {} ({}) in organization {}.",
                    p.name, p.id, p.org_id
                );
            }
        }
        ProjectsCommand::List { org, json } => {
            let query: Vec<(&str, String)> = org.into_iter().map(|o| ("org", o)).collect();
            let answer = api.get("/api/v1/projects", &query)?;
            if json {
                print_json(&answer["data"])?;
            } else {
                let listed: List<Project> = typed(answer)?;
                let rows: Vec<Vec<String>> = listed
                    .data
                    .iter()
                    .map(|p| {
                        vec![
                            p.id.to_string(),
                            p.name.clone(),
                            p.org_id.to_string(),
                            policy_summary(&p.policy),
                            table::time(Some(p.created_at)),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table::render(&["ID", "NAME", "ORG", "POLICY", "CREATED"], &rows)
                );
            }
        }
        ProjectsCommand::Policy {
            command: PolicyCommand::Get { project, org, json },
        } => {
            let found = find_project(&api, &project, org.as_deref())?;
            if json {
                print_json(&found["policy"])?;
            } else {
                let p: Project = typed(found)?;
                print_policy(&p);
            }
        }
        ProjectsCommand::Policy {
            command:
                PolicyCommand::Set {
                    project,
                    org,
                    rpm,
                    tpm,
                    max_concurrent,
                    max_key_age_days,
                    json,
                },
        } => {
            // The route takes an id, or a name in the default organization
            // only: look the project up first so that --org works too.
            let found: Project = typed(find_project(&api, &project, org.as_deref())?)?;
            let answer = api.put(
                &format!(
                    "/api/v1/projects/{}/policy",
                    path_segment(found.id.as_str())?
                ),
                &SetProjectPolicy {
                    rpm,
                    tpm,
                    max_concurrent,
                    max_key_age_days,
                },
            )?;
            if json {
                println!("{answer}");
            } else {
                let p: Project = typed(answer)?;
                print_policy(&p);
            }
        }
    }
    Ok(())
}

/// The API's entry for a project named by id, or by name within `org`. There
/// is no route for one project, so it is picked from the list, which also
/// resolves the organization (and says when that does not exist).
fn find_project(api: &Api, project: &str, org: Option<&str>) -> anyhow::Result<Value> {
    let by_id = ProjectId::parse(project).is_some();
    let in_org = org.unwrap_or(DEFAULT_ORG);
    let query: Vec<(&str, String)> = if by_id {
        Vec::new()
    } else {
        vec![("org", in_org.to_owned())]
    };
    let answer = api.get("/api/v1/projects", &query)?;
    let listed: List<Project> = typed(answer.clone())?;
    let at = listed.data.iter().position(|p| {
        if by_id {
            p.id.as_str() == project
        } else {
            p.name == project
        }
    });
    match at {
        Some(i) => Ok(answer["data"][i].clone()),
        None if by_id => bail!("no project has the id {project:?}: see `keyward projects list`"),
        None => {
            let org_flag = org
                .map(|o| format!(" --org {}", table::shell_word(o)))
                .unwrap_or_default();
            bail!(
                "no project named {project:?} in organization {in_org:?}: see `keyward projects list{org_flag}`"
            )
        }
    }
}

/// A project's limits on one line, for the project table.
fn policy_summary(p: &ProjectPolicy) -> String {
    let parts: Vec<String> = [
        p.rpm.map(|v| format!("rpm={v}")),
        p.tpm.map(|v| format!("tpm={v}")),
        p.max_concurrent.map(|v| format!("max_concurrent={v}")),
        p.max_key_age_ms.map(|v| format!("max_key_age={}", days(v))),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn print_policy(p: &Project) {
    let show = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let rows = vec![
        vec!["rpm".to_owned(), show(p.policy.rpm)],
        vec!["tpm".to_owned(), show(p.policy.tpm)],
        vec!["max_concurrent".to_owned(), show(p.policy.max_concurrent)],
        vec![
            "max_key_age".to_owned(),
            p.policy.max_key_age_ms.map_or_else(|| "-".to_owned(), days),
        ],
    ];
    println!("Project {} ({}):", p.name, p.id);
    print!("{}", table::render(&["LIMIT", "VALUE"], &rows));
}

/// A key age in ms as days (the unit `--max-key-age-days` takes).
fn days(ms: i64) -> String {
    const DAY_MS: i64 = 86_400_000;
    if ms % DAY_MS == 0 {
        format!("{}d", ms / DAY_MS)
    } else {
        format!("{}ms", ms)
    }
}
