//! Archives and compressed streams: zip family (zip, jar, apk, aar, ipa, whl,
//! docx...), tar, gzip — recognised by content, not by name, and nested.
//!
//! Decompression-bomb limits: a nesting depth, a total number of expanded
//! bytes per top-level input, and an expansion ratio per compressed stream
//! (checked once a stream has produced more than [`RATIO_GRACE`] bytes, so
//! small highly-compressible files are fine). A stream that exceeds a limit is
//! refused with an [`crate::DiagnosticKind::ArchiveBomb`] diagnostic and the
//! scan goes on with the next member or input.
//!
//! Memory stays bounded: top-level zip files are read through their central
//! directory with seeks; nested zips are read as a stream of local headers, so
//! no member is ever buffered whole.

use std::cell::Cell;
use std::fmt;
use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::rc::Rc;

use crate::own_output;
use crate::scanner::{Origin, Sink, Worker};
use crate::{Diagnostic, DiagnosticKind};

/// Bytes a compressed stream may produce before its ratio is checked.
pub const RATIO_GRACE: u64 = 1 << 20;

/// Limits against decompression bombs.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    /// How many archive layers are opened (a zip in a tar.gz is 3 layers).
    pub max_depth: u32,
    /// Total bytes all decompressors of one top-level input may produce.
    pub max_expanded_bytes: u64,
    /// Largest accepted ratio of expanded to compressed bytes per stream.
    pub max_ratio: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_depth: 5,
            max_expanded_bytes: 2 << 30,
            max_ratio: 200,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Zip,
    Gzip,
    Tar,
}

/// Bytes that [`sniff`] needs to recognise every kind.
const SNIFF_LEN: usize = 512;

fn sniff(head: &[u8]) -> Option<Kind> {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Some(Kind::Zip)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Some(Kind::Gzip)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Some(Kind::Tar)
    } else {
        None
    }
}

/// A problem inside an archive, carried through `io::Error` so that it
/// survives the decompressors' `Read` layers.
#[derive(Debug)]
struct ArchiveError {
    bomb: bool,
    /// The total-bytes budget ran out: nothing more of this input is scanned.
    total: bool,
    /// Depth of the content the problem is in.
    depth: u32,
    message: String,
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ArchiveError {}

fn archive_error(e: &io::Error) -> Option<&ArchiveError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<ArchiveError>())
}

fn corrupt(depth: u32, message: impl fmt::Display) -> io::Error {
    io::Error::other(ArchiveError {
        bomb: false,
        total: false,
        depth,
        message: message.to_string(),
    })
}

/// Expanded-bytes budget of one top-level input.
struct Budget {
    remaining: Cell<u64>,
}

/// Counts the compressed bytes a decoder pulls from its source.
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

enum Compressed {
    Fixed(u64),
    Counted(Rc<Cell<u64>>),
}

/// Enforces the budget and the ratio on a decompressed stream.
struct Guarded<'b, R> {
    inner: R,
    produced: u64,
    compressed: Compressed,
    budget: &'b Budget,
    max_ratio: u64,
    depth: u32,
    path: String,
}

impl<R: Read> Read for Guarded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.produced += n as u64;
        let remaining = self.budget.remaining.get();
        if n as u64 > remaining {
            return Err(io::Error::other(ArchiveError {
                bomb: true,
                total: true,
                depth: self.depth,
                message: format!(
                    "{}: expanded data exceeds the limit for one input; rest of the input skipped",
                    self.path
                ),
            }));
        }
        self.budget.remaining.set(remaining - n as u64);
        let compressed = match &self.compressed {
            Compressed::Fixed(c) => *c,
            Compressed::Counted(c) => c.get(),
        };
        if self.produced > RATIO_GRACE && self.produced > self.max_ratio * compressed.max(1) {
            return Err(io::Error::other(ArchiveError {
                bomb: true,
                total: false,
                depth: self.depth,
                message: format!(
                    "{}: expands more than {}:1 (decompression bomb?), not scanned further",
                    self.path, self.max_ratio
                ),
            }));
        }
        Ok(n)
    }
}

fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reports a problem found while scanning `path`.
fn report(worker: &Worker<'_>, path: &str, e: &io::Error, sink: &dyn Sink) {
    let (kind, message) = match archive_error(e) {
        Some(a) if a.bomb => (DiagnosticKind::ArchiveBomb, a.message.clone()),
        Some(a) => (DiagnosticKind::CorruptArchive, a.message.clone()),
        None => (DiagnosticKind::Unreadable, e.to_string()),
    };
    worker.scanner.report(
        sink,
        Diagnostic {
            kind,
            path: path.to_string(),
            message,
        },
    );
}

fn new_budget(worker: &Worker<'_>) -> Budget {
    Budget {
        remaining: Cell::new(worker.scanner.options.archives.max_expanded_bytes),
    }
}

/// Scans a top-level reader that cannot seek (stdin, a large git blob).
pub(crate) fn scan_top(
    worker: &mut Worker<'_>,
    origin: &Origin<'_>,
    reader: &mut dyn Read,
    sink: &dyn Sink,
) {
    let budget = new_budget(worker);
    if let Err(e) = scan_entry(worker, origin, reader, 0, &budget, sink) {
        report(worker, origin.path, &e, sink);
    }
}

