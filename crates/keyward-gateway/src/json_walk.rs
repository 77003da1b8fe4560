//! Walking JSON without parsing it: the members of an object as raw bytes, with
//! strings and nested values skipped by their brackets and quotes.
//!
//! The request path reads a handful of members from bodies whose bulk (messages,
//! generated text) it never needs; skipping that bulk with `memchr` costs a
//! fraction of deserializing it. A walk does not validate what it skips: callers
//! that must reject malformed JSON validate elsewhere.

/// The members of a JSON object, as raw key bytes (without quotes) and raw
/// value bytes. Stops (yielding nothing more) at the first malformed byte;
/// [`Members::complete`] tells the two endings apart.
pub(crate) struct Members<'a> {
    json: &'a [u8],
    at: usize,
    state: Walk,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    Going,
    /// The closing brace was reached.
    Closed,
    /// A malformed byte stopped the walk.
    Broken,
}

impl<'a> Members<'a> {
    /// `None` when `json` does not start with an object.
    pub(crate) fn of(json: &'a [u8]) -> Option<Self> {
        let at = skip_ws(json, 0);
        (json.get(at) == Some(&b'{')).then(|| {
            let first = skip_ws(json, at + 1);
            Self {
                json,
                at: first,
                state: if json.get(first) == Some(&b'}') {
                    Walk::Closed
                } else {
                    Walk::Going
                },
            }
        })
    }

    /// Whether the walk ended at the object's closing brace (rather than at a
    /// malformed byte). Meaningful once the iterator has returned `None`.
    pub(crate) fn complete(&self) -> bool {
        self.state == Walk::Closed
    }

    fn next_member(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        let b = self.json;
        let mut i = skip_ws(b, self.at);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(b, i)?;
        let key = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, i + 1);
        let end = skip_value(b, start)?;
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => self.at = i + 1,
            Some(b'}') => self.state = Walk::Closed,
            _ => return None,
        }
        Some((key, &b[start..end]))
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.state != Walk::Going {
            return None;
        }
        let member = self.next_member();
        if member.is_none() {
            self.state = Walk::Broken;
        }
        member
    }
}

pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// End (exclusive) of the string whose opening quote is at `i`. (`memchr2`
/// measured faster here than an inline loop even for short keys, and faster
/// than a loop over the first 16 bytes before it; and `skip_value` with
/// `memchr3` over one kind of bracket measured slower than its byte loop on
/// responses of a few hundred bytes: callgrind, 2026-12-02.)
pub(crate) fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let k = j + memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[k] == b'\\' {
            j = k + 2;
        } else {
            return Some(k + 1);
        }
    }
}

/// End (exclusive) of the value starting at `i`, skipped without parsing.
pub(crate) fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while let Some(&c) = b.get(j) {
                match c {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let len = b[i..]
                .iter()
                .position(|&c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace())
                .unwrap_or(b.len() - i);
            (len > 0).then_some(i + len)
        }
    }
}

/// A JSON integer that fits an `i64` (`-?(0|[1-9][0-9]*)`), as serde reads one
/// into an `i64`; `None` for anything else (floats, strings, overflow).
pub(crate) fn int(raw: &[u8]) -> Option<i64> {
    let (negative, digits) = match raw.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, raw),
    };
    if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        n = n.checked_mul(10).and_then(|n| {
            if negative {
                n.checked_sub(d)
            } else {
                n.checked_add(d)
            }
        })?;
    }
    Some(n)
}

/// A JSON string value without escapes or control characters, as `&str`;
/// `None` for anything else (the caller falls back to a real parser).
pub(crate) fn plain_str(raw: &[u8]) -> Option<&str> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.iter().any(|&c| c == b'\\' || c == b'"' || c < 0x20) {
        return None;
    }
    std::str::from_utf8(inner).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_how_the_walk_ended() {
        let json = br#" { "a" : 1, "b": {"c": [1, "]"]}, "d": "x\"y" } "#;
        let mut m = Members::of(json).unwrap();
        let got: Vec<(&[u8], &[u8])> = m.by_ref().collect();
        assert_eq!(
            got,
            vec![
                (&b"a"[..], &b"1"[..]),
                (b"b", br#"{"c": [1, "]"]}"#),
                (b"d", br#""x\"y""#)
            ]
        );
        assert!(m.complete());
        // Brackets of both kinds nested in each other and inside strings.
        let nested = br#"{"a": [{"b": "}]"}, [[{}]], "\"{"], "c": {"d": ["}", {"e": "]"}]}}"#;
        let got: Vec<&[u8]> = Members::of(nested).unwrap().map(|(k, _)| k).collect();
        assert_eq!(got, vec![&b"a"[..], b"c"]);
        let mut empty = Members::of(b"{ }").unwrap();
        assert_eq!(empty.next(), None);
        assert!(empty.complete());
        let mut broken = Members::of(br#"{"a": 1 "b": 2}"#).unwrap();
        assert_eq!(broken.by_ref().count(), 0);
        assert!(!broken.complete());
        assert!(Members::of(b"[1]").is_none());
    }

    #[test]
    fn integers_as_serde_reads_them() {
        for s in [
            "0",
            "7",
            "-3",
            "9223372036854775807",
            "-9223372036854775808",
            "120",
        ] {
            assert_eq!(
                int(s.as_bytes()),
                serde_json::from_str::<i64>(s).ok(),
                "{s}"
            );
        }
        for s in [
            "",
            "-",
            "01",
            "1.0",
            "1e3",
            "\"1\"",
            "null",
            "9223372036854775808",
            "1x",
        ] {
            assert_eq!(int(s.as_bytes()), None, "{s}");
            assert!(serde_json::from_str::<i64>(s).is_err(), "{s}");
        }
    }

    #[test]
    fn plain_strings_only() {
        assert_eq!(plain_str(br#""gpt-4o""#), Some("gpt-4o"));
        assert_eq!(plain_str(br#""""#), Some(""));
        assert_eq!(plain_str(br#""a\"b""#), None);
        assert_eq!(plain_str(b"\"a\nb\""), None);
        assert_eq!(plain_str(b"null"), None);
    }
}
