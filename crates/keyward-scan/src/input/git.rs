//! Git history (`--git`) and staged changes (`--staged`).
//!
//! This drives the `git` command rather than linking a git library (`gix`):
//! the only git work here is listing which blobs each commit introduced
//! (`git log --raw`, which diffs trees only, never contents) and streaming blob
//! contents (`git cat-file --batch`, one long-lived process per worker). Both
//! are git's own C code paths, as fast as it gets; the `git` CLI is present
//! wherever there is a repository to scan; and it keeps the build small (gix
//! with pack decoding is hundreds of crates' worth of compile time) and honours
//! every repository format git itself supports (SHA-256 object ids,
//! alternates, partial clones).
//!
//! Each unique blob is scanned once. It is attributed to the first commit that
//! introduced it in topological order (parents before children), with that
//! commit's author and date; a secret still present in later versions of the
//! same file is reported once, for the commit that introduced it.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::input::archive;
use crate::scanner::{Origin, Sink, Worker};
use crate::{CommitInfo, Diagnostic, DiagnosticKind, Finding, ScanError, Scanner};

/// Blobs up to this size are read into memory whole; larger ones stream.
const INLINE_BLOB_MAX: u64 = 8 << 20;

/// A blob to scan: its id, the path it was introduced at, and the commit.
#[derive(Debug, Clone)]
struct BlobJob {
    id: String,
    path: String,
    /// Index into the commit list (topological order); `None` when staged.
    commit: Option<usize>,
}

