//! Stage one of the matcher: every place where a rule keyword starts.
//!
//! The keywords (ASCII case-insensitive) are compiled by `aho-corasick` into an
//! automaton with standard (overlapping) semantics, whose transitions are then
//! copied into a compact DFA table of our own: bytes that occur in no keyword
//! share one class, upper and lower case share a class, state ids are
//! premultiplied by the table's stride, the states where a keyword ends are
//! numbered last and carry a flag bit, and the table's length is a power of
//! two, so that one step is two loads, a mask (which drops the flag and
//! bounds the index without a check) and a test of the flag. A single walk is
//! bound by the latency of its dependent loads, so the haystack is cut into
//! [`STREAMS`] segments walked in lockstep; each segment's walk starts the
//! length of the longest keyword early, so that it has seen the start of
//! every keyword ending inside it. On source code this runs about twice as
//! fast as `aho-corasick`'s own leftmost-longest search, with the same hits.

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::nfa::noncontiguous;
use aho_corasick::{Anchored, MatchKind};

/// Set on a transition's target when a keyword ends there.
const MATCH: u32 = 1 << 31;

/// Segments walked at once.
const STREAMS: usize = 4;

/// The smallest transition table (entries): tables of the sizes
/// [`KeywordSearch::hits`] knows as constants are walked without bounds
/// checks.
const MIN_TABLE: usize = 1 << 16;

/// Haystacks shorter than this are walked as one segment (a quarter of the
/// bytes of source code are in files under 16 KiB, 6 % under 4 KiB).
pub(crate) const MIN_STREAMED_LEN: usize = 512;

/// A compiled set of keywords.
#[derive(Debug, Clone)]
pub(crate) struct KeywordSearch {
    /// Byte to class.
    classes: [u8; 256],
    /// Transitions: `trans[state | class]`, states premultiplied by the
    /// stride (a power of two at least the number of classes), with
    /// [`MATCH`] set on the states where a keyword ends. The length is a
    /// power of two, so that an index masked with `len - 1` (which also
    /// clears [`MATCH`]) needs no bounds check.
    trans: Box<[u32]>,
    /// The first (premultiplied) state in which a keyword ends; every later
    /// state is one too.
    first_match: u32,
    /// log2 of the stride.
    shift: u32,
    /// For each match state (in order, from `first_match`), the keywords
    /// ending there.
    ends: Vec<Box<[u32]>>,
    /// Length of each keyword.
    lens: Vec<usize>,
    /// Length of the longest keyword.
    max_len: usize,
}

