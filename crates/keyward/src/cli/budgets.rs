//! `keyward budgets set|list|delete`.

use super::amount::{positive_u32, positive_usd, usd, usd_field};
use super::api::Api;
use super::key_ref;
use super::keys::print_json;
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
    /// A key: its id (key_…) or PROJECT/NAME.
    #[arg(long)]
    key: Option<String>,
}

impl ScopeArgs {
    /// The scope as the API names it: a key given as PROJECT/NAME is looked up.
    fn to_scope(&self, api: &Api) -> anyhow::Result<ScopeRef> {
        Ok(ScopeRef {
            org: self.org.clone(),
            project: self.project.clone(),
            key: self
                .key
                .as_deref()
                .map(|k| key_ref::resolve(api, k))
                .transpose()?,
        })
    }
}

/// Budget commands.
#[derive(Subcommand)]
pub enum BudgetsCommand {
    /// Create or replace a hard budget.
    Set {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Amount in US dollars per period, up to six decimals.
        #[arg(long, allow_hyphen_values = true, value_parser = positive_usd)]
        usd: Micros,
        /// month (default), day or none.
        #[arg(long)]
        period: Option<String>,
        /// Soft alert thresholds in percent, comma-separated (default 50,80,100).
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true, value_parser = positive_u32)]
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
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a budget command.
pub fn run(cmd: BudgetsCommand) -> anyhow::Result<()> {
    let api = Api::from_env()?;
    match cmd {
        BudgetsCommand::Set {
            scope,
            usd: amount,
            period,
            soft,
            json,
        } => {
            let ScopeRef { org, project, key } = scope.to_scope(&api)?;
            let body = SetBudget {
                org,
                project,
                key,
                usd: usd_field(amount),
                period,
                soft: (!soft.is_empty()).then_some(soft),
            };
            let answer = api.put("/api/v1/budgets", &body)?;
            if json {
                println!("{answer}");
            } else {
                let set: Budget = super::api::typed(answer)?;
                println!(
                    "Budget set: {} {} — {} per {}.",
                    set.scope.kind(),
                    set.scope.id(),
                    usd(set.amount_micros),
                    set.period.as_str()
                );
            }
        }
        BudgetsCommand::List { json } => {
            let answer = api.get("/api/v1/budgets", &[])?;
            if json {
                print_json(&answer["data"])?;
                return Ok(());
            }
            let listed: List<BudgetStatus> = super::api::typed(answer)?;
            let rows: Vec<Vec<String>> = listed
                .data
                .iter()
                .map(|e| {
                    let b = &e.budget;
                    vec![
                        b.scope.kind().to_owned(),
                        b.scope.id().to_owned(),
                        usd(b.amount_micros),
                        b.period.as_str().to_owned(),
                        usd(Micros(e.spent_micros)),
                        usd(Micros(e.reserved_micros)),
                        percent_of(e.spent_micros, b.amount_micros),
                        thresholds(&b.soft_thresholds),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &[
                        "SCOPE",
                        "ID",
                        "AMOUNT",
                        "PERIOD",
                        "SPENT",
                        "RESERVED NOW",
                        "USED",
                        "ALERTS AT"
                    ],
                    &rows
                )
            );
        }
        BudgetsCommand::Delete { scope, json } => {
            let answer = api.delete_with("/api/v1/budgets", &scope.to_scope(&api)?)?;
            if json {
                println!("{answer}");
            } else {
                println!("Budget removed.");
            }
        }
    }
    Ok(())
}

/// How much of the amount is spent, in whole percent (rounded down, so that
/// 100% means the budget is used up).
fn percent_of(spent: i64, amount: Micros) -> String {
    if amount.0 <= 0 {
        return "-".into();
    }
    format!("{}%", i128::from(spent) * 100 / i128::from(amount.0))
}

/// Soft alert thresholds as `50%,80%,100%`, or `-` for none.
fn thresholds(soft: &[u32]) -> String {
    if soft.is_empty() {
        return "-".into();
    }
    soft.iter()
        .map(|t| format!("{t}%"))
        .collect::<Vec<_>>()
        .join(",")
}
