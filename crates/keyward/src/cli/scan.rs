//! `keyward scan`, `keyward rules`, `keyward hook`: a thin layer over
//! `keyward-scan`. This file parses flags, builds a scanner, picks a report
//! format and maps the outcome to an exit code:
//!
//! - 0: nothing found;
//! - 1: at least one finding (after baseline and allowlists);
//! - 2: an error stopped the scan (bad flags, missing path, unreadable config
//!   or baseline, not a git repository, output not writable).
//!
//! Inputs skipped during the scan (unreadable files, corrupt archives,
//! decompression bombs) are reported on stderr and do not change the exit code,
//! so one odd file cannot break CI forever; `--strict` turns them into exit 2
//! when nothing was found.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use keyward_scan::baseline::Baseline;
use keyward_scan::config::{Config, BASELINE_FILE};
use keyward_scan::input::archive::ArchiveLimits;
use keyward_scan::matcher::{Matcher, ValueAllowlist};
use keyward_scan::report::{self, progress::Progress, Format, ReportOptions};
use keyward_scan::rules::RuleSet;
use keyward_scan::{Diagnostic, Finding, ScanOptions, Scanner, Sink};

/// Output format of `keyward scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Redacted text for people.
    Human,
    /// A JSON array (the stable contract).
    Json,
    /// One JSON object per line.
    Jsonl,
    /// SARIF 2.1.0 for code scanning.
    Sarif,
}

/// When to colour human output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorArg {
    /// When standard output is a terminal.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Arguments of `keyward scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Files and directories to scan (`-` reads standard input). With --git or
    /// --staged: the repository (default `.`).
    pub paths: Vec<PathBuf>,
    /// Scan the whole git history: every blob reachable from every ref, once.
    #[arg(long)]
    pub git: bool,
    /// With --git: only commits not reachable from REV (incremental runs).
    #[arg(long, value_name = "REV")]
    pub since: Option<String>,
    /// Scan the changes staged for the next commit (pre-commit hook).
    #[arg(long, conflicts_with = "git")]
    pub staged: bool,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = FormatArg::Human, env = "KEYWARD_SCAN_FORMAT")]
    pub format: FormatArg,
    /// Write the report to FILE instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Suppress secrets listed in this baseline file (matched by secret
    /// hash). Default: `[scan] baseline` in the config, else
    /// `.keyward-baseline.json` at the root of the scanned repository or
    /// directory (else in the current directory) when present.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Apply no baseline, not even the one found by default.
    #[arg(long, conflicts_with = "baseline")]
    pub no_baseline: bool,
    /// Write every finding of this scan to a baseline file, then exit 0.
    #[arg(long, value_name = "FILE")]
    pub write_baseline: Option<PathBuf>,
    /// Include the secrets themselves in the report.
    #[arg(long)]
    pub show_secrets: bool,
    /// Config file (default: `.keyward.toml` at the root of the scanned
    /// repository or directory, else in the current directory).
    #[arg(long, value_name = "FILE", env = "KEYWARD_SCAN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Skip files ignored by .gitignore (not the default: ignored .env files
    /// are where secrets sit).
    #[arg(long)]
    pub respect_gitignore: bool,
    /// Skip files larger than this many bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_file_size: Option<u64>,
    /// How many archive layers to open.
    #[arg(long, value_name = "N")]
    pub archive_max_depth: Option<u32>,
    /// Worker threads (default: one per CPU).
    #[arg(long, short = 'j', value_name = "N", default_value_t = 0)]
    pub threads: usize,
    /// Exit 2 when inputs had to be skipped and nothing was found.
    #[arg(long)]
    pub strict: bool,
    /// Colour for human output.
    #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
    pub color: ColorArg,
    /// No progress line on stderr.
    #[arg(long)]
    pub no_progress: bool,
    /// Send every keyward key found (checksum-valid; only its SHA-256 is sent) to
    /// the server at KEYWARD_URL (admin key KEYWARD_ADMIN_KEY), which disables
    /// the live ones; says which on stderr.
    #[arg(long)]
    pub report: bool,
}