impl KeywordSearch {
    /// Compiles `keywords` (non-empty literals; matched ignoring ASCII case).
    /// Keyword `i` is reported as pattern `i`.
    pub(crate) fn new(keywords: &[String]) -> Self {
        // A (noncontiguous) NFA rather than aho-corasick's DFA: the table
        // below is built by asking for every state's transitions anyway, and
        // the NFA answers that (following its failure links) for half the
        // cost of building the DFA, which was a fifth of `keyward scan`'s
        // start-up.
        let ac = noncontiguous::Builder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .prefilter(false)
            .build(keywords)
            .expect("keywords are plain literals and always compile");
        // Classes: one per byte (folded to lower case) that occurs in a
        // keyword, and class 0 for every other byte. From any state, a byte
        // in no keyword leads back to the start, like every other byte of
        // class 0, so one representative per class is enough.
        let mut in_keyword = [false; 256];
        for kw in keywords {
            for &b in kw.as_bytes() {
                in_keyword[usize::from(b.to_ascii_lowercase())] = true;
            }
        }
        let mut classes = [0u8; 256];
        let mut representatives: Vec<u8> = Vec::new();
        let other = (0..=255u8).find(|&b| {
            !in_keyword[usize::from(b.to_ascii_lowercase())] && !in_keyword[usize::from(b)]
        });
        representatives.push(other.unwrap_or(0));
        for b in 0..=255u8 {
            if in_keyword[usize::from(b)] && !b.is_ascii_uppercase() {
                classes[usize::from(b)] =
                    u8::try_from(representatives.len()).expect("at most 256 classes");
                representatives.push(b);
            }
        }
        for b in b'A'..=b'Z' {
            classes[usize::from(b)] = classes[usize::from(b.to_ascii_lowercase())];
        }
        let shift = representatives.len().next_power_of_two().trailing_zeros();

        // Every state reachable from the start, breadth first.
        let start = ac
            .start_state(Anchored::No)
            .expect("the NFA supports unanchored searches");
        // `index` maps the NFA's own state ids (small integers) to positions
        // in `order`; a vector indexed by the id is several times faster to
        // fill than a hash map.
        let mut order = vec![start];
        let mut index = StateIndex::default();
        index.insert(start, 0);
        let mut next = 0;
        while next < order.len() {
            let state = order[next];
            next += 1;
            for &b in &representatives {
                let to = ac.next_state(Anchored::No, state, b);
                if index.get(to).is_none() {
                    index.insert(to, order.len());
                    order.push(to);
                }
            }
        }
        // Renumber: states without a match first (the start stays 0, it
        // matches nothing since keywords are non-empty), then match states.
        let (plain, matching): (Vec<usize>, Vec<usize>) =
            (0..order.len()).partition(|&i| !ac.is_match(order[i]));
        let mut id = vec![0u32; order.len()];
        for (new, &old) in plain.iter().chain(&matching).enumerate() {
            id[old] = u32::try_from(new << shift)
                .ok()
                .filter(|&i| i < MATCH)
                .expect("keyword DFA too large");
            if new >= plain.len() {
                id[old] |= MATCH;
            }
        }
        let mut trans = vec![0u32; (order.len() << shift).next_power_of_two().max(MIN_TABLE)]
            .into_boxed_slice();
        let mut ends = vec![Box::default(); matching.len()];
        for (old, &state) in order.iter().enumerate() {
            let from = (id[old] & !MATCH) as usize;
            for (class, &b) in representatives.iter().enumerate() {
                let to = index
                    .get(ac.next_state(Anchored::No, state, b))
                    .expect("every state reachable from the start was visited");
                trans[from | class] = id[to];
            }
            if ac.is_match(state) {
                ends[(from >> shift) - plain.len()] = (0..ac.match_len(state))
                    .map(|i| ac.match_pattern(state, i).as_u32())
                    .collect();
            }
        }
        let lens: Vec<usize> = keywords.iter().map(String::len).collect();
        Self {
            classes,
            trans,
            first_match: u32::try_from(plain.len() << shift).expect("keyword DFA too large"),
            shift,
            ends,
            max_len: lens.iter().copied().max().unwrap_or(0),
            lens,
        }
    }

    /// Length of keyword `pattern`.
    pub(crate) fn len_of(&self, pattern: u32) -> usize {
        self.lens[pattern as usize]
    }

    /// Fills `hits` with `(start, pattern)` for every position of `hay`
    /// where a keyword starts, keeping the longest keyword starting there,
    /// in order of position.
    pub(crate) fn hits(&self, hay: &[u8], hits: &mut Vec<(usize, u32)>) {
        hits.clear();
        // A table of a constant size lets the compiler drop the bounds check
        // of every step (the index is masked to the size).
        macro_rules! sized {
            ($($n:literal)*) => {
                match self.trans.len() {
                    $(n if n == 1 << $n => {
                        let trans: &[u32; 1 << $n] = self.trans[..].try_into().expect("sized");
                        self.walk(hay, hits, |i| trans[i & ((1 << $n) - 1)]);
                    })*
                    _ => {
                        let mask = self.trans.len() - 1;
                        self.walk(hay, hits, |i| self.trans[i & mask]);
                    }
                }
            };
        }
        sized!(16 17 18 19 20);
        // Longest keyword first at each start, then one hit per start.
        hits.sort_unstable_by_key(|&(start, p)| (start, usize::MAX - self.lens[p as usize]));
        hits.dedup_by_key(|&mut (start, _)| start);
    }

