//! `.keyward.toml`: extra rules, disabled rules, path and value allowlists and
//! scan settings for a repository.
//!
//! ```toml
//! [scan]
//! respect_gitignore = false
//! max_file_size = 104857600
//! archive_max_depth = 5
//! baseline = "security/baseline.json"        # relative to this file
//!
//! [allow]
//! paths = ["tests/fixtures/**", "**/*.snap"]   # globs, never scanned
//! values = ["sk-test-not-a-secret-0000"]        # exact secrets to ignore
//! value_patterns = ["^AKIA[0-9A-Z]{12}TEST$"]   # regexes over the secret
//! rules = ["generic.password-assignment"]      # rule ids to disable
//!
//! [[rules]]                                    # same schema as rule files
//! id = "acme.internal-token"
//! name = "ACME internal token"
//! pattern = '''\bacme_[A-Za-z0-9]{32}\b'''
//! keywords = ["acme_"]
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::matcher::ValueAllowlist;
use crate::rules::{Rule, RuleSet, RuleSpec};
use crate::ScanError;

/// The file looked for at the root of what is scanned.
pub const CONFIG_FILE: &str = ".keyward.toml";

/// The baseline used, when present, at the root of what is scanned.
pub const BASELINE_FILE: &str = ".keyward-baseline.json";

/// Scan settings from the config file (flags override them).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanSettings {
    /// Honour `.gitignore`.
    pub respect_gitignore: Option<bool>,
    /// Skip files over this many bytes.
    pub max_file_size: Option<u64>,
    /// Archive nesting limit.
    pub archive_max_depth: Option<u32>,
    /// The baseline, relative to the config file's directory (default:
    /// [`BASELINE_FILE`] beside the config file, when it exists).
    pub baseline: Option<PathBuf>,
}

/// Allowlists.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowSettings {
    /// Globs of paths never scanned.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Exact secret values to ignore.
    #[serde(default)]
    pub values: Vec<String>,
    /// Regexes; a secret matching one is ignored.
    #[serde(default)]
    pub value_patterns: Vec<String>,
    /// Rule ids to disable.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// A parsed `.keyward.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Scan settings.
    #[serde(default)]
    pub scan: ScanSettings,
    /// Allowlists.
    #[serde(default)]
    pub allow: AllowSettings,
    /// Extra rules.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    #[serde(skip)]
    path: PathBuf,
}

impl Config {
    /// Parses config text; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ScanError> {
        let mut config: Self = toml::from_str(text).map_err(|e| ScanError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.path = path.to_path_buf();
        Ok(config)
    }

    /// Loads `path`.
    pub fn load(path: &Path) -> Result<Self, ScanError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScanError::Io {
            path: path.to_path_buf(),
            error: source,
        })?;
        Self::parse(&text, path)
    }

    /// Loads `.keyward.toml` from `dir` if there is one.
    pub fn discover(dir: &Path) -> Result<Option<Self>, ScanError> {
        let path = dir.join(CONFIG_FILE);
        if path.is_file() {
            Self::load(&path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The baseline `[scan] baseline` names, resolved against the config
    /// file's directory (`None` when it names none).
    pub fn baseline_path(&self) -> Option<PathBuf> {
        let named = self.scan.baseline.as_ref()?;
        let dir = self.path.parent().unwrap_or(Path::new(""));
        Some(dir.join(named))
    }

    /// Applies the config to a rule set: adds extra rules, removes disabled ones.
    pub fn apply_rules(&self, rules: &mut RuleSet) -> Result<(), ScanError> {
        for spec in &self.rules {
            rules.add(Rule::compile(spec.clone(), "custom")?)?;
        }
        rules.disable(&self.allow.rules);
        Ok(())
    }

    /// The value allowlist.
    pub fn value_allowlist(&self) -> Result<ValueAllowlist, ScanError> {
        let patterns = self
            .allow
            .value_patterns
            .iter()
            .map(|p| {
                regex_automata::meta::Regex::new(p).map_err(|e| ScanError::Config {
                    path: self.path.clone(),
                    message: format!("bad value pattern {p:?}: {e}"),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ValueAllowlist {
            values: self
                .allow
                .values
                .iter()
                .map(|v| v.as_bytes().to_vec())
                .collect(),
            patterns,
        })
    }

    /// The path allowlist as a glob set (`None` when empty).
    pub fn skip_paths(&self) -> Result<Option<globset::GlobSet>, ScanError> {
        if self.allow.paths.is_empty() {
            return Ok(None);
        }
        let mut builder = globset::GlobSetBuilder::new();
        for p in &self.allow.paths {
            let glob = globset::GlobBuilder::new(p)
                .literal_separator(false)
                .build()
                .map_err(|e| ScanError::Config {
                    path: self.path.clone(),
                    message: format!("bad path glob {p:?}: {e}"),
                })?;
            builder.add(glob);
        }
        builder.build().map(Some).map_err(|e| ScanError::Config {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}
