//! A safe upper bound of a request's input tokens, for budgets and token rate
//! limits, from one pass over the request body.
//!
//! Every token covers at least one byte of the text it encodes (OpenAI's
//! tokenizers are byte-level BPE), so the decoded bytes of every string in the
//! request bound its text tokens; a number (a token id in a pre-tokenized prompt)
//! is one token; tool and schema definitions count their whole JSON; each message
//! adds OpenAI's fixed framing (at most 4 tokens, plus 3 for the reply); each
//! image adds [`TOKENS_PER_IMAGE`], since an image costs tokens its URL's bytes
//! do not show. Object keys are not counted: they are the API's own field names,
//! not prompt text. A body that is not JSON is bounded by its size.
//!
//! The walk is by hand rather than through serde: it ran on every request under a
//! budget and cost as much as the rest of admission (docs/BENCHMARKS.md history, `git log -p`). It
//! accepts exactly the JSON serde_json accepts (trailing bytes after the value
//! included, which serde refuses too), so a body serde would reject falls back
//! to the size bound here as well; the tests check the two agree.

use std::borrow::Cow;

/// Upper bound of tokens for one image in a request: a high-detail image costs at
/// most a few hundred tokens per tile on current OpenAI models; 2,000 covers the
/// largest tiling with room to spare.
pub const TOKENS_PER_IMAGE: i64 = 2_000;

/// Nesting deeper than serde_json's limit is refused, as serde refuses it.
const MAX_DEPTH: u32 = 128;

/// serde skips a tool definition without a depth limit (it keeps no stack); the
/// walk here recurses, so it stops at this depth and falls back to the size
/// bound rather than risk the worker's stack.
const MAX_DEFINITION_DEPTH: u32 = 1_000;

/// The bound of `body`'s input tokens; see the module documentation.
pub fn input_token_bound(body: &[u8]) -> i64 {
    let walked = std::str::from_utf8(body).ok().and_then(|text| {
        let mut scan = Scan {
            text,
            b: body,
            i: 0,
            depth: 0,
            definition: false,
            images: 0,
        };
        let found = scan.value(Place::TOP)?;
        scan.ws();
        if scan.i != body.len() {
            return None;
        }
        Some(found.tokens + 4 * found.messages + 3 + scan.images * TOKENS_PER_IMAGE)
    });
    walked.unwrap_or_else(|| body.len() as i64 + images_anywhere(body) * TOKENS_PER_IMAGE)
}

/// Image parts named anywhere in bytes that are not JSON: a conservative count.
fn images_anywhere(body: &[u8]) -> i64 {
    [&b"\"image_url\""[..], b"\"input_image\""]
        .iter()
        .map(|n| memchr::memmem::find_iter(body, n).count() as i64)
        .sum()
}

/// What a value adds to the bound.
#[derive(Default)]
struct Bound {
    tokens: i64,
    messages: i64,
}

/// Where a value sits: `top` marks the request object, whose `messages` and
/// `input` arrays are walked with `count`, which counts their elements
/// (messages, each with its framing).
#[derive(Clone, Copy)]
struct Place {
    top: bool,
    count: bool,
}

impl Place {
    const TOP: Place = Place {
        top: true,
        count: false,
    };
    const LEAF: Place = Place {
        top: false,
        count: false,
    };
    const MESSAGES: Place = Place {
        top: false,
        count: true,
    };
}