    /// The walk of [`Self::hits`], with `next(state | class)` reading the
    /// transition table.
    #[inline(always)]
    fn walk(&self, hay: &[u8], hits: &mut Vec<(usize, u32)>, next: impl Fn(usize) -> u32) {
        let step = |state: u32, byte: u8| {
            next(state as usize | usize::from(self.classes[usize::from(byte)]))
        };
        let streams = if hay.len() < MIN_STREAMED_LEN {
            1
        } else {
            STREAMS
        };
        let seg = hay.len().div_ceil(streams);
        let mut lo = [0; STREAMS];
        let mut hi = [0; STREAMS];
        let mut state = [0u32; STREAMS];
        for j in 0..streams {
            lo[j] = (j * seg).min(hay.len());
            hi[j] = ((j + 1) * seg).min(hay.len());
            // Warm up without reporting: keywords ending before `lo[j]`
            // belong to the previous segment.
            for &b in &hay[lo[j].saturating_sub(self.max_len)..lo[j]] {
                state[j] = step(state[j], b);
            }
        }
        // The segments have equal lengths except the last: walk them in
        // lockstep as far as the shortest goes, then finish each alone.
        let mut done = 0;
        if streams == STREAMS {
            done = (0..STREAMS).map(|j| hi[j] - lo[j]).min().unwrap_or(0);
            let segs: [&[u8]; STREAMS] = std::array::from_fn(|j| &hay[lo[j]..lo[j] + done]);
            let mut i = 0;
            while i < done {
                let at;
                (state, at) = lockstep(&step, segs, i, state);
                let Some(at) = at else { break };
                for j in 0..STREAMS {
                    if state[j] & MATCH != 0 {
                        self.report(state[j], lo[j] + at, hits);
                    }
                }
                i = at + 1;
            }
        }
        for j in 0..streams {
            for (at, &b) in hay.iter().enumerate().take(hi[j]).skip(lo[j] + done) {
                state[j] = step(state[j], b);
                if state[j] & MATCH != 0 {
                    self.report(state[j], at, hits);
                }
            }
        }
    }

    /// Records the keywords ending with `hay[at]` in match state `state`.
    #[cold]
    fn report(&self, state: u32, at: usize, hits: &mut Vec<(usize, u32)>) {
        let i = (((state & !MATCH) - self.first_match) >> self.shift) as usize;
        for &p in self.ends[i].iter() {
            hits.push((at + 1 - self.lens[p as usize], p));
        }
    }
}

/// Steps the four states over `segs[j][from..]` in lockstep until one of them
/// is a match state; returns the states and the index of that step, or
/// `None` at the end of the segments.
///
/// Kept out of line, and free of calls: inlined into [`KeywordSearch::walk`],
/// next to its call of `report`, it had the compiler keep the segments and
/// the table on the stack and load them on every step.
#[inline(never)]
fn lockstep(
    step: &impl Fn(u32, u8) -> u32,
    segs: [&[u8]; STREAMS],
    from: usize,
    [mut a, mut b, mut c, mut d]: [u32; STREAMS],
) -> ([u32; STREAMS], Option<usize>) {
    let [s0, s1, s2, s3] = segs;
    // One index for the four segments, known to be in bounds for all.
    let n = s0.len();
    let (s1, s2, s3) = (&s1[..n], &s2[..n], &s3[..n]);
    let mut k = from;
    while k < n {
        a = step(a, s0[k]);
        b = step(b, s1[k]);
        c = step(c, s2[k]);
        d = step(d, s3[k]);
        // One branch for the four streams: matches are rare.
        if (a | b | c | d) & MATCH != 0 {
            return ([a, b, c, d], Some(k));
        }
        k += 1;
    }
    ([a, b, c, d], None)
}

/// Positions of the `aho-corasick` NFA's states, indexed by their ids.
#[derive(Default)]
struct StateIndex(Vec<u32>);

impl StateIndex {
    const UNSEEN: u32 = u32::MAX;

    fn get(&self, state: StateID) -> Option<usize> {
        match self.0.get(state.as_usize()) {
            Some(&i) if i != Self::UNSEEN => Some(i as usize),
            _ => None,
        }
    }