/// `keyward rules …`.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Prove every rule's examples and negative examples (builtin and
    /// `.keyward.toml` rules).
    Check,
    /// List the rules.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `keyward hook …`.
#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// Install a git pre-commit hook running `keyward scan --staged`.
    Install {
        /// Replace an existing pre-commit hook that keyward did not write.
        #[arg(long)]
        force: bool,
    },
}

/// Collects findings; prints diagnostics on stderr as they happen.
#[derive(Default)]
struct CliSink {
    findings: Mutex<Vec<Finding>>,
    diagnostics: Mutex<u64>,
}

impl Sink for CliSink {
    fn finding(&self, finding: Finding) {
        self.findings.lock().expect("poisoned").push(finding);
    }
    fn diagnostic(&self, diagnostic: Diagnostic) {
        *self.diagnostics.lock().expect("poisoned") += 1;
        eprintln!("warning: {diagnostic}");
    }
}

fn load_config(explicit: Option<&Path>) -> anyhow::Result<Config> {
    match explicit {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::discover(Path::new("."))?.unwrap_or_default()),
    }
}

/// The root of what is scanned: the repository's top level with
/// `--git`/`--staged`, the directory when one directory is given; `None`
/// when several paths (or one file) are scanned.
fn scan_root(args: &ScanArgs) -> Option<PathBuf> {
    match args.paths.as_slice() {
        [] if args.git || args.staged => Some(repo_top_level(Path::new("."))),
        [one] if args.git || args.staged => Some(repo_top_level(one)),
        [one] if one.is_dir() => Some(one.clone()),
        _ => None,
    }
}