/// A cursor over a UTF-8 body. Every method returns `None` at a byte that is not
/// valid JSON there.
struct Scan<'a> {
    /// The body, checked UTF-8 once, so that strings are sliced from it rather
    /// than checked again one by one.
    text: &'a str,
    b: &'a [u8],
    i: usize,
    depth: u32,
    /// Inside a tool or schema definition, which serde only skips: strings are
    /// checked but not decoded, as serde checks them there.
    definition: bool,
    images: i64,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Skips JSON whitespace (exactly these four bytes, as serde).
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek() == Some(byte)).then(|| self.i += 1)
    }

    fn value(&mut self, place: Place) -> Option<Bound> {
        self.ws();
        let tokens = match self.peek()? {
            b'"' => self.string()?.len() as i64,
            b'{' => return self.nested(|s| s.object(place)),
            b'[' => return self.nested(|s| s.array(place)),
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return None,
        };
        Some(Bound {
            tokens,
            messages: 0,
        })
    }

    fn nested(&mut self, walk: impl FnOnce(&mut Self) -> Option<Bound>) -> Option<Bound> {
        self.depth += 1;
        let limit = if self.definition {
            MAX_DEFINITION_DEPTH
        } else {
            MAX_DEPTH
        };
        if self.depth >= limit {
            return None;
        }
        self.i += 1;
        let found = walk(self)?;
        self.depth -= 1;
        Some(found)
    }

    /// After the `{`.
    fn object(&mut self, place: Place) -> Option<Bound> {
        let mut found = Bound::default();
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(found);
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return None;
            }
            let key = self.string()?;
            self.ws();
            self.eat(b':')?;
            match key.as_ref() {
                // Definitions are rendered whole into the prompt: count their JSON.
                "tools" | "functions" | "response_format" | "tool_choice" => {
                    self.ws();
                    let start = self.i;
                    let outer = std::mem::replace(&mut self.definition, true);
                    self.value(Place::LEAF)?;
                    self.definition = outer;
                    found.tokens += (self.i - start) as i64;
                }
                "messages" | "input" if place.top => {
                    let inner = self.value(Place::MESSAGES)?;
                    found.tokens += inner.tokens;
                    found.messages += inner.messages;
                }
                _ => found.tokens += self.value(Place::LEAF)?.tokens,
            }
            if self.ended(b'}')? {
                return Some(found);
            }
        }
    }

    /// After a member or an element: `Some(true)` past the closing `close`,
    /// `Some(false)` past a comma.
    fn ended(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let end = self.peek()?;
        if end != b',' && end != close {
            return None;
        }
        self.i += 1;
        Some(end == close)
    }

    /// After the `[`.
    fn array(&mut self, place: Place) -> Option<Bound> {
        let mut found = Bound::default();
        self.ws();
        if self.eat(b']').is_some() {
            return Some(found);
        }
        loop {
            found.tokens += self.value(Place::LEAF)?.tokens;
            found.messages += i64::from(place.count);
            if self.ended(b']')? {
                return Some(found);
            }
        }
    }

    /// A string at the cursor (on its opening quote), decoded, with image parts
    /// counted. Strings with escapes (rare in prompts) are decoded by serde;
    /// inside a definition they are only checked, and kept as written.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.i + 1;
        let end = self.stop(start)?;
        let text = if self.b[end] == b'"' {
            self.i = end + 1;
            Cow::Borrowed(self.text.get(start..end)?)
        } else if self.definition {
            let close = self.skipped_string_end(start)?;
            self.i = close;
            Cow::Borrowed(self.text.get(start..close - 1)?)
        } else {
            let close = crate::json_walk::skip_string(self.b, self.i)?;
            let decoded: String = serde_json::from_slice(&self.b[self.i..close]).ok()?;
            self.i = close;
            Cow::Owned(decoded)
        };
        if matches!(text.as_ref(), "image_url" | "input_image") {
            self.images += 1;
        }
        Some(text)
    }

    /// The next `"` or `\` at or after `from` in a string's content; `None` if
    /// a control character (which must be escaped) comes first, or neither does.
    /// Keys and short values end within a few bytes, where a plain loop beats
    /// `memchr`'s set-up; long text is left to `memchr`.
    fn stop(&self, from: usize) -> Option<usize> {
        const SHORT: usize = 24;
        let near = (from + SHORT).min(self.b.len());
        for j in from..near {
            match self.b[j] {
                b'"' | b'\\' => return Some(j),
                c if c < 0x20 => return None,
                _ => {}
            }
        }
        let rest = self.b.get(near..)?;
        let end = near + memchr::memchr2(b'"', b'\\', rest)?;
        // The body is UTF-8 already; only control characters are left to refuse.
        if rest[..end - near]
            .iter()
            .copied()
            .min()
            .is_some_and(|c| c < 0x20)
        {
            return None;
        }
        Some(end)
    }

    /// End (past the closing quote) of the string whose content starts at
    /// `at`, checked as serde checks a string it skips: known escapes, four hex
    /// digits after `\u`, no control characters.
    fn skipped_string_end(&self, mut at: usize) -> Option<usize> {
        loop {
            let next = self.stop(at)?;
            if self.b[next] == b'"' {
                return Some(next + 1);
            }
            match self.b.get(next + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at = next + 2,
                b'u' => {
                    let hex = self.b.get(next + 2..next + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    at = next + 6;
                }
                _ => return None,
            }
        }
    }

    /// `true`, `false` or `null`: no tokens.
    fn literal(&mut self, word: &[u8]) -> Option<i64> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| {
            self.i = end;
            0
        })
    }

    /// A number, `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`: one token.
    fn number(&mut self) -> Option<i64> {
        self.eat(b'-');
        match self.peek()? {
            b'0' => {
                self.i += 1;
                if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    return None;
                }
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Some(1)
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn counts_text_framing_tools_and_images() {
        let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40});
        // "gpt-4o-mini" 11 + "user" 4 + "hi" 2 + the number 1, + 4 framing + 3 reply.
        assert_eq!(input_token_bound(chat.to_string().as_bytes()), 25);
        let body = br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"u"}}]}]}"#;
        assert!(input_token_bound(body) >= 2_000);
        let tools = json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]});
        assert!(input_token_bound(tools.to_string().as_bytes()) > 50);
        let ids = json!({"prompt": [1, 2, 3]});
        assert_eq!(input_token_bound(ids.to_string().as_bytes()), 6);
        assert_eq!(input_token_bound(b"not json, 10 bytes"), 18);
        // Escapes are counted as the text they decode to.
        // "a\u00e9" decodes to "aé", 3 bytes; + 3 for the reply.
        assert_eq!(input_token_bound(br#"{"prompt": "a\u00e9"}"#), 6);
    }

    #[test]
    fn an_escaped_image_part_still_counts() {
        // `\u005f` is `_`: the part is an image whoever spells it so.
        let body = br#"{"messages":[{"role":"user","content":[{"type":"image\u005furl"}]}]}"#;
        assert!(input_token_bound(body) >= TOKENS_PER_IMAGE);
    }

    #[test]
    fn what_serde_rejects_falls_back_to_the_size() {
        for bad in [
            &br#"{"a": 01}"#[..],
            br#"{"a": 1,}"#,
            br#"[1, 2,]"#,
            br#"{"a" 1}"#,
            br#"{"a": tru}"#,
            br#"{"a": "x"#,
            b"{\"a\": \"tab\there\"}",
            b"{\"a\": \"a prompt long enough for memchr, then a tab\there\"}",
            br#"{"a": "\ud800"}"#,
            br#"{"a": -}"#,
            br#"{"a": 1.}"#,
            br#"{"a": 1e}"#,
            b"{\"a\": \"\xff\"}",
        ] {
            assert_eq!(input_token_bound(bad), bad.len() as i64, "{bad:?}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(input_token_bound(deep.as_bytes()), 400);
    }

    /// The serde walk this module replaced, kept as the reference the hand walk
    /// must agree with.
    mod reference {
        use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
        use std::fmt;

        #[derive(Default)]
        pub struct Bound {
            pub tokens: i64,
            pub messages: i64,
        }

        pub fn bound(body: &[u8]) -> i64 {
            let images = super::images_anywhere(body);
            let mut de = serde_json::Deserializer::from_slice(body);
            match (Walk {
                top: true,
                count: false,
            })
            .deserialize(&mut de)
            .and_then(|b| de.end().map(|()| b))
            {
                Ok(b) => b.tokens + 4 * b.messages + 3 + images * super::TOKENS_PER_IMAGE,
                Err(_) => body.len() as i64 + images * super::TOKENS_PER_IMAGE,
            }
        }

        pub struct Walk {
            pub top: bool,
            pub count: bool,
        }

        impl<'de> DeserializeSeed<'de> for Walk {
            type Value = Bound;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Bound, D::Error> {
                d.deserialize_any(self)
            }
        }

        const LEAF: Walk = Walk {
            top: false,
            count: false,
        };

        fn one<E>() -> Result<Bound, E> {
            Ok(Bound {
                tokens: 1,
                messages: 0,
            })
        }

        impl<'de> Visitor<'de> for Walk {
            type Value = Bound;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_str<E>(self, v: &str) -> Result<Bound, E> {
                Ok(Bound {
                    tokens: v.len() as i64,
                    messages: 0,
                })
            }
            fn visit_i64<E>(self, _: i64) -> Result<Bound, E> {
                one()
            }
            fn visit_u64<E>(self, _: u64) -> Result<Bound, E> {
                one()
            }
            fn visit_f64<E>(self, _: f64) -> Result<Bound, E> {
                one()
            }
            fn visit_bool<E>(self, _: bool) -> Result<Bound, E> {
                Ok(Bound::default())
            }
            fn visit_unit<E>(self) -> Result<Bound, E> {
                Ok(Bound::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bound, A::Error> {
                let mut b = Bound::default();
                while let Some(item) = seq.next_element_seed(LEAF)? {
                    b.tokens += item.tokens;
                    b.messages += i64::from(self.count);
                }
                Ok(b)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Bound, A::Error> {
                let mut b = Bound::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "tools" | "functions" | "response_format" | "tool_choice" => {
                            let raw: &serde_json::value::RawValue = map.next_value()?;
                            b.tokens += raw.get().len() as i64;
                        }
                        "messages" | "input" if self.top => {
                            let inner = map.next_value_seed(Walk {
                                top: false,
                                count: true,
                            })?;
                            b.tokens += inner.tokens;
                            b.messages += inner.messages;
                        }
                        _ => b.tokens += map.next_value_seed(LEAF)?.tokens,
                    }
                }
                Ok(b)
            }
        }
    }

    /// JSON text built from pieces that exercise every rule, sometimes with
    /// whitespace, sometimes broken by one cut or one inserted byte.
    fn json_text() -> impl Strategy<Value = String> {
        let word = prop::sample::select(vec![
            "messages",
            "input",
            "tools",
            "functions",
            "response_format",
            "tool_choice",
            "image_url",
            "input_image",
            "content",
            "prompt",
            "",
            "é",
            "a\"b",
            "tab\\t",
            "\u{1F600}",
            // Past the short loop in `Scan::stop`, with an escape and without.
            "a prompt long enough to be searched with memchr",
            "a prompt long enough to be searched, then an \"escape\"",
        ]);
        let leaf = prop_oneof![
            word.clone().prop_map(|w| serde_json::to_string(w).unwrap()),
            prop::sample::select(vec![
                "0",
                "-1",
                "12",
                "3.5",
                "1e3",
                "-0.25E-2",
                "true",
                "false",
                "null",
                r#""a\u00e9""#,
                r#""\ud83d\ude00""#,
            ])
            .prop_map(str::to_owned),
        ];
        let value = leaf.prop_recursive(5, 48, 6, move |inner| {
            let key = word.clone().prop_map(|w| serde_json::to_string(w).unwrap());
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((key, inner), 0..6).prop_map(|members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(k, v)| format!("{k}:{v}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        });
        (value, any::<u8>(), any::<usize>(), 0u8..4).prop_map(|(text, byte, at, how)| {
            let at = at % (text.len() + 1);
            let cut = (0..=at)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            match how {
                // Whitespace between tokens, which both must skip.
                0 => text.replace(',', " ,\n").replace(':', "\t: "),
                1 => text[..cut].to_owned(),
                2 => {
                    let mut t = text.clone();
                    t.insert(cut, char::from(byte & 0x7f));
                    t
                }
                _ => text,
            }
        })
    }

    proptest! {
        #[test]
        fn agrees_with_serde(text in json_text()) {
            let body = text.as_bytes();
            prop_assert_eq!(input_token_bound(body), reference::bound(body), "{}", text);
        }
    }
}
