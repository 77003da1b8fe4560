//! `keyward budgets set|list|delete`.

use super::api::Api;
use super::table;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Which object a budget is on: exactly one.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct ScopeArgs {
    /// An organization (name or id).
    #[arg(long)]
    org: Option<String>,
    /// A project (name or id).
    #[arg(long)]
    project: Option<String>,
    /// A key (id).
    #[arg(long)]
    key: Option<String>,
}

impl ScopeArgs {
    fn to_json(&self) -> Value {
        json!({"org": self.org, "project": self.project, "key": self.key})
    }
}

/// Budget commands.
#[derive(Subcommand)]
pub enum BudgetsCommand {
    /// Create or replace a hard budget.
    Set {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Amount in US dollars per period.
        #[arg(long)]
        usd: f64,
        /// month (default), day or none.
        #[arg(long)]
        period: Option<String>,
        /// Soft alert thresholds in percent, comma-separated (default 50,80,100).
        #[arg(long, value_delimiter = ',')]
        soft: Vec<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List budgets.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a budget.
    Delete {
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

/// Runs a budget command.
pub fn run(cmd: BudgetsCommand) -> anyhow::Result<()> {
    let api = Api::from_env()?;
    match cmd {
        BudgetsCommand::Set {
            scope,
            usd,
            period,
            soft,
            json,
        } => {
            let mut body = scope.to_json();
            body["usd"] = json!(usd);
            body["period"] = json!(period);
            if !soft.is_empty() {
                body["soft"] = json!(soft);
            }
            let set = api.put("/api/v1/budgets", &body)?;
            if json {
                println!("{set}");
            } else {
                println!(
                    "Budget set: {} {} — ${:.2} per {}.",
                    set["scope"].as_str().unwrap_or("?"),
                    set["id"].as_str().unwrap_or("?"),
                    usd,
                    set["period"].as_str().unwrap_or("month")
                );
            }
        }
        BudgetsCommand::List { json } => {
            let listed = api.get("/api/v1/budgets", &[])?;
            if json {
                println!("{}", listed["data"]);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = listed["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let b = &e["budget"];
                    vec![
                        b["scope"].as_str().unwrap_or("-").to_owned(),
                        b["id"].as_str().unwrap_or("-").to_owned(),
                        format!(
                            "${:.6}",
                            b["amount_micros"].as_i64().unwrap_or(0) as f64 / 1e6
                        ),
                        b["period"].as_str().unwrap_or("-").to_owned(),
                        format!(
                            "${:.6}",
                            e["reserved_micros"].as_i64().unwrap_or(0) as f64 / 1e6
                        ),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(&["SCOPE", "ID", "AMOUNT", "PERIOD", "RESERVED NOW"], &rows)
            );
        }
        BudgetsCommand::Delete { scope } => {
            api.delete_json("/api/v1/budgets", &scope.to_json())?;
            println!("Budget removed.");
        }
    }
    Ok(())
}
