//! The `keyward` binary: parses flags and hands over to the library crates.
//! Errors are printed with their context chain and exit with code 2.

mod cli;

/// mimalloc: the gateway allocates small, short-lived buffers on every request,
/// where glibc's allocator showed up at ~12% of samples (docs/BENCHMARKS.md history, `git log -p`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "keyward",
    version,
    about = "API key safety: gateway, key management and leak scanner"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway, management API and metrics endpoint.
    Serve(Box<cli::serve::ServeArgs>),
    /// Run the simulated OpenAI-compatible upstream on its own (for trials and benchmarks).
    Simulate(cli::serve::SimulateArgs),
    /// Manage gateway keys through the management API.
    Keys {
        #[command(subcommand)]
        command: cli::keys::KeysCommand,
    },
    /// Manage admin keys (kwa_), the management API's own keys.
    AdminKeys {
        #[command(subcommand)]
        command: cli::admin_keys::AdminKeysCommand,
    },
    /// Manage the people of an organization (accounts).
    Users {
        #[command(subcommand)]
        command: cli::users::UsersCommand,
    },
    /// Create and list organizations.
    Orgs {
        #[command(subcommand)]
        command: cli::orgs::OrgsCommand,
    },
    /// Create and list projects; show and set their shared limits.
    Projects {
        #[command(subcommand)]
        command: cli::orgs::ProjectsCommand,
    },
    /// Set and list hard budgets on organizations, projects and keys.
    Budgets {
        #[command(subcommand)]
        command: cli::budgets::BudgetsCommand,
    },
    /// Manage webhooks that receive leak and budget alerts.
    Webhooks {
        #[command(subcommand)]
        command: cli::webhooks::WebhooksCommand,
    },
    /// Manage e-mail recipients of leak and budget alerts.
    EmailRecipients {
        #[command(subcommand)]
        command: cli::recipients::RecipientsCommand,
    },
    /// List leak reports, clear a false one, report tokens or upload a file to scan.
    Leaks {
        #[command(subcommand)]
        command: cli::leaks::LeaksCommand,
    },
    /// Read the audit log, or verify its hash chains.
    Audit {
        #[command(subcommand)]
        command: cli::audit::AuditCommand,
    },
    /// Mint a short-lived client token with a gateway key (no admin key needed).
    Tokens {
        #[command(subcommand)]
        command: cli::tokens::TokensCommand,
    },
    /// Print the management API's OpenAPI document, as the server serves it.
    Openapi,
    /// Show metered usage.
    Usage(cli::usage::UsageArgs),
    /// Check that a running server answers /healthz (exit 0 healthy, 1 not):
    /// the container image's HEALTHCHECK.
    Health(cli::health::HealthArgs),
    /// Scan files, git history, archives or stdin for leaked secrets.
    Scan(cli::scan::ScanArgs),
    /// Inspect and check the scanner's rules.
    Rules {
        #[command(subcommand)]
        command: cli::scan::RulesCommand,
    },
    /// Install integrations such as the git pre-commit hook.
    Hook {
        #[command(subcommand)]
        command: cli::scan::HookCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(*args).map(|()| 0),
        Command::Simulate(args) => cli::serve::simulate(args).map(|()| 0),
        Command::Keys { command } => cli::keys::run(command).map(|()| 0),
        Command::AdminKeys { command } => cli::admin_keys::run(command).map(|()| 0),
        Command::Users { command } => cli::users::run(command).map(|()| 0),
        Command::Orgs { command } => cli::orgs::run_orgs(command).map(|()| 0),
        Command::Projects { command } => cli::orgs::run_projects(command).map(|()| 0),
        Command::Budgets { command } => cli::budgets::run(command).map(|()| 0),
        Command::EmailRecipients { command } => cli::recipients::run(command).map(|()| 0),
        Command::Leaks { command } => cli::leaks::run(command).map(|()| 0),
        Command::Audit { command } => cli::audit::run(command),
        Command::Tokens { command } => cli::tokens::run(command).map(|()| 0),
        Command::Openapi => cli::api::print_openapi().map(|()| 0),
        Command::Webhooks { command } => cli::webhooks::run(command).map(|()| 0),
        Command::Usage(args) => cli::usage::run(args).map(|()| 0),
        Command::Health(args) => cli::health::run(args).map(i32::from),
        Command::Scan(args) => cli::scan::run(args),
        Command::Rules { command } => cli::scan::run_rules(command),
        Command::Hook { command } => cli::scan::run_hook(command),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
