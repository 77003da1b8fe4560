//! What a rule's matches begin with, up to and around their keyword.
//!
//! The matcher runs a rule's regex in a window around each hit of one of its
//! keywords. Without more knowledge the window must start
//! [`crate::matcher::WINDOW_BACK`] bytes before the hit, and every hit costs a
//! regex search. But most patterns begin with their keyword
//! (`\bSK[0-9a-fA-F]{32}`) or with a short alternation that contains it
//! (`(?:https?|ftp|…)://`, `(?:api_?key|secret|…)`). For those, the
//! beginnings of a match are few: each is a sequence of byte sets that every
//! match following it consumes, and each holds a keyword at a known offset.
//! A hit then needs a regex search only if the text around it fits one of
//! the beginnings, and the window starts at that beginning. On source code
//! most hits of the short keywords fail this test at once: `sk` in `task`
//! is not `SK` and 32 hex digits, `pat` in `path` is not followed by 14
//! letters or digits and a dot.
//!
//! The analysis is conservative: a pattern whose beginnings are too many to
//! list, or one of whose beginnings holds no keyword before the pattern turns
//! into an optional repetition (which is not followed), gets no [`Leads`]
//! and is searched in the full window after every hit.

use regex_syntax::hir::{Class, Hir, HirKind};

/// Beyond this many beginnings, the analysis gives up.
const MAX_BEGINNINGS: usize = 256;

/// Beginnings are followed at most this far (and never past
/// [`crate::matcher::WINDOW_BACK`]).
const MAX_BEGINNING_LEN: usize = 64;

/// A set of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ByteSet([u64; 4]);

impl ByteSet {
    fn single(b: u8) -> Self {
        let mut set = Self([0; 4]);
        set.insert(b);
        set
    }

    fn insert(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] |= 1 << (b & 63);
    }

    fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] >> (b & 63) & 1 == 1
    }

    /// The bytes in the set.
    fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=255u8).filter(|&b| self.contains(b))
    }

    /// Whether every byte in the (non-empty) set is `lower` in some ASCII
    /// case: the keyword search, which folds ASCII case, sees `lower` here.
    fn folds_to(&self, lower: u8) -> bool {
        self.bytes().next().is_some() && self.bytes().all(|b| b.to_ascii_lowercase() == lower)
    }
}

/// One beginning, as the analysis builds it.
#[derive(Debug, Clone)]
struct Beginning {
    sets: Vec<ByteSet>,
    /// Set when the pattern goes on past `sets` in a way not followed, so
    /// that later parts of the pattern must not be appended.
    cut: bool,
}

/// A beginning with the offset of its first keyword.
#[derive(Debug, Clone)]
struct Lead {
    /// Where the first keyword of the beginning starts.
    offset: usize,
    /// What every match following this beginning consumes, from its start.
    sets: Box<[ByteSet]>,
}

/// The beginnings of a rule's matches, each with its first keyword's offset.
#[derive(Debug, Clone)]
pub(crate) struct Leads {
    leads: Box<[Lead]>,
}

impl Leads {
    /// The beginnings of the matches of `hir`, or `None` when the pattern
    /// does not show them, or one of them holds none of `keywords`
    /// (lower-cased).
    pub(crate) fn of(hir: &Hir, keywords: &[String]) -> Option<Self> {
        let mut leads = Vec::new();
        for b in beginnings(hir)? {
            let offset = keywords
                .iter()
                .filter_map(|k| keyword_offset(&b.sets, k.as_bytes()))
                .min()?;
            leads.push(Lead {
                offset,
                sets: b.sets.into_boxed_slice(),
            });
        }
        Some(Self {
            leads: leads.into_boxed_slice(),
        })
    }

    /// The most bytes a match can start before a hit of a keyword.
    #[cfg(test)]
    fn max_offset(&self) -> usize {
        self.leads.iter().map(|l| l.offset).max().unwrap_or(0)
    }

    /// Where the regex search for a keyword hit at `hit` must start, or
    /// `None` when no match can begin around it: the earliest start of a
    /// beginning that puts its keyword at `hit` and that the text fits.
    ///
    /// Every match begins with one of the beginnings and holds that
    /// beginning's first keyword at its offset, so the hit there passes
    /// this test, and its window holds the match.
    pub(crate) fn start_for(&self, hay: &[u8], hit: usize) -> Option<usize> {
        self.leads
            .iter()
            .filter(|l| {
                hit.checked_sub(l.offset).is_some_and(|start| {
                    hay.len() - start >= l.sets.len()
                        && l.sets
                            .iter()
                            .zip(&hay[start..])
                            .all(|(set, &b)| set.contains(b))
                })
            })
            .map(|l| hit - l.offset)
            .min()
    }
}

