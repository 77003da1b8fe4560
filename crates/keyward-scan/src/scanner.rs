//! The engine: feeds bytes through the [`Matcher`] in bounded blocks and turns
//! matches into [`Finding`]s.
//!
//! Memory is bounded by design: each worker thread owns one buffer of
//! `block_size + OVERLAP` bytes and reads every input through it, whatever the
//! input's size. Consecutive blocks overlap by [`OVERLAP`] bytes (more than the
//! longest secret a rule may match), and a match is reported by exactly one
//! block: a block drops matches that touch its end (they may be truncated; the
//! next block sees them whole) and matches that end before the overlap it
//! inherited (the previous block reported them). Text that is already whole
//! in memory and fits one block (a file shorter than the 64 KiB first read
//! that tells archives from content, a git blob) is scanned where it is, as a
//! single block, without the copy into the buffer.

use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use memchr::{memchr, memchr_iter, memmem, memrchr};

use crate::input::archive::ArchiveLimits;
use crate::matcher::{Matcher, RawMatch, Scratch};
use crate::own_output::Exempt;
use crate::{CommitInfo, Diagnostic, Finding, Secret};

/// Bytes shared by consecutive blocks.
pub const OVERLAP: usize = 2 * crate::rules::MAX_SECRET_LEN;

/// Content with a NUL byte among its first this many bytes is binary.
const BINARY_SNIFF_LEN: usize = 8000;

/// The marker that suppresses findings on its line.
pub const ALLOW_MARKER: &[u8] = b"keyward:allow";

/// Receives what a scan finds. Implementations must be thread-safe: workers
/// call them concurrently.
pub trait Sink: Sync {
    /// A finding that survived every suppression.
    fn finding(&self, finding: Finding);
    /// A problem that skipped one input; the scan goes on.
    fn diagnostic(&self, diagnostic: Diagnostic);
}

/// A [`Sink`] that keeps everything in memory.
#[derive(Debug, Default)]
pub struct CollectSink {
    /// Findings so far.
    pub findings: Mutex<Vec<Finding>>,
    /// Diagnostics so far.
    pub diagnostics: Mutex<Vec<Diagnostic>>,
}

impl Sink for CollectSink {
    fn finding(&self, finding: Finding) {
        self.findings.lock().expect("poisoned").push(finding);
    }
    fn diagnostic(&self, diagnostic: Diagnostic) {
        self.diagnostics.lock().expect("poisoned").push(diagnostic);
    }
}

/// Options of a scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Worker threads (0 = one per CPU).
    pub threads: usize,
    /// Skip files ignored by `.gitignore` and friends (off by default: ignored
    /// `.env` files are exactly where secrets sit).
    pub respect_gitignore: bool,
    /// Skip files larger than this many bytes.
    pub max_file_size: Option<u64>,
    /// Limits for archives.
    pub archives: ArchiveLimits,
    /// Bytes read per block (the buffer is this plus [`OVERLAP`]).
    pub block_size: usize,
    /// Paths (globs) never scanned.
    pub skip_paths: Option<globset::GlobSet>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            threads: 0,
            respect_gitignore: false,
            max_file_size: None,
            archives: ArchiveLimits::default(),
            block_size: 1 << 20,
            skip_paths: None,
        }
    }
}

/// Counters updated while scanning (for progress display and summaries).
#[derive(Debug, Default)]
pub struct ScanStats {
    /// Inputs (files, blobs, archive members) scanned.
    pub inputs: AtomicU64,
    /// Bytes scanned (after decompression).
    pub bytes: AtomicU64,
    /// Findings suppressed by `keyward:allow` or the baseline.
    pub suppressed: AtomicU64,
    /// Diagnostics reported.
    pub diagnostics: AtomicU64,
}

/// A configured scanner. Cheap to share across threads by reference.
#[derive(Debug)]
pub struct Scanner {
    pub(crate) matcher: Matcher,
    pub(crate) options: ScanOptions,
    baseline: HashSet<String>,
    stats: Arc<ScanStats>,
}