/// Scans a top-level file; zip files are read through their central directory.
pub(crate) fn scan_file(worker: &mut Worker<'_>, origin: &Origin<'_>, file: File, sink: &dyn Sink) {
    scan_seekable(worker, origin, file, sink);
}

/// Scans content held in memory (a git blob).
pub(crate) fn scan_bytes(
    worker: &mut Worker<'_>,
    origin: &Origin<'_>,
    bytes: &[u8],
    sink: &dyn Sink,
) {
    if sniff(&bytes[..bytes.len().min(SNIFF_LEN)]).is_some() {
        return scan_seekable(worker, origin, Cursor::new(bytes), sink);
    }
    if let Err(e) = worker.scan_whole(origin, bytes, sink) {
        report(worker, origin.path, &e, sink);
    }
}

/// Bytes read from the start of a file or blob before deciding what it is.
/// Most source files are shorter: they are read with one call (and one more
/// that finds their end), with no seek and no second read of their start.
const HEAD_LEN: usize = 64 * 1024;

fn scan_seekable<R: Read + Seek>(
    worker: &mut Worker<'_>,
    origin: &Origin<'_>,
    mut source: R,
    sink: &dyn Sink,
) {
    let budget = new_budget(worker);
    let mut head = std::mem::take(&mut worker.head);
    head.resize(HEAD_LEN, 0);
    let result = (|| {
        let n = read_full(&mut source, &mut head)?;
        if sniff(&head[..n.min(4)]) == Some(Kind::Zip)
            && worker.scanner.options.archives.max_depth > 0
        {
            source.seek(SeekFrom::Start(0))?;
            scan_zip_seekable(worker, origin, source, &budget, sink)
        } else if n < head.len() && sniff(&head[..n.min(SNIFF_LEN)]).is_none() {
            // The whole input is in `head` and is not an archive: scanned
            // there, without copying it into the block buffer.
            worker.scan_whole(origin, &head[..n], sink)
        } else if n < head.len() {
            scan_entry(worker, origin, &mut &head[..n], 0, &budget, sink)
        } else if own_output::may_be_own_output(&head[..n]) {
            // Perhaps a large baseline or SARIF log keyward wrote: read whole
            // (up to a limit) to find out, then scan from memory.
            let mut whole = head[..n].to_vec();
            (&mut source)
                .take((own_output::MAX_LEN - n) as u64 + 1)
                .read_to_end(&mut whole)?;
            if whole.len() <= own_output::MAX_LEN {
                worker.scan_whole(origin, &whole, sink)
            } else {
                let mut rest = (&whole[..]).chain(source);
                scan_entry(worker, origin, &mut rest, 0, &budget, sink)
            }
        } else {
            let mut rest = (&head[..n]).chain(source);
            scan_entry(worker, origin, &mut rest, 0, &budget, sink)
        }
    })();
    worker.head = head;
    if let Err(e) = result {
        report(worker, origin.path, &e, sink);
    }
}

/// Scans `reader` at nesting `depth`: expands it if it is an archive,
/// otherwise scans its content.
fn scan_entry(
    worker: &mut Worker<'_>,
    origin: &Origin<'_>,
    reader: &mut dyn Read,
    depth: u32,
    budget: &Budget,
    sink: &dyn Sink,
) -> io::Result<()> {
    let mut head = [0u8; SNIFF_LEN];
    let n = read_full(reader, &mut head)?;
    let kind = sniff(&head[..n]);
    let mut chained = (&head[..n]).chain(reader);
    let Some(kind) = kind else {
        return worker.scan_stream(origin, &mut chained, sink);
    };
    let limits = worker.scanner.options.archives;
    if depth >= limits.max_depth {
        worker.scanner.report(
            sink,
            Diagnostic {
                kind: DiagnosticKind::ArchiveTooDeep,
                path: origin.path.to_string(),
                message: format!("more than {} archive layers", limits.max_depth),
            },
        );
        return Ok(());
    }
    match kind {
        Kind::Gzip => {
            let count = Rc::new(Cell::new(0));
            let decoder = flate2::read::MultiGzDecoder::new(Counting {
                inner: chained,
                count: Rc::clone(&count),
            });
            let mut guarded = Guarded {
                inner: decoder,
                produced: 0,
                compressed: Compressed::Counted(count),
                budget,
                max_ratio: limits.max_ratio,
                depth: depth + 1,
                path: origin.path.to_string(),
            };
            // A gzip layer is transparent: `logs.gz` reports as `logs.gz`.
            scan_entry(worker, origin, &mut guarded, depth + 1, budget, sink).map_err(|e| {
                if archive_error(&e).is_some() {
                    e
                } else {
                    corrupt(depth, format!("{}: {e}", origin.path))
                }
            })
        }
        Kind::Tar => scan_tar(worker, origin, &mut chained, depth, budget, sink),
        Kind::Zip => scan_zip_stream(worker, origin, &mut chained, depth, budget, sink),
    }
}

