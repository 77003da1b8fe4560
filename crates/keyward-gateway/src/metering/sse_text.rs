//! Finding generated text in one stream event's JSON, however the upstream wrote it.
//!
//! Generated text is in members named `content` (chat), `text` (completions) or
//! `delta` (Responses API), at any depth, whose value is a non-empty string; an
//! event's text is its `content` strings when it has any, otherwise its `text`
//! and `delta` strings. (So a chat chunk, the common case, needs one search, not
//! three: measured on a 260-byte chunk, each search of the whole event costs
//! about 20 ns.) JSON
//! lets an upstream put whitespace around the colon, reorder members, escape any
//! character (`\u00e9`, `\"`) and even spell a key with escapes (`"\u0063ontent"`);
//! all of these must count the same, since a cut-off stream is charged from this
//! count.
//!
//! Two ways, one answer ([`scan`] picks):
//! - the fast way, for an event with no `\u` escape (nearly all of them): search
//!   for the quoted key names (`"content"`…) with `memmem`, then step over
//!   whitespace to the `:` and the value's quote. A quoted name can only be a whole
//!   string token in valid JSON (a quote inside a string is escaped, so preceded by
//!   a backslash, which the final quote of `"content"` is not); a hit whose first
//!   quote follows a backslash could be the tail of a longer string, so it sends
//!   the event the slow way.
//! - the slow way, for everything else: one pass over every string token, which
//!   tells keys from values by the `:` after them and decodes escaped keys.
//!
//! The tests hold both ways to `serde_json`'s reading of the event.

use crate::json_walk::{skip_string, skip_ws};
use memchr::memmem::Finder;
use std::sync::LazyLock;

/// What one event says about generated text.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Text {
    /// Members holding non-empty generated text.
    pub members: u32,
    /// Bytes of that text, decoded (UTF-8, escapes resolved).
    pub bytes: i64,
    /// Whether some key of the event is written with escapes: members the
    /// byte-level readers look for (`usage`) could then be hidden from them.
    pub escaped_key: bool,
}

/// The generated text in `data`, one event's JSON payload. Malformed JSON gives
/// whatever was found before the fault, never a panic.
pub fn scan(data: &[u8]) -> Text {
    if has_unicode_escape(data) {
        return walk(data);
    }
    fast(data).unwrap_or_else(|| walk(data))
}

/// Whether `data` holds a `\u` escape: the only way to spell a letter of a key
/// name with escapes (`\n`, `\t`… decode to control characters, `\/` to `/`).
/// One `memchr` over the event, usually finding no backslash at all.
fn has_unicode_escape(data: &[u8]) -> bool {
    memchr::memchr_iter(b'\\', data).any(|i| data.get(i + 1) == Some(&b'u'))
}

/// The fast way; `None` when a hit is ambiguous and the event must be walked.
fn fast(data: &[u8]) -> Option<Text> {
    let (content, others) = KEY_FINDERS.split_first().expect("three names");
    let mut text = Text::default();
    find_values(content, data, &mut text)?;
    if text.members > 0 {
        // An event with `content` strings: they are its text.
        return Some(text);
    }
    for finder in others {
        find_values(finder, data, &mut text)?;
    }
    Some(text)
}

/// Adds the string values of the key `finder` finds to `text`; `None` when a
/// hit is ambiguous.
fn find_values(finder: &Finder<'_>, data: &[u8], text: &mut Text) -> Option<()> {
    let len = finder.needle().len();
    for at in finder.find_iter(data) {
        if at > 0 && data[at - 1] == b'\\' {
            return None;
        }
        if let Some(bytes) = text_value(data, at + len) {
            text.add(bytes);
        }
    }
    Some(())
}

/// The slow way: every string token in order, so nothing inside a string is
/// mistaken for a key.
fn walk(data: &[u8]) -> Text {
    // `content` strings, and `text` and `delta` strings: the first when any.
    let mut content = Text::default();
    let mut others = Text::default();
    let mut escaped_key = false;
    let mut i = 0;
    while let Some(k) = memchr::memchr(b'"', &data[i..]) {
        let start = i + k;
        let Some(end) = skip_string(data, start) else {
            break;
        };
        let raw_key = &data[start + 1..end - 1];
        let colon = skip_ws(data, end);
        if data.get(colon) != Some(&b':') {
            i = end;
            continue;
        }
        let key = if raw_key.contains(&b'\\') {
            escaped_key = true;
            serde_json::from_slice::<String>(&data[start..end])
                .map(String::into_bytes)
                .unwrap_or_default()
        } else {
            raw_key.to_vec()
        };
        let into = match key.as_slice() {
            b"content" => Some(&mut content),
            b"text" | b"delta" => Some(&mut others),
            _ => None,
        };
        if let (Some(into), Some(bytes)) = (into, text_value(data, colon)) {
            into.add(bytes);
        }
        i = colon + 1;
    }
    let text = if content.members > 0 { content } else { others };
    Text {
        escaped_key,
        ..text
    }
}

impl Text {
    fn add(&mut self, bytes: i64) {
        if bytes > 0 {
            self.members += 1;
            self.bytes += bytes;
        }
    }
}

/// After a key ending at `i`: the decoded length of its value when the value is
/// a string (`None` when it is not, or when `i` is not followed by a colon).
fn text_value(data: &[u8], i: usize) -> Option<i64> {
    let colon = skip_ws(data, i);
    if data.get(colon) != Some(&b':') {
        return None;
    }
    let open = skip_ws(data, colon + 1);
    if data.get(open) != Some(&b'"') {
        return None;
    }
    let close = skip_string(data, open)?;
    Some(decoded_len(&data[open + 1..close - 1]))
}