impl Scanner {
    /// A scanner running `matcher` with `options`.
    pub fn new(matcher: Matcher, mut options: ScanOptions) -> Self {
        if options.threads == 0 {
            options.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        options.block_size = options.block_size.max(OVERLAP);
        Self {
            matcher,
            options,
            baseline: HashSet::new(),
            stats: Arc::default(),
        }
    }

    /// Suppresses every secret whose SHA-256 is in `baseline`.
    pub fn with_baseline(mut self, baseline: &crate::baseline::Baseline) -> Self {
        self.baseline = baseline.hashes().map(str::to_string).collect();
        self
    }

    /// Live counters of this scanner.
    pub fn stats(&self) -> Arc<ScanStats> {
        Arc::clone(&self.stats)
    }

    /// The matcher.
    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// Scans one reader (e.g. standard input) named `name`. Archives are
    /// recognised by their content and expanded.
    pub fn scan_reader(&self, name: &str, reader: &mut dyn Read, sink: &dyn Sink) {
        let mut worker = Worker::new(self);
        let origin = Origin {
            path: name,
            commit: None,
        };
        crate::input::archive::scan_top(&mut worker, &origin, reader, sink);
    }

    pub(crate) fn skip_path(&self, path: &str) -> bool {
        self.options
            .skip_paths
            .as_ref()
            .is_some_and(|g| g.is_match(path.trim_start_matches("./")))
    }

    pub(crate) fn report(&self, sink: &dyn Sink, diagnostic: Diagnostic) {
        self.stats.diagnostics.fetch_add(1, Ordering::Relaxed);
        sink.diagnostic(diagnostic);
    }
}

/// Where the bytes being scanned come from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    pub path: &'a str,
    pub commit: Option<&'a Arc<CommitInfo>>,
}

/// Line and column (in code points) at some offset.
#[derive(Debug, Clone, Copy)]
struct TextPos {
    line: u64,
    col: u64,
}

impl TextPos {
    fn advance(&mut self, bytes: &[u8]) {
        match memrchr(b'\n', bytes) {
            Some(last) => {
                self.line += memchr_iter(b'\n', bytes).count() as u64;
                self.col = count_chars(&bytes[last + 1..]);
            }
            None => self.col += count_chars(bytes),
        }
    }
}

fn count_chars(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b & 0xC0 != 0x80).count() as u64
}

/// One thread's state: matcher scratch space and the block buffer.
pub(crate) struct Worker<'s> {
    pub scanner: &'s Scanner,
    scratch: Scratch,
    buf: Vec<u8>,
    /// The start of the current file, read to tell archives from content
    /// (see `input::archive`).
    pub head: Vec<u8>,
    /// Hash values keyward itself wrote into the current input (a baseline,
    /// a report), which are not secrets; see `own_output`.
    pub exempt: Option<Exempt>,
}

impl<'s> Worker<'s> {
    pub fn new(scanner: &'s Scanner) -> Self {
        Self {
            scanner,
            scratch: scanner.matcher.scratch(),
            buf: Vec::new(),
            head: Vec::new(),
            exempt: None,
        }
    }

    /// Scans content that is whole in memory (see [`Self::scan_slice`]);
    /// when keyward wrote it, the hashes in it are not reported.
    pub fn scan_whole(
        &mut self,
        origin: &Origin<'_>,
        data: &[u8],
        sink: &dyn Sink,
    ) -> io::Result<()> {
        self.exempt = crate::own_output::exempt_values(data);
        let result = self.scan_slice(origin, data, sink);
        self.exempt = None;
        result
    }

    /// Scans plain (not archive) content held in memory: as one block, in
    /// place, when it fits one and is text; otherwise as a stream.
    pub fn scan_slice(
        &mut self,
        origin: &Origin<'_>,
        data: &[u8],
        sink: &dyn Sink,
    ) -> io::Result<()> {
        let scanner = self.scanner;
        let binary = memchr(0, &data[..data.len().min(BINARY_SNIFF_LEN)]).is_some();
        if binary || data.len() >= scanner.options.block_size + OVERLAP {
            return self.scan_stream(origin, &mut &data[..], sink);
        }
        scanner.stats.inputs.fetch_add(1, Ordering::Relaxed);
        scanner
            .stats
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let matches = scanner.matcher.find(&mut self.scratch, data);
        let block = Block {
            data,
            carry: 0,
            eof: true,
            base: 0,
            pos: TextPos { line: 1, col: 0 },
            is_binary: false,
        };
        report_matches(scanner, origin, &block, matches, self.exempt.as_ref(), sink);
        Ok(())
    }