fn member_path(outer: &str, name: &str) -> String {
    format!("{outer}!/{}", name.trim_start_matches("./"))
}

fn member_too_large(worker: &Worker<'_>, path: &str, size: u64, sink: &dyn Sink) -> bool {
    match worker.scanner.options.max_file_size {
        Some(max) if size > max => {
            worker.scanner.report(
                sink,
                Diagnostic {
                    kind: DiagnosticKind::TooLarge,
                    path: path.to_string(),
                    message: format!("{size} bytes"),
                },
            );
            true
        }
        _ => false,
    }
}

fn scan_tar(
    worker: &mut Worker<'_>,
    origin: &Origin<'_>,
    reader: &mut dyn Read,
    depth: u32,
    budget: &Budget,
    sink: &dyn Sink,
) -> io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| corrupt(depth, format!("{}: {e}", origin.path)))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| passthrough_or_corrupt(e, depth, origin.path))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "?".into());
        let path = member_path(origin.path, &name);
        if worker.scanner.skip_path(&path) || member_too_large(worker, &path, entry.size(), sink) {
            continue;
        }
        let member = Origin {
            path: &path,
            commit: origin.commit,
        };
        if let Err(e) = scan_entry(worker, &member, &mut entry, depth + 1, budget, sink) {
            match archive_error(&e) {
                // A problem inside the member (a nested bomb or corrupt
                // archive): report it and go on with the next member.
                Some(a) if a.depth > depth + 1 && !a.total => report(worker, &path, &e, sink),
                _ => return Err(passthrough_or_corrupt(e, depth, origin.path)),
            }
        }
    }
    Ok(())
}

fn passthrough_or_corrupt(e: io::Error, depth: u32, path: &str) -> io::Error {
    if archive_error(&e).is_some() {
        e
    } else {
        corrupt(depth, format!("{path}: {e}"))
    }
}

fn scan_zip_seekable<R: Read + Seek>(
    worker: &mut Worker<'_>,
    origin: &Origin<'_>,
    source: R,
    budget: &Budget,
    sink: &dyn Sink,
) -> io::Result<()> {
    let mut archive =
        zip::ZipArchive::new(source).map_err(|e| corrupt(0, format!("{}: {e}", origin.path)))?;
    for i in 0..archive.len() {
        let name = archive.name_for_index(i).unwrap_or("?").to_string();
        let mut file = match archive.by_index(i) {
            Ok(f) => f,
            Err(zip::result::ZipError::UnsupportedArchive(what)) => {
                report(
                    worker,
                    &member_path(origin.path, &name),
                    &corrupt(1, what),
                    sink,
                );
                continue;
            }
            Err(e) => return Err(corrupt(0, format!("{}: {e}", origin.path))),
        };
        if file.is_dir() {
            continue;
        }
        let (path, compressed) = (
            member_path(origin.path, file.name()),
            file.compressed_size(),
        );
        scan_zip_member(
            worker, origin, &path, &mut file, compressed, 0, budget, sink,
        )?;
    }
    Ok(())
}

fn scan_zip_stream(
    worker: &mut Worker<'_>,
    origin: &Origin<'_>,
    mut reader: &mut dyn Read,
    depth: u32,
    budget: &Budget,
    sink: &dyn Sink,
) -> io::Result<()> {
    loop {
        let mut file = match zip::read::read_zipfile_from_stream(&mut reader) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => return Err(passthrough_or_corrupt(zip_io(e), depth, origin.path)),
        };
        if file.is_dir() {
            continue;
        }
        let (path, compressed) = (
            member_path(origin.path, file.name()),
            file.compressed_size(),
        );
        scan_zip_member(
            worker, origin, &path, &mut file, compressed, depth, budget, sink,
        )?;
    }
}

fn zip_io(e: zip::result::ZipError) -> io::Error {
    match e {
        zip::result::ZipError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

/// Scans one zip member; problems confined to it are reported and skipped.
#[allow(clippy::too_many_arguments)] // reason: internal plumbing of one recursion
fn scan_zip_member(
    worker: &mut Worker<'_>,
    origin: &Origin<'_>,
    path: &str,
    file: &mut dyn Read,
    compressed: u64,
    depth: u32,
    budget: &Budget,
    sink: &dyn Sink,
) -> io::Result<()> {
    if worker.scanner.skip_path(path) {
        return Ok(());
    }
    let limits = worker.scanner.options.archives;
    let mut guarded = Guarded {
        inner: file,
        produced: 0,
        compressed: Compressed::Fixed(compressed),
        budget,
        max_ratio: limits.max_ratio,
        depth: depth + 1,
        path: path.to_string(),
    };
    let member = Origin {
        path,
        commit: origin.commit,
    };
    match scan_entry(worker, &member, &mut guarded, depth + 1, budget, sink) {
        Ok(()) => Ok(()),
        Err(e) if archive_error(&e).is_some_and(|a| a.total) => Err(e),
        Err(e) => {
            report(worker, path, &e, sink);
            Ok(())
        }
    }
}