/// The first offset at which every byte set of `sets` folds to the byte of
/// `keyword` it lies under.
fn keyword_offset(sets: &[ByteSet], keyword: &[u8]) -> Option<usize> {
    (0..=sets.len().checked_sub(keyword.len())?).find(|&o| {
        keyword
            .iter()
            .zip(&sets[o..])
            .all(|(&k, set)| set.folds_to(k))
    })
}

/// Every beginning of a match of `hir`, or `None` when there are too many to
/// list or the pattern has a class this analysis does not read.
fn beginnings(hir: &Hir) -> Option<Vec<Beginning>> {
    let open = |sets: Vec<ByteSet>| Beginning { sets, cut: false };
    let cut = |b: Beginning| Beginning { cut: true, ..b };
    Some(match hir.kind() {
        // Look-arounds consume nothing; leaving them out only admits more.
        HirKind::Empty | HirKind::Look(_) => vec![open(Vec::new())],
        HirKind::Literal(lit) => vec![open(lit.0.iter().map(|&b| ByteSet::single(b)).collect())],
        HirKind::Class(class) => vec![open(vec![class_set(class)?])],
        HirKind::Capture(cap) => beginnings(&cap.sub)?,
        HirKind::Alternation(subs) => {
            let mut all = Vec::new();
            for sub in subs {
                all.extend(beginnings(sub)?);
                if all.len() > MAX_BEGINNINGS {
                    return None;
                }
            }
            all
        }
        HirKind::Repetition(rep) => {
            // `x?` is nothing or `x`; otherwise a match consumes at least
            // `min` copies, and what follows them is not followed.
            if rep.min == 0 {
                let mut all = vec![open(Vec::new())];
                if rep.max == Some(1) {
                    all.extend(beginnings(&rep.sub)?);
                } else {
                    all[0].cut = true;
                }
                return Some(all);
            }
            let one = beginnings(&rep.sub)?;
            let mut all = vec![open(Vec::new())];
            for _ in 0..rep.min {
                // Past `MAX_BEGINNING_LEN` every beginning is cut.
                if all.iter().all(|b| b.cut) {
                    break;
                }
                all = concat(all, &one)?;
            }
            if rep.max != Some(rep.min) {
                all = all.into_iter().map(cut).collect();
            }
            all
        }
        HirKind::Concat(subs) => {
            let mut all = vec![open(Vec::new())];
            for sub in subs {
                if all.iter().all(|b| b.cut) {
                    break;
                }
                all = concat(all, &beginnings(sub)?)?;
            }
            all
        }
    })
}

/// Every beginning of `first` followed, where it is not cut, by every one of
/// `then`.
fn concat(first: Vec<Beginning>, then: &[Beginning]) -> Option<Vec<Beginning>> {
    let mut all = Vec::new();
    for b in first {
        if b.cut {
            all.push(b);
            continue;
        }
        for t in then {
            let mut sets = b.sets.clone();
            sets.extend_from_slice(&t.sets);
            let long = sets.len() >= MAX_BEGINNING_LEN;
            sets.truncate(MAX_BEGINNING_LEN);
            all.push(Beginning {
                sets,
                cut: t.cut || long,
            });
        }
        if all.len() > MAX_BEGINNINGS {
            return None;
        }
    }
    Some(all)
}

