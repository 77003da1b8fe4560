//! `keyward users list|create|update`: the people of an organization.
//!
//! A new user's password comes from `KEYWARD_PASSWORD`, or from a prompt that
//! does not echo on a terminal; never from a flag, where it would stay in the
//! shell history and the process list.

use super::api::Api;
use super::keys::{path_segment, print_json};
use super::table;
use anyhow::Context;
use clap::Subcommand;
use keyward_api::users::{CreateInvitation, CreateUser, Invitation, UpdateUser, User};
use keyward_api::List;
use keyward_core::Role;
use std::io::IsTerminal;

/// User commands.
#[derive(Subcommand)]
pub enum UsersCommand {
    /// List the users of an organization.
    List {
        /// Organization id or name (the caller's own by default).
        #[arg(long)]
        org: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a user. The password is read from KEYWARD_PASSWORD or asked for.
    Create {
        /// Email address.
        #[arg(long)]
        email: String,
        /// Organization id or name; the bootstrap admin key creates it if needed.
        #[arg(long)]
        org: Option<String>,
        /// owner, admin, member or viewer.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Invite someone by email: a single-use link, valid 7 days, is emailed
    /// to them and printed here once.
    Invite {
        /// Their email address.
        #[arg(long)]
        email: String,
        /// Their role once they accept.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Organization id or name (the caller's own by default).
        #[arg(long)]
        org: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a user's role, disable or enable them, or lift a lock.
    Update {
        /// User id.
        id: String,
        /// A new role.
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        /// Disable the account (ends every session).
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Enable a disabled account.
        #[arg(long)]
        enable: bool,
        /// Lift a lock left by too many failed sign-ins.
        #[arg(long)]
        unlock: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("{s:?} is not a role: owner, admin, member or viewer"))
}

/// The new user's password: `KEYWARD_PASSWORD`, else a prompt without echo.
fn password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("KEYWARD_PASSWORD") {
        if !p.is_empty() {
            return Ok(p);
        }
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("set KEYWARD_PASSWORD to the new user's password (no terminal to ask on)");
    }
    let first = rpassword::prompt_password("Password: ").context("reading the password")?;
    let again = rpassword::prompt_password("Again: ").context("reading the password")?;
    anyhow::ensure!(first == again, "the two passwords differ");
    Ok(first)
}

const HEADER: [&str; 5] = ["ID", "EMAIL", "ROLE", "STATE", "MFA"];

fn row(u: &User) -> Vec<String> {
    let state = if u.disabled_at.is_some() {
        "disabled"
    } else if u.locked_at.is_some() {
        "locked"
    } else {
        "active"
    };
    vec![
        u.id.to_string(),
        u.email.clone(),
        u.role.to_string(),
        state.into(),
        if u.totp { "totp" } else { "-" }.into(),
    ]
}

/// Runs a user command.
pub fn run(cmd: UsersCommand) -> anyhow::Result<()> {
    let api = Api::from_env()?;
    match cmd {
        UsersCommand::List { org, json } => {
            let query: Vec<(&str, String)> = org.into_iter().map(|o| ("org", o)).collect();
            let listed: List<User> = api.get_as("/api/v1/users", &query)?;
            if json {
                print_json(&listed.data)?;
            } else {
                let rows: Vec<Vec<String>> = listed.data.iter().map(row).collect();
                print!("{}", table::render(&HEADER, &rows));
            }
        }
        UsersCommand::Create {
            email,
            org,
            role,
            json,
        } => {
            let password = password()?;
            let created: User = api.post_as(
                "/api/v1/users",
                &CreateUser {
                    email,
                    org,
                    role,
                    password,
                },
            )?;
            if json {
                print_json(&created)?;
            } else {
                println!(
                    "Created user {} ({}, {}).",
                    created.id, created.email, created.role
                );
            }
        }
        UsersCommand::Invite {
            email,
            role,
            org,
            json,
        } => {
            let made: Invitation = api.post_as(
                "/api/v1/invitations",
                &CreateInvitation { email, role, org },
            )?;
            if json {
                print_json(&made)?;
            } else {
                println!(
                    "Invited {} as {}. The link (single use, shown once):",
                    made.email, made.role
                );
                println!("\n    {}\n", made.invitation_url);
            }
        }
        UsersCommand::Update {
            id,
            role,
            disable,
            enable,
            unlock,
            json,
        } => {
            let disabled = match (disable, enable) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let body = UpdateUser {
                role,
                disabled,
                unlock: unlock.then_some(true),
            };
            let path = format!("/api/v1/users/{}", path_segment(&id)?);
            let updated: User = api.patch_as(&path, &body)?;
            if json {
                print_json(&updated)?;
            } else {
                print!("{}", table::render(&HEADER, &[row(&updated)]));
            }
        }
    }
    Ok(())
}
