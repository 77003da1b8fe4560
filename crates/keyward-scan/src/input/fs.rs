//! Files and directories: a parallel walk with the `ignore` crate.
//!
//! Ignore files are not honoured by default — an ignored `.env` is exactly
//! where secrets sit — but `.git` directories are skipped (their objects are
//! compressed; history is scanned with [`crate::Scanner::scan_git_history`]).

use std::fs::File;
use std::path::{Path, PathBuf};

use ignore::{WalkBuilder, WalkState};

use crate::input::archive;
use crate::scanner::{Origin, Sink, Worker};
use crate::{Diagnostic, DiagnosticKind, ScanError, Scanner};

impl Scanner {
    /// Scans files and directories in parallel. A path that does not exist is
    /// an error; anything unreadable found during the walk is a diagnostic.
    pub fn scan_paths(&self, paths: &[PathBuf], sink: &dyn Sink) -> Result<(), ScanError> {
        let Some((first, rest)) = paths.split_first() else {
            return Ok(());
        };
        for path in paths {
            std::fs::symlink_metadata(path).map_err(|source| ScanError::Io {
                path: path.clone(),
                error: source,
            })?;
        }
        let respect = self.options.respect_gitignore;
        let mut builder = WalkBuilder::new(first);
        for p in rest {
            builder.add(p);
        }
        builder
            .standard_filters(false)
            .git_ignore(respect)
            .git_exclude(respect)
            .git_global(respect)
            .ignore(respect)
            .parents(respect)
            .threads(self.options.threads)
            .filter_entry(|e| e.file_name() != ".git");
        builder.build_parallel().run(|| {
            let mut worker = Worker::new(self);
            Box::new(move |entry| {
                match entry {
                    Ok(entry) if entry.file_type().is_some_and(|t| t.is_file()) => {
                        scan_one_file(&mut worker, entry.path(), sink);
                    }
                    Ok(_) => {}
                    Err(err) => self.report(
                        sink,
                        Diagnostic {
                            kind: DiagnosticKind::Unreadable,
                            path: walk_error_path(&err),
                            message: err.to_string(),
                        },
                    ),
                }
                WalkState::Continue
            })
        });
        Ok(())
    }
}

fn walk_error_path(err: &ignore::Error) -> String {
    match err {
        ignore::Error::WithPath { path, .. } => path.display().to_string(),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            walk_error_path(err)
        }
        _ => String::new(),
    }
}

fn scan_one_file(worker: &mut Worker<'_>, path: &Path, sink: &dyn Sink) {
    let scanner = worker.scanner;
    let display = path.to_string_lossy();
    if scanner.skip_path(&display) {
        return;
    }
    let unreadable = |message: String| Diagnostic {
        kind: DiagnosticKind::Unreadable,
        path: display.to_string(),
        message,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return scanner.report(sink, unreadable(e.to_string())),
    };
    if let Some(max) = scanner.options.max_file_size {
        match file.metadata() {
            Ok(m) if m.len() > max => {
                return scanner.report(
                    sink,
                    Diagnostic {
                        kind: DiagnosticKind::TooLarge,
                        path: display.to_string(),
                        message: format!("{} bytes", m.len()),
                    },
                );
            }
            Ok(_) => {}
            Err(e) => return scanner.report(sink, unreadable(e.to_string())),
        }
    }
    let origin = Origin {
        path: &display,
        commit: None,
    };
    archive::scan_file(worker, &origin, file, sink);
}
