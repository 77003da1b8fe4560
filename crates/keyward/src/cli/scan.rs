//! `keyward scan`, `keyward rules`, `keyward hook`: a thin layer over `keyward-scan`.
use clap::Args;

/// Arguments of `keyward scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Paths to scan; `-` reads standard input.
    pub paths: Vec<std::path::PathBuf>,
}

/// Runs `keyward scan` and returns the process exit code.
pub fn run(_args: ScanArgs) -> anyhow::Result<i32> {
    anyhow::bail!("keyward scan is not built yet")
}