/// The bytes of a class, or `None` for a class with members beyond a byte
/// (patterns are compiled without Unicode, so there are none).
fn class_set(class: &Class) -> Option<ByteSet> {
    let ranges: Vec<(u32, u32)> = match class {
        Class::Bytes(c) => c
            .ranges()
            .iter()
            .map(|r| (u32::from(r.start()), u32::from(r.end())))
            .collect(),
        Class::Unicode(c) => c
            .ranges()
            .iter()
            .map(|r| (u32::from(r.start()), u32::from(r.end())))
            .collect(),
    };
    let mut set = ByteSet([0; 4]);
    for (start, end) in ranges {
        // A Unicode class is matched as UTF-8: only its ASCII members are
        // single bytes.
        if matches!(class, Class::Unicode(_)) && end > 0x7f {
            return None;
        }
        for c in start..=end {
            set.insert(u8::try_from(c).ok()?);
        }
    }
    Some(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex_automata::util::syntax;

    fn leads(pattern: &str, keywords: &[&str]) -> Option<Leads> {
        let config = syntax::Config::new().unicode(false).utf8(false);
        let hir = syntax::parse_with(pattern, &config).unwrap();
        let keywords: Vec<String> = keywords.iter().map(|k| k.to_ascii_lowercase()).collect();
        Leads::of(&hir, &keywords)
    }

    fn lead(pattern: &str, keywords: &[&str]) -> Option<usize> {
        leads(pattern, keywords).map(|l| l.max_offset())
    }

    #[test]
    fn a_pattern_that_begins_with_its_keyword_leads_by_nothing() {
        assert_eq!(lead(r"\bSK[0-9a-fA-F]{32}\b", &["sk"]), Some(0));
        assert_eq!(
            lead(r"(?i)\bpat[a-z0-9]{14}\.[a-f0-9]{64}", &["pat"]),
            Some(0)
        );
    }

    #[test]
    fn the_lead_is_the_farthest_keyword_of_any_beginning() {
        assert_eq!(
            lead(
                r"(?i)\b(?:https?|ftps?|sftp|ssh|smtps?|ldaps?)://[^:]+:",
                &["://"]
            ),
            Some(5)
        );
        assert_eq!(
            lead(
                r"(?i)(?:api_?key|apikey|secret|client_?secret|encryption_?key|token)[\w-]{0,10}?=",
                &["key", "secret", "token"]
            ),
            Some(11)
        );
        // Optional parts are followed both ways.
        assert_eq!(lead(r"(?:my_)?token=", &["token"]), Some(3));
    }

    #[test]
    fn no_leads_when_a_beginning_holds_no_keyword() {
        // The keyword comes after a repetition that is not followed.
        assert_eq!(lead(r"[a-z]+_token", &["token"]), None);
        assert_eq!(lead(r"x{0,3}token", &["token"]), None);
        // One branch has no keyword.
        assert_eq!(lead(r"(?:token|secret)=", &["token"]), None);
        // A class that is not one letter in either case is not a keyword.
        assert_eq!(lead(r"[tx]oken", &["token"]), None);
        // Too many beginnings to list.
        let four = "(?:ab|cd|ef|gh)";
        assert_eq!(lead(&format!("{}token", four.repeat(5)), &["token"]), None);
    }

    #[test]
    fn case_is_folded_as_the_keyword_search_folds_it() {
        assert_eq!(lead(r"(?i)aKiA[0-9A-Z]{16}", &["AKIA"]), Some(0));
        assert_eq!(lead(r"x[Tt]oken", &["token"]), Some(1));
    }

    #[test]
    fn a_hit_whose_text_fits_no_beginning_needs_no_search() {
        let sk = leads(r"\bSK[0-9a-fA-F]{32}\b", &["sk"]).unwrap();
        let key = b"id SK0123456789abcdef0123456789abcdef";
        assert_eq!(sk.start_for(key, 3), Some(3));
        // Wrong case, too short, not hex.
        assert_eq!(sk.start_for(b"a task that runs", 3), None);
        assert_eq!(sk.start_for(b"SK0123", 0), None);
        assert_eq!(
            sk.start_for(b"SKIP0123456789abcdef0123456789abcdef", 0),
            None
        );

        let url = leads(r"(?i)\b(?:https?|ssh)://[^:@]{1,64}:", &["://"]).unwrap();
        // The window starts at the scheme that fits.
        assert_eq!(url.start_for(b"see HTTPS://user:pw@host", 9), Some(4));
        assert_eq!(url.start_for(b"see ssh://user:pw@host", 7), Some(4));
        assert_eq!(url.start_for(b"see git://host/repo", 7), None);
        // The repetition's first copy is consumed.
        assert_eq!(url.start_for(b"http://:", 4), None);
    }

    #[test]
    fn every_example_match_is_held_by_a_hit_that_fits_a_beginning() {
        // The invariant the matcher relies on, on the built-in rules: some
        // keyword hit inside each match passes `start_for`, at or before the
        // match's start.
        let rules = crate::rules::RuleSet::builtin().unwrap();
        let mut with_leads = 0;
        for rule in rules.rules() {
            let compiled = rule.compiled();
            let Some(leads) = &compiled.leads else {
                continue;
            };
            with_leads += 1;
            for example in &rule.spec.examples {
                for prefix in ["", "x", "  const v = "] {
                    let hay = format!("{prefix}{example}");
                    let hay = hay.as_bytes();
                    let lower = hay.to_ascii_lowercase();
                    for m in compiled.regex.find_iter(hay) {
                        let held =
                            (m.start()..m.end()).any(|p| {
                                rule.spec.keywords.iter().any(|k| {
                                    lower[p..].starts_with(k.to_ascii_lowercase().as_bytes())
                                }) && leads.start_for(hay, p).is_some_and(|s| s <= m.start())
                            });
                        assert!(held, "{}: {example:?}", rule.spec.id);
                    }
                }
            }
        }
        // Nearly every built-in rule shows its beginnings.
        assert!(
            with_leads * 10 >= rules.len() * 8,
            "{with_leads} of {}",
            rules.len()
        );
    }
}