/// Bytes of a JSON string's contents once decoded to UTF-8 (as `serde_json`
/// decodes it), without allocating: raw bytes count as themselves, a short
/// escape as one byte, `\uXXXX` as its character's UTF-8 length and a surrogate
/// pair as four.
fn decoded_len(raw: &[u8]) -> i64 {
    let mut len = 0usize;
    let mut i = 0;
    while let Some(k) = raw.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        len += k;
        i += k;
        if raw.get(i + 1) != Some(&b'u') {
            len += 1;
            i += 2;
            continue;
        }
        let unit = hex4(raw.get(i + 2..i + 6));
        let low = hex4(raw.get(i + 8..i + 12)).filter(|_| raw.get(i + 6..i + 8) == Some(b"\\u"));
        match (unit, low) {
            (Some(0xD800..=0xDBFF), Some(0xDC00..=0xDFFF)) => {
                len += 4;
                i += 12;
            }
            (Some(u), _) => {
                len += match u {
                    0..=0x7F => 1,
                    0x80..=0x7FF => 2,
                    _ => 3,
                };
                i += 6;
            }
            (None, _) => {
                len += 1;
                i += 2;
            }
        }
    }
    (len + raw.len().saturating_sub(i)) as i64
}

fn hex4(digits: Option<&[u8]>) -> Option<u32> {
    let digits = std::str::from_utf8(digits?).ok()?;
    u32::from_str_radix(digits, 16).ok()
}

/// Searchers built once: building one per event (what `memmem::find` does) cost
/// more than the search itself on these short events. The needles stop at the
/// key's closing quote, so the spacing after it does not matter.
static KEY_FINDERS: LazyLock<[Finder<'static>; 3]> = LazyLock::new(|| {
    [
        Finder::new(b"\"content\""),
        Finder::new(b"\"text\""),
        Finder::new(b"\"delta\""),
    ]
});

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The reference: the event parsed with serde, text members collected
    /// (`content` ones, and the others).
    fn by_serde(data: &[u8]) -> (u32, i64) {
        type Acc = [(u32, i64); 2];
        fn visit(v: &Value, acc: &mut Acc) {
            match v {
                Value::Object(map) => {
                    for (k, v) in map {
                        match (k.as_str(), v) {
                            ("content" | "text" | "delta", Value::String(s)) => {
                                let a = &mut acc[usize::from(k != "content")];
                                if !s.is_empty() {
                                    a.0 += 1;
                                    a.1 += s.len() as i64;
                                }
                            }
                            _ => visit(v, acc),
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|v| visit(v, acc)),
                _ => {}
            }
        }
        let mut acc = [(0, 0); 2];
        visit(&serde_json::from_slice(data).unwrap(), &mut acc);
        if acc[0].0 > 0 {
            acc[0]
        } else {
            acc[1]
        }
    }

    fn both(data: &str) -> (u32, i64) {
        let t = scan(data.as_bytes());
        let w = walk(data.as_bytes());
        assert_eq!((t.members, t.bytes), (w.members, w.bytes), "{data}");
        assert_eq!((t.members, t.bytes), by_serde(data.as_bytes()), "{data}");
        (t.members, t.bytes)
    }

    #[test]
    fn spacing_escapes_and_key_spellings_count_the_same() {
        let compact = r#"{"choices":[{"delta":{"content":"caf\u00e9 \"x\""}}]}"#;
        assert_eq!(both(compact), (1, 9));
        for spelled in [
            r#"{"choices":[{"delta":{"content": "café \"x\""}}]}"#,
            "{ \"choices\" : [ { \"delta\" : { \"content\"\t:\r\n\"caf\\u00E9 \\\"x\\\"\" } } ] }",
            r#"{"choices":[{"delta":{"\u0063ontent":"café \u0022x\u0022"}}]}"#,
        ] {
            assert_eq!(both(spelled), (1, 9), "{spelled}");
        }
        assert!(scan(br#"{"\u0063ontent":"x"}"#).escaped_key);
        assert!(!scan(br#"{"content":"\u00e9"}"#).escaped_key);
    }

    #[test]
    fn names_that_are_not_text_members_are_not_counted() {
        for data in [
            r#"{"role":"content","content":""}"#,
            r#"{"say \"content":"x"}"#,
            r#"{"a":"\\","content" : null, "text": 3, "delta": {"x": "content"}}"#,
            r#"{"a":"say \"content\": \"x\""}"#,
        ] {
            assert_eq!(both(data), (0, 0), "{data}");
        }
        assert_eq!(both(r#"{"a":"\\","text":"\ud83d\ude00"}"#), (1, 4));
    }

    #[test]
    fn content_strings_are_the_text_of_an_event_that_has_them() {
        // A Responses API item: `content` is an array, its parts hold `text`.
        let item = r#"{"item": {"content": [{"type": "output_text", "text": "Hi!"}]}}"#;
        assert_eq!(both(item), (1, 3));
        let both_kinds = r#"{"delta": "ab", "choices": [{"content" : "xyz", "text": "q"}]}"#;
        assert_eq!(both(both_kinds), (1, 3));
        let escaped = r#"{"delta": "ab", "\u0063ontent": "xyz"}"#;
        assert_eq!(both(escaped), (1, 3));
        let empty_content = r#"{"content": "", "delta": "ab", "text": "c"}"#;
        assert_eq!(both(empty_content), (2, 3));
    }

    #[test]
    fn malformed_events_do_not_panic() {
        for data in [
            &b"{\"content\":\"ab"[..],
            b"{\"content\" :",
            b"\"",
            b"{\"content\":\"\\u12",
            b"{\"\\u00",
            b"\\",
        ] {
            let _ = scan(data);
            let _ = walk(data);
            let _ = decoded_len(data);
        }
    }
}