impl Scanner {
    /// Scans every blob reachable from every ref of the repository at `repo`,
    /// each once. With `since`, only commits not reachable from that revision.
    pub fn scan_git_history(
        &self,
        repo: &Path,
        since: Option<&str>,
        sink: &dyn Sink,
    ) -> Result<(), ScanError> {
        check_repo(repo)?;
        if let Some(rev) = since {
            let spec = format!("{rev}^{{commit}}");
            run_git(repo, &["rev-parse", "--verify", "--quiet", &spec])
                .map_err(|_| ScanError::Git(format!("unknown revision {rev}")))?;
        }
        let (commits, jobs) = list_history(repo, since)?;
        // Only the earliest occurrence of (rule, secret, path) is reported.
        let first: Mutex<FirstSeen> = Mutex::default();
        let order: HashMap<&str, usize> = commits
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.as_str(), i))
            .collect();
        let collect = DedupSink {
            first: &first,
            order: &order,
            outer: sink,
        };
        self.scan_blobs(repo, &jobs, &commits, &collect)?;
        let mut kept: Vec<(usize, Finding)> = first
            .into_inner()
            .expect("poisoned")
            .into_values()
            .collect();
        kept.sort_by(|a, b| (a.0, &a.1.path, a.1.line).cmp(&(b.0, &b.1.path, b.1.line)));
        for (_, f) in kept {
            sink.finding(f);
        }
        Ok(())
    }

    /// Scans the blobs staged in the index that differ from `HEAD` (what the
    /// next commit would add), whole — a pre-commit check.
    pub fn scan_git_staged(&self, repo: &Path, sink: &dyn Sink) -> Result<(), ScanError> {
        check_repo(repo)?;
        let out = run_git(
            repo,
            &[
                "diff",
                "--cached",
                "--raw",
                "-z",
                "--no-abbrev",
                "--no-renames",
                "--diff-filter=ACMT",
            ],
        )?;
        let mut jobs = Vec::new();
        let mut fields = out.split(|&b| b == 0).filter(|f| !f.is_empty());
        while let Some(meta) = fields.next() {
            let Some(path) = fields.next() else { break };
            if let Some(id) = new_blob_id(meta) {
                jobs.push(BlobJob {
                    id,
                    path: String::from_utf8_lossy(path).into_owned(),
                    commit: None,
                });
            }
        }
        self.scan_blobs(repo, &jobs, &[], sink)
    }

    fn scan_blobs(
        &self,
        repo: &Path,
        jobs: &[BlobJob],
        commits: &[Arc<CommitInfo>],
        sink: &dyn Sink,
    ) -> Result<(), ScanError> {
        let jobs: Vec<&BlobJob> = jobs.iter().filter(|j| !self.skip_path(&j.path)).collect();
        let shards = self.options.threads.clamp(1, jobs.len().max(1));
        // Versions of one path go to one shard, in order, so that git's delta
        // base cache serves them.
        let mut buckets: Vec<Vec<&BlobJob>> = vec![Vec::new(); shards];
        for job in jobs {
            let h = job
                .path
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            buckets[(h % shards as u64) as usize].push(job);
        }
        let results: Vec<Result<(), ScanError>> = std::thread::scope(|s| {
            let handles: Vec<_> = buckets
                .iter()
                .map(|bucket| s.spawn(|| self.scan_shard(repo, bucket, commits, sink)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("scan thread panicked"))
                .collect()
        });
        results.into_iter().collect()
    }

    fn scan_shard(
        &self,
        repo: &Path,
        jobs: &[&BlobJob],
        commits: &[Arc<CommitInfo>],
        sink: &dyn Sink,
    ) -> Result<(), ScanError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut child = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["cat-file", "--batch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| ScanError::Git(format!("cannot run git: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        let writer = std::thread::spawn(move || -> io::Result<()> {
            let mut w = io::BufWriter::new(&mut stdin);
            for id in ids {
                writeln!(w, "{id}")?;
            }
            w.flush()
        });
        let mut reader = BufReader::with_capacity(256 << 10, stdout);
        let mut worker = Worker::new(self);
        let mut header = Vec::new();
        let mut blob = Vec::new();
        let git_err = |e: io::Error| ScanError::Git(format!("reading cat-file output: {e}"));
        for job in jobs {
            header.clear();
            reader.read_until(b'\n', &mut header).map_err(git_err)?;
            let text = String::from_utf8_lossy(&header);
            let mut parts = text.split_whitespace();
            let (_, kind, size) = (parts.next(), parts.next(), parts.next());
            let Some(size) = size.and_then(|s| s.parse::<u64>().ok()) else {
                // `<id> missing`: a partial clone or a broken repository.
                self.report(
                    sink,
                    Diagnostic {
                        kind: DiagnosticKind::Unreadable,
                        path: job.path.clone(),
                        message: format!("git object {} is missing", job.id),
                    },
                );
                continue;
            };
            let commit = job.commit.map(|i| &commits[i]);
            let origin = Origin {
                path: &job.path,
                commit,
            };
            let too_large = self.options.max_file_size.is_some_and(|m| size > m);
            if kind != Some("blob") || too_large {
                if too_large {
                    self.report(
                        sink,
                        Diagnostic {
                            kind: DiagnosticKind::TooLarge,
                            path: job.path.clone(),
                            message: format!("{size} bytes"),
                        },
                    );
                }
                io::copy(&mut (&mut reader).take(size), &mut io::sink()).map_err(git_err)?;
            } else if size <= INLINE_BLOB_MAX {
                blob.clear();
                (&mut reader)
                    .take(size)
                    .read_to_end(&mut blob)
                    .map_err(git_err)?;
                archive::scan_bytes(&mut worker, &origin, &blob, sink);
            } else {
                let mut body = (&mut reader).take(size);
                archive::scan_top(&mut worker, &origin, &mut body, sink);
                io::copy(&mut body, &mut io::sink()).map_err(git_err)?;
            }
            let mut lf = [0u8; 1];
            reader.read_exact(&mut lf).map_err(git_err)?;
        }
        drop(reader);
        let _ = writer.join();
        let _ = child.wait();
        Ok(())
    }
}

/// (rule, secret hash, path) -> (commit order, finding) of the earliest sighting.
type FirstSeen = HashMap<(Arc<str>, String, String), (usize, Finding)>;

/// Forwards findings to a deduplicating map; diagnostics go straight through.
struct DedupSink<'a> {
    first: &'a Mutex<FirstSeen>,
    order: &'a HashMap<&'a str, usize>,
    outer: &'a dyn Sink,
}

