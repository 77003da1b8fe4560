//! `keyward budgets set|list|delete`.

use super::api::Api;
use super::table;
use clap::{Args, Subcommand};
use keyward_api::budgets::{BudgetStatus, ScopeRef, SetBudget};
use keyward_api::List;
use keyward_core::{Budget, Micros};

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
    fn to_scope(&self) -> ScopeRef {
        ScopeRef {
            org: self.org.clone(),
            project: self.project.clone(),
            key: self.key.clone(),
        }
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
            let ScopeRef { org, project, key } = scope.to_scope();
            let body = SetBudget {
                org,
                project,
                key,
                usd,
                period,
                soft: (!soft.is_empty()).then_some(soft),
            };
            let set: Budget = api.put_as("/api/v1/budgets", &body)?;
            if json {
                // Through a `Value`, as before: the same key order on stdout.
                println!("{}", serde_json::to_value(&set)?);
            } else {
                println!(
                    "Budget set: {} {} — ${:.2} per {}.",
                    set.scope.kind(),
                    set.scope.id(),
                    usd,
                    set.period.as_str()
                );
            }
        }
        BudgetsCommand::List { json } => {
            let listed: List<BudgetStatus> = api.get_as("/api/v1/budgets", &[])?;
            if json {
                println!("{}", serde_json::to_value(&listed.data)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = listed
                .data
                .iter()
                .map(|e| {
                    vec![
                        e.budget.scope.kind().to_owned(),
                        e.budget.scope.id().to_owned(),
                        dollars(e.budget.amount_micros),
                        e.budget.period.as_str().to_owned(),
                        dollars(Micros(e.reserved_micros)),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(&["SCOPE", "ID", "AMOUNT", "PERIOD", "RESERVED NOW"], &rows)
            );
        }
        BudgetsCommand::Delete { scope } => {
            api.delete_with("/api/v1/budgets", &scope.to_scope())?;
            println!("Budget removed.");
        }
    }
    Ok(())
}

/// Micro-dollars as dollars with all six decimals.
fn dollars(m: Micros) -> String {
    format!("${:.6}", m.0 as f64 / 1e6)
}