/// The work tree's top level of the repository at `path`, so that a scan
/// run from a subdirectory still finds the root's config and baseline; the
/// path itself when git cannot tell (a bare repository, or not a repository,
/// which the scan then reports).
fn repo_top_level(path: &Path) -> PathBuf {
    std::process::Command::new("git")
        .arg("-C")
        .arg(path)
        .args(["rev-parse", "--show-toplevel"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n')))
        .filter(|top| !top.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
}

/// `.keyward.toml` at the root of what is scanned, so a scan run from
/// elsewhere applies the scanned repository's allowlists, as gitleaks does;
/// otherwise the current directory's.
fn discover_config(root: Option<&Path>) -> anyhow::Result<Config> {
    if let Some(config) = root.map(Config::discover).transpose()?.flatten() {
        return Ok(config);
    }
    Ok(Config::discover(Path::new("."))?.unwrap_or_default())
}

/// The baseline to apply (issue 17, item 2): `--baseline`; none with
/// `--no-baseline`, or when writing one (applying the old one would leave
/// its secrets out of the new one); else the config's `[scan] baseline`;
/// else `.keyward-baseline.json` at the root of what is scanned, or in the
/// current directory, when there is one.
fn baseline_path(args: &ScanArgs, config: &Config, root: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = &args.baseline {
        return Some(path.clone());
    }
    if args.no_baseline || args.write_baseline.is_some() {
        return None;
    }
    if let Some(path) = config.baseline_path() {
        return Some(path);
    }
    root.into_iter()
        .chain([Path::new(".")])
        .map(|dir| dir.join(BASELINE_FILE))
        .find(|path| path.is_file())
}

fn rules_with(config: &Config) -> anyhow::Result<RuleSet> {
    let mut rules = RuleSet::builtin().context("builtin rules")?;
    config.apply_rules(&mut rules)?;
    Ok(rules)
}

/// Runs `keyward scan` and returns the process exit code.
pub fn run(args: ScanArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    disable_transparent_huge_pages();
    let root = scan_root(&args);
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => discover_config(root.as_deref())?,
    };
    let rules = rules_with(&config)?;
    let allow: ValueAllowlist = config.value_allowlist()?;
    let mut archives = ArchiveLimits::default();
    if let Some(depth) = args.archive_max_depth.or(config.scan.archive_max_depth) {
        archives.max_depth = depth;
    }
    let options = ScanOptions {
        threads: args.threads,
        respect_gitignore: args.respect_gitignore || config.scan.respect_gitignore.unwrap_or(false),
        max_file_size: args.max_file_size.or(config.scan.max_file_size),
        archives,
        skip_paths: config.skip_paths()?,
        ..ScanOptions::default()
    };
    let mut scanner = Scanner::new(Matcher::new(rules, allow), options);
    if let Some(path) = baseline_path(&args, &config, root.as_deref()) {
        scanner = scanner.with_baseline(&Baseline::load(&path)?);
    }
    let sink = CliSink::default();
    let progress = (!args.no_progress && std::io::stderr().is_terminal())
        .then(|| Progress::start(scanner.stats()));
    let outcome = scan_inputs(&scanner, &args, &sink);
    if let Some(p) = progress {
        p.finish();
    }
    outcome?;

    let mut findings = sink.findings.into_inner().expect("poisoned");
    report::sort_findings(&mut findings);
    let diagnostics = sink.diagnostics.into_inner().expect("poisoned");

    if let Some(path) = &args.write_baseline {
        std::fs::write(path, Baseline::from_findings(&findings).to_json())
            .with_context(|| format!("writing baseline {}", path.display()))?;
        eprintln!(
            "keyward: wrote {} secrets to {}",
            findings.len(),
            path.display()
        );
        return Ok(0);
    }

    if args.report {
        super::report::send(&findings)?;
    }
    let to_terminal = args.output.is_none() && std::io::stdout().is_terminal();
    let color = match args.color {
        ColorArg::Always => true,
        ColorArg::Never => false,
        ColorArg::Auto => to_terminal && std::env::var_os("NO_COLOR").is_none(),
    };
    let format = match args.format {
        FormatArg::Human => Format::Human,
        FormatArg::Json => Format::Json,
        FormatArg::Jsonl => Format::Jsonl,
        FormatArg::Sarif => Format::Sarif,
    };
    let options = ReportOptions {
        show_secrets: args.show_secrets,
        color,
    };
    let rules = scanner.matcher().rules();
    match &args.output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut out = std::io::BufWriter::new(file);
            report::write(format, &mut out, &findings, rules, options)?;
            out.flush()?;
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            report::write(format, &mut out, &findings, rules, options)?;
            out.flush()?;
        }
    }

    if format == Format::Human || args.output.is_some() {
        let stats = scanner.stats();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "keyward: {} finding{} ({} suppressed), {} inputs, {:.1} MB in {:.2}s{}",
            findings.len(),
            if findings.len() == 1 { "" } else { "s" },
            load(&stats.suppressed),
            load(&stats.inputs),
            load(&stats.bytes) as f64 / 1e6,
            started.elapsed().as_secs_f64(),
            if diagnostics > 0 {
                format!(", {diagnostics} inputs skipped")
            } else {
                String::new()
            },
        );
    }
    Ok(if !findings.is_empty() {
        1
    } else if args.strict && diagnostics > 0 {
        2
    } else {
        0
    })
}

fn scan_inputs(scanner: &Scanner, args: &ScanArgs, sink: &CliSink) -> anyhow::Result<()> {
    if args.since.is_some() && !args.git {
        bail!("--since needs --git");
    }
    if args.git || args.staged {
        let repo = match args.paths.as_slice() {
            [] => PathBuf::from("."),
            [one] => one.clone(),
            _ => bail!("--git and --staged take one repository path"),
        };
        if args.git {
            scanner.scan_git_history(&repo, args.since.as_deref(), sink)?;
        } else {
            scanner.scan_git_staged(&repo, sink)?;
        }
        return Ok(());
    }
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };
    let (stdin, files): (Vec<PathBuf>, Vec<PathBuf>) =
        paths.into_iter().partition(|p| p.as_os_str() == "-");
    if !stdin.is_empty() {
        let stdin = std::io::stdin();
        scanner.scan_reader("-", &mut stdin.lock(), sink);
    }
    scanner.scan_paths(&files, sink)?;
    Ok(())
}