    fn insert(&mut self, state: StateID, position: usize) {
        let id = state.as_usize();
        if id >= self.0.len() {
            self.0.resize(id + 1, Self::UNSEEN);
        }
        self.0[id] = u32::try_from(position).expect("keyword DFA too large");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn hits(keywords: &[&str], hay: &str) -> Vec<(usize, &'static str)> {
        let owned: Vec<String> = keywords.iter().map(|k| k.to_string()).collect();
        let search = KeywordSearch::new(&owned);
        let mut out = Vec::new();
        search.hits(hay.as_bytes(), &mut out);
        let names: Vec<&'static str> = keywords
            .iter()
            .map(|k| &*Box::leak(k.to_string().into_boxed_str()))
            .collect();
        out.iter().map(|&(at, p)| (at, names[p as usize])).collect()
    }

    #[test]
    fn longest_keyword_at_each_start_in_any_ascii_case() {
        let kws = ["ab", "abc", "bc", "x~y", "für"];
        assert_eq!(
            hits(&kws, "zABCz aB x~Y FüR"),
            [(1, "abc"), (2, "bc"), (6, "ab"), (9, "x~y"), (13, "für")]
        );
        // Non-ASCII bytes are not folded.
        assert_eq!(hits(&kws, "FÜR"), []);
    }

    #[test]
    fn tables_of_every_size_give_the_longest_keyword_at_each_start() {
        // The built-in keywords need a table of 2^17 entries; a few fit the
        // smallest, thousands need one larger than the sizes walked
        // without bounds checks. Each against a naive search.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789_-";
        for (count, table) in [(5, "smallest"), (250, "sized"), (4000, "largest")] {
            let mut keywords: Vec<String> = (0..count)
                .map(|_| {
                    (0..2 + next(11))
                        .map(|_| char::from(alphabet[next(alphabet.len() as u64) as usize]))
                        .collect()
                })
                .collect();
            keywords.sort();
            keywords.dedup();
            let search = KeywordSearch::new(&keywords);
            let size = search.trans.len();
            match table {
                "smallest" => assert_eq!(size, MIN_TABLE),
                "sized" => assert!(size > MIN_TABLE && size <= 1 << 20, "{size}"),
                _ => assert!(size > 1 << 20, "{size}"),
            }
            // Keywords in random case between random bytes, and the text
            // walked as several streams.
            let mut hay = Vec::new();
            while hay.len() < 8 * MIN_STREAMED_LEN {
                let k = &keywords[next(keywords.len() as u64) as usize];
                hay.extend(k.bytes().map(|b| {
                    if next(2) == 0 {
                        b.to_ascii_uppercase()
                    } else {
                        b
                    }
                }));
                hay.extend((0..next(4)).map(|_| alphabet[next(alphabet.len() as u64) as usize]));
            }
            let set: HashSet<&[u8]> = keywords.iter().map(|k| k.as_bytes()).collect();
            let expected: Vec<(usize, usize)> = (0..hay.len())
                .filter_map(|s| {
                    (2..=12.min(hay.len() - s))
                        .rev()
                        .find(|&l| set.contains(&hay[s..s + l].to_ascii_lowercase()[..]))
                        .map(|l| (s, l))
                })
                .collect();
            let mut got = Vec::new();
            search.hits(&hay, &mut got);
            let got: Vec<(usize, usize)> =
                got.iter().map(|&(s, p)| (s, search.len_of(p))).collect();
            assert_eq!(got, expected, "{count} keywords, table of {size}");
        }
    }

    #[test]
    fn keywords_across_segment_boundaries_are_found_once() {
        let kws = ["secret", "ec", "key"];
        let len = 4 * MIN_STREAMED_LEN;
        for shift in 0..8 {
            // A keyword ending at every offset around each segment boundary.
            let mut hay = vec![b'.'; len];
            let mut expected = Vec::new();
            for boundary in (1..4).map(|j| j * len / 4) {
                let at = boundary - 3 - shift;
                hay[at..at + 6].copy_from_slice(b"SeCrEt");
                expected.push((at, "secret"));
                expected.push((at + 1, "ec"));
            }
            let hay = String::from_utf8(hay).unwrap();
            assert_eq!(hits(&kws, &hay), expected, "shift {shift}");
        }
    }
}