    /// Scans a stream of plain (not archive) content in blocks.
    pub fn scan_stream(
        &mut self,
        origin: &Origin<'_>,
        reader: &mut dyn Read,
        sink: &dyn Sink,
    ) -> io::Result<()> {
        let scanner = self.scanner;
        let cap = scanner.options.block_size + OVERLAP;
        if self.buf.len() != cap {
            self.buf = vec![0; cap];
        }
        scanner.stats.inputs.fetch_add(1, Ordering::Relaxed);
        let mut carry = 0usize;
        let mut base = 0u64;
        let mut pos = TextPos { line: 1, col: 0 };
        let mut binary: Option<bool> = None;
        loop {
            let mut len = carry;
            while len < cap {
                match reader.read(&mut self.buf[len..cap]) {
                    Ok(0) => break,
                    Ok(n) => len += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let eof = len < cap;
            scanner
                .stats
                .bytes
                .fetch_add((len - carry) as u64, Ordering::Relaxed);
            let is_binary = *binary
                .get_or_insert_with(|| memchr(0, &self.buf[..len.min(BINARY_SNIFF_LEN)]).is_some());
            if is_binary {
                printable_only(&mut self.buf[carry..len]);
            }
            let data = &self.buf[..len];
            let matches = scanner.matcher.find(&mut self.scratch, data);
            let block = Block {
                data,
                carry,
                eof,
                base,
                pos,
                is_binary,
            };
            report_matches(scanner, origin, &block, matches, self.exempt.as_ref(), sink);
            if eof {
                return Ok(());
            }
            let keep = OVERLAP.min(len);
            pos.advance(&self.buf[..len - keep]);
            base += (len - keep) as u64;
            self.buf.copy_within(len - keep..len, 0);
            carry = keep;
        }
    }
}

/// One block of an input, as handed to the matcher.
struct Block<'d> {
    data: &'d [u8],
    /// Bytes at the start that the previous block also held.
    carry: usize,
    /// Whether the input ends with this block.
    eof: bool,
    /// Offset of `data` in the input.
    base: u64,
    /// Line and column at the start of `data`.
    pos: TextPos,
    is_binary: bool,
}

/// Turns the matches of one block into findings, dropping those another
/// block reports (see the module docs) and the suppressed ones.
fn report_matches(
    scanner: &Scanner,
    origin: &Origin<'_>,
    block: &Block<'_>,
    matches: &[RawMatch],
    exempt: Option<&Exempt>,
    sink: &dyn Sink,
) {
    let Block {
        data,
        carry,
        eof,
        base,
        pos,
        is_binary,
    } = *block;
    let len = data.len();
    let mut cursor = 0usize;
    let mut at = pos;
    for m in matches {
        if m.end < carry || (!eof && m.end == len) {
            continue;
        }
        at.advance(&data[cursor..m.start]);
        cursor = m.start;
        let secret = &data[m.start..m.end];
        if exempt.is_some_and(|e| e.contains(secret)) {
            continue;
        }
        if on_allowed_line(data, m.start, m.end) {
            scanner.stats.suppressed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (line, column, end_line, end_column) = if is_binary {
            let start = base + m.start as u64 + 1;
            (0, start, 0, start + secret.len() as u64)
        } else {
            let mut end = at;
            end.advance(secret);
            (at.line, at.col + 1, end.line, end.col + 1)
        };
        let secret = Secret::new(secret.to_vec());
        let secret_sha256 = secret.sha256_hex();
        if scanner.baseline.contains(&secret_sha256) {
            scanner.stats.suppressed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let rule = &scanner.matcher.rules().rules()[m.rule];
        sink.finding(Finding {
            rule_id: Arc::clone(&rule.id),
            rule_name: Arc::clone(&rule.name),
            path: origin.path.to_string(),
            line,
            column,
            end_line,
            end_column,
            secret,
            secret_sha256,
            commit: origin.commit.cloned(),
            validated: m.validated,
        });
    }
}

/// Whether the lines spanned by `start..end` carry a `keyward:allow` marker.
fn on_allowed_line(data: &[u8], start: usize, end: usize) -> bool {
    let line_start = memrchr(b'\n', &data[..start]).map_or(0, |i| i + 1);
    let line_end = memchr(b'\n', &data[end..]).map_or(data.len(), |i| end + i);
    memmem::find(&data[line_start..line_end], ALLOW_MARKER).is_some()
}

/// Keeps printable ASCII runs of binary content and turns everything else into
/// line breaks, so secrets embedded in binaries are found and nothing spans
/// two unrelated strings. Offsets are preserved.
fn printable_only(bytes: &mut [u8]) {
    for b in bytes {
        if !(0x20..0x7f).contains(b) && *b != b'\t' {
            *b = b'\n';
        }
    }
}