/// A scan fills mimalloc's heap once and exits; with transparent huge pages
/// (`always` on many distributions) the kernel backs and zeroes 2 MiB pages
/// of which a scan touches little. Off for this process: peak RSS on the
/// benchmark tree 73 instead of 120 MB, slightly less kernel time
/// (docs/BENCHMARKS.md history, `git log -p`). Pages already mapped keep theirs; a failure (an old
/// kernel) only loses that.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// Runs `keyward rules …` and returns the process exit code.
pub fn run_rules(cmd: RulesCommand) -> anyhow::Result<i32> {
    let config = load_config(None)?;
    let rules = rules_with(&config)?;
    match cmd {
        RulesCommand::Check => {
            let failures = keyward_scan::rules::check(&rules);
            let examples: usize = rules
                .rules()
                .iter()
                .map(|r| r.spec.examples.len() + r.spec.negative_examples.len())
                .sum();
            for f in &failures {
                eprintln!("FAIL {}: {}", f.rule_id, f.message);
            }
            if failures.is_empty() {
                println!(
                    "ok: {} rules, {} examples and negative examples hold",
                    rules.len(),
                    examples
                );
                Ok(0)
            } else {
                println!("{} failures in {} rules", failures.len(), rules.len());
                Ok(1)
            }
        }
        RulesCommand::List { json } => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            if json {
                let list: Vec<serde_json::Value> = rules
                    .rules()
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "id": r.spec.id,
                            "name": r.spec.name,
                            "provider": r.provider,
                            "keywords": r.spec.keywords,
                            "validator": r.spec.validator.map(|_| "crc32-base62"),
                            "min_entropy": r.spec.min_entropy,
                            "generic": r.spec.generic,
                            "references": r.spec.references,
                        })
                    })
                    .collect();
                serde_json::to_writer_pretty(&mut out, &list)?;
                writeln!(out)?;
            } else {
                for r in rules.rules() {
                    let check = if r.spec.validator.is_some() {
                        "  [checksum]"
                    } else {
                        ""
                    };
                    writeln!(
                        out,
                        "{:<44} {:<24} {}{}",
                        r.spec.id, r.provider, r.spec.name, check
                    )?;
                }
                writeln!(out, "{} rules", rules.len())?;
            }
            Ok(0)
        }
    }
}

const HOOK_MARKER: &str = "# installed by keyward hook install";

/// The pre-commit hook (issue 17, item 4). It runs the binary that
/// installed it, so a commit made where `keyward` is not on `PATH` (a GUI
/// client, another shell) is still scanned; if that binary has moved, the
/// one on `PATH`. With neither it fails closed — a security hook that
/// silently lets commits through would be worse — and says exactly what
/// happened and how to go on.
fn hook_script(exe: &str) -> String {
    let recorded = shell_quote(exe);
    format!(
        r#"#!/bin/sh
{HOOK_MARKER}
# Blocks commits that add secrets. Bypass once with: git commit --no-verify
recorded={recorded}
if [ -x "$recorded" ]; then
    keyward="$recorded"
elif keyward=$(command -v keyward 2>/dev/null) && [ -n "$keyward" ]; then
    :
else
    printf '%s\n' "keyward pre-commit hook: keyward binary not found at $recorded nor on PATH; commit blocked." \
        'Reinstall with `keyward hook install --force`, or bypass once with `git commit --no-verify`.' >&2
    exit 1
fi
exec "$keyward" scan --staged --no-progress
"#
    )
}

/// `s` as one POSIX shell word: single-quoted, each `'` written as `'\''`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `keyward hook …` and returns the process exit code.
pub fn run_hook(cmd: HookCommand) -> anyhow::Result<i32> {
    let HookCommand::Install { force } = cmd;
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--git-path", "hooks"])
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "not inside a git repository: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let hooks = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    std::fs::create_dir_all(&hooks).with_context(|| format!("creating {}", hooks.display()))?;
    let hook = hooks.join("pre-commit");
    if let Ok(existing) = std::fs::read_to_string(&hook) {
        if !existing.contains(HOOK_MARKER) && !force {
            bail!(
                "{} exists and was not written by keyward; use --force to replace it",
                hook.display()
            );
        }
    }
    let exe = std::env::current_exe().context("finding the keyward binary")?;
    let script = hook_script(&exe.to_string_lossy());
    std::fs::write(&hook, script).with_context(|| format!("writing {}", hook.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    }
    println!("installed {}", hook.display());
    Ok(0)
}