impl Sink for DedupSink<'_> {
    fn finding(&self, finding: Finding) {
        let order = finding
            .commit
            .as_ref()
            .and_then(|c| self.order.get(c.id.as_str()).copied())
            .unwrap_or(usize::MAX);
        let key = (
            Arc::clone(&finding.rule_id),
            finding.secret_sha256.clone(),
            finding.path.clone(),
        );
        let mut map = self.first.lock().expect("poisoned");
        match map.entry(key) {
            Entry::Vacant(v) => {
                v.insert((order, finding));
            }
            Entry::Occupied(mut o) => {
                if order < o.get().0 {
                    o.insert((order, finding));
                }
            }
        }
    }

    fn diagnostic(&self, diagnostic: Diagnostic) {
        self.outer.diagnostic(diagnostic);
    }
}

fn check_repo(repo: &Path) -> Result<(), ScanError> {
    run_git(repo, &["rev-parse", "--git-dir"])
        .map(drop)
        .map_err(|e| ScanError::Git(format!("{} is not a git repository ({e})", repo.display())))
}

fn run_git(repo: &Path, args: &[&str]) -> Result<Vec<u8>, ScanError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ScanError::Git(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(ScanError::Git(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(out.stdout)
}

/// The new blob id of a `--raw` entry (`:100644 100644 <old> <new> M`), unless
/// it is a deletion, a submodule or a symlink.
fn new_blob_id(meta: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(meta)
        .ok()?
        .trim_start_matches(['\n', ':']);
    let mut parts = text.split(' ');
    let (_old_mode, new_mode, _old, new) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let regular = new_mode.starts_with("100");
    (regular && !new.bytes().all(|b| b == b'0')).then(|| new.to_string())
}

/// Lists commits in topological order (parents first) and the blobs each
/// introduced, keeping only the first introduction of every blob.
fn list_history(
    repo: &Path,
    since: Option<&str>,
) -> Result<(Vec<Arc<CommitInfo>>, Vec<BlobJob>), ScanError> {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(repo).args([
        "log",
        "--all",
        "--topo-order",
        "--reverse",
        "--raw",
        "--no-abbrev",
        "--no-renames",
        "--root",
        "--diff-merges=first-parent",
        "-z",
        "--format=%x01%H%x02%an%x02%ae%x02%aI",
    ]);
    if let Some(rev) = since {
        cmd.arg(format!("^{rev}"));
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| ScanError::Git(format!("cannot run git: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    let mut reader = BufReader::with_capacity(1 << 20, stdout);
    let mut commits: Vec<Arc<CommitInfo>> = Vec::new();
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut jobs = Vec::new();
    let mut field = Vec::new();
    let mut pending_meta: Option<Vec<u8>> = None;
    let read_err = |e: io::Error| ScanError::Git(format!("reading git log: {e}"));
    loop {
        field.clear();
        if reader.read_until(0, &mut field).map_err(read_err)? == 0 {
            break;
        }
        if field.last() == Some(&0) {
            field.pop();
        }
        if let Some(meta) = pending_meta.take() {
            let Some(id) = new_blob_id(&meta) else {
                continue;
            };
            if seen.insert(id.clone(), ()).is_none() {
                jobs.push(BlobJob {
                    id,
                    path: String::from_utf8_lossy(&field).into_owned(),
                    commit: commits.len().checked_sub(1),
                });
            }
            continue;
        }
        let trimmed = field.strip_prefix(b"\n").unwrap_or(&field);
        if let Some(header) = trimmed.strip_prefix(b"\x01") {
            let text = String::from_utf8_lossy(header);
            let mut parts = text.split('\x02');
            let mut next = || parts.next().unwrap_or("").to_string();
            commits.push(Arc::new(CommitInfo {
                id: next(),
                author: next(),
                email: next(),
                date: next(),
            }));
        } else if trimmed.starts_with(b":") {
            pending_meta = Some(trimmed.to_vec());
        }
    }
    let status = child.wait().map_err(|e| ScanError::Git(e.to_string()))?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        return Err(ScanError::Git(format!("git log failed: {}", err.trim())));
    }
    Ok((commits, jobs))
}
