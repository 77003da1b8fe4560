//! Watching a server-sent-events stream on its way to the client.
//!
//! The tap forwards complete events as soon as they are complete (an event is of no
//! use to a client before its blank line arrives, so this adds no latency), reads
//! usage from whichever event carries it, and drops the usage-only chunk the
//! gateway asked for when the client did not.

use crate::metering::{sse_text, usage_parse};
use bytes::{Bytes, BytesMut};
use keyward_core::TokenUsage;
use memchr::memmem::Finder;
use std::borrow::Cow;
use std::sync::LazyLock;

/// Stream state between frames.
pub struct SseTap {
    pending: BytesMut,
    strip_usage_chunk: bool,
    /// Usage reported by the upstream, once seen.
    pub usage: Option<TokenUsage>,
    /// Events that carried generated text: a lower bound on output tokens if the
    /// stream is cut off before usage arrives (OpenAI sends about one token per event).
    pub text_events: i64,
    /// Bytes of generated text seen (decoded: however the upstream spaced or
    /// escaped its JSON).
    pub text_bytes: i64,
}

impl SseTap {
    /// A tap; `strip_usage_chunk` removes a usage-only chunk (`choices: []`) that the
    /// gateway requested on the client's behalf.
    pub fn new(strip_usage_chunk: bool) -> Self {
        Self {
            pending: BytesMut::new(),
            strip_usage_chunk,
            usage: None,
            text_events: 0,
            text_bytes: 0,
        }
    }

    /// Takes one frame from the upstream and returns what to send to the client now.
    ///
    /// A frame that starts on an event boundary is inspected in place, and its
    /// complete events are forwarded without a copy when all are kept (the common
    /// case: only a usage chunk the client did not ask for is ever removed). Only
    /// an incomplete trailing event is copied, to wait for the rest.
    pub fn push(&mut self, frame: Bytes) -> Bytes {
        if !self.pending.is_empty() {
            self.pending.extend_from_slice(&frame);
            let mut out = BytesMut::with_capacity(self.pending.len());
            while let Some(end) = event_end(&self.pending) {
                let event = self.pending.split_to(end);
                if self.keep(&event) {
                    out.extend_from_slice(&event);
                }
            }
            return out.freeze();
        }
        let mut start = 0;
        // Kept events, once one has been dropped (until then, a prefix of `frame`).
        let mut copied: Option<BytesMut> = None;
        while let Some(len) = event_end(&frame[start..]) {
            let event = &frame[start..start + len];
            let keep = self.keep(event);
            match (&mut copied, keep) {
                (Some(out), true) => out.extend_from_slice(event),
                (None, false) => copied = Some(BytesMut::from(&frame[..start])),
                _ => {}
            }
            start += len;
        }
        self.pending.extend_from_slice(&frame[start..]);
        match copied {
            Some(out) => out.freeze(),
            None => frame.slice(..start),
        }
    }

    /// Whatever is left when the upstream ends (an unterminated last event).
    pub fn finish(&mut self) -> Bytes {
        let rest = self.pending.split().freeze();
        if !rest.is_empty() && self.keep(&rest) {
            rest
        } else {
            Bytes::new()
        }
    }

    /// Inspects one complete event; false when it must not reach the client.
    fn keep(&mut self, event: &[u8]) -> bool {
        let data = event_data(event);
        let data = &data[..];
        if data.is_empty() || data == b"[DONE]" {
            return true;
        }
        let text = sse_text::scan(data);
        if text.members > 0 {
            self.text_events += 1;
            self.text_bytes += text.bytes;
        }
        let found = if text.escaped_key {
            usage_parse::read_decoding(data)
        } else if USAGE_FINDER.find(data).is_some() {
            usage_parse::read(data)
        } else {
            return true;
        };
        let Some(found) = found else {
            return true;
        };
        let Some(usage) = found.usage else {
            return true;
        };
        self.usage = Some(usage);
        let usage_only = found.choices_empty == Some(true);
        !(self.strip_usage_chunk && usage_only)
    }
}

/// End (exclusive) of the first complete event: after a blank line (`\n\n` or
/// `\r\n\r\n`). One pass over the newlines.
fn event_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find_map(|i| match buf.get(i + 1..) {
        Some([b'\n', ..]) => Some(i + 2),
        Some([b'\r', b'\n', ..]) => Some(i + 3),
        _ => None,
    })
}

/// The `data:` payload of an event: its `data:` lines joined by newlines, as
/// the SSE standard says. OpenAI-compatible servers send a chunk on one line,
/// borrowed as is; an upstream that pretty-prints its JSON (a newline is JSON
/// whitespace) sends several, joined in a copy. Lines are found with `memchr`:
/// splitting on a byte predicate walked every byte of the chunk and was the
/// tap's largest cost.
fn event_data(event: &[u8]) -> Cow<'_, [u8]> {
    let mut lines = data_lines(event);
    let Some(first) = lines.next() else {
        return Cow::Borrowed(&[]);
    };
    let Some(second) = lines.next() else {
        return Cow::Borrowed(first);
    };
    let mut joined = first.to_vec();
    for line in std::iter::once(second).chain(lines) {
        joined.push(b'\n');
        joined.extend_from_slice(line);
    }
    Cow::Owned(joined)
}

/// The payloads of an event's `data:` lines (one leading space and a trailing
/// `\r` removed).
fn data_lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    std::iter::from_fn(move || {
        while start < event.len() {
            let end = memchr::memchr(b'\n', &event[start..]).map_or(event.len(), |i| start + i);
            let line = &event[start..end];
            start = end + 1;
            if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
                return Some(rest.strip_prefix(b" ").unwrap_or(rest));
            }
        }
        None
    })
}

/// Built once: building a searcher per event (what `memmem::find` does) cost
/// more than the search itself on these short events.
static USAGE_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    const USAGE: &str =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    #[test]
    fn strips_the_usage_chunk_the_client_did_not_ask_for() {
        let mut tap = SseTap::new(true);
        let out = tap.push(Bytes::from(format!("{CHUNK}{USAGE}{DONE}")));
        assert_eq!(out, format!("{CHUNK}{DONE}").as_bytes());
        assert_eq!(
            tap.usage,
            Some(TokenUsage {
                input: 3,
                output: 2,
                ..Default::default()
            })
        );
        assert_eq!(tap.text_events, 1);
    }

    #[test]
    fn keeps_the_usage_chunk_when_asked_and_handles_split_frames() {
        let mut tap = SseTap::new(false);
        let all = format!("{CHUNK}{USAGE}{DONE}");
        let mut out = Vec::new();
        for piece in all.as_bytes().chunks(7) {
            out.extend_from_slice(&tap.push(Bytes::copy_from_slice(piece)));
        }
        out.extend_from_slice(&tap.finish());
        assert_eq!(out, all.as_bytes());
        assert_eq!(tap.usage.unwrap().output, 2);
    }

    #[test]
    fn reads_usage_from_a_final_chunk_that_also_has_choices() {
        let mut tap = SseTap::new(true);
        let last = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":4}}\r\n\r\n";
        assert_eq!(event_end(last.as_bytes()), Some(last.len()));
        assert_eq!(event_end(b"data: x\n"), None);
        let out = tap.push(Bytes::from_static(last.as_bytes()));
        assert_eq!(
            out,
            last.as_bytes(),
            "a chunk with choices is never dropped"
        );
        assert_eq!(tap.usage.unwrap().output, 4);
    }

    #[test]
    fn every_split_of_a_stream_gives_the_same_output() {
        let all = format!("{CHUNK}{CHUNK}{USAGE}{CHUNK}{DONE}");
        let want = format!("{CHUNK}{CHUNK}{CHUNK}{DONE}");
        for size in 1..=all.len() {
            let mut tap = SseTap::new(true);
            let mut out = Vec::new();
            for piece in all.as_bytes().chunks(size) {
                out.extend_from_slice(&tap.push(Bytes::copy_from_slice(piece)));
            }
            out.extend_from_slice(&tap.finish());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                want,
                "frames of {size} bytes"
            );
            assert_eq!(tap.usage.unwrap().output, 2);
            assert_eq!(tap.text_events, 3);
        }
    }

    #[test]
    fn event_data_is_the_data_lines_joined() {
        assert_eq!(
            &event_data(b"event: x\r\ndata: {\"a\":1}\r\n\r\n")[..],
            b"{\"a\":1}"
        );
        assert_eq!(&event_data(b"data:[DONE]\n\n")[..], b"[DONE]");
        assert_eq!(&event_data(b": comment\n\n")[..], b"");
        assert_eq!(&event_data(b"data: tail")[..], b"tail");
        assert_eq!(
            &event_data(b"data: {\"a\":\ndata:  1}\r\n: c\ndata:\n\n")[..],
            b"{\"a\":\n 1}\n"
        );
    }

    #[test]
    fn counts_text_events_without_usage() {
        let mut tap = SseTap::new(true);
        tap.push(Bytes::from(CHUNK.repeat(5)));
        tap.push(Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"\"}}]}\n\n",
        ));
        assert_eq!(tap.text_events, 5);
        assert_eq!(tap.usage, None);
    }

    /// An upstream's way of writing JSON, drawn from a seed: whitespace (spaces,
    /// tabs, newlines) wherever JSON allows it, members in any order, any
    /// character of a string or key escaped, `\uXXXX` in either case.
    struct Spelling(u64);

    impl Spelling {
        fn next(&mut self) -> u64 {
            // xorshift64*: reproducible from the seed proptest reports.
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn ws(&mut self, out: &mut String) {
            for _ in 0..self.next() % 4 {
                out.push([' ', ' ', '\t', '\n'][(self.next() % 4) as usize]);
            }
        }

        fn string(&mut self, s: &str, out: &mut String) {
            out.push('"');
            for c in s.chars() {
                let must = c == '"' || c == '\\' || c < ' ';
                if !must && !self.next().is_multiple_of(4) {
                    out.push(c);
                    continue;
                }
                match (c, self.next() % 2) {
                    ('"', 0) => out.push_str("\\\""),
                    ('\\', 0) => out.push_str("\\\\"),
                    ('\n', 0) => out.push_str("\\n"),
                    _ => {
                        let mut units = [0u16; 2];
                        for unit in c.encode_utf16(&mut units) {
                            if self.next().is_multiple_of(2) {
                                out.push_str(&format!("\\u{unit:04x}"));
                            } else {
                                out.push_str(&format!("\\u{unit:04X}"));
                            }
                        }
                    }
                }
            }
            out.push('"');
        }

        fn value(&mut self, v: &serde_json::Value, out: &mut String) {
            use serde_json::Value;
            match v {
                Value::Object(map) => {
                    let mut members: Vec<_> = map.iter().collect();
                    for i in (1..members.len()).rev() {
                        members.swap(i, (self.next() % (i as u64 + 1)) as usize);
                    }
                    out.push('{');
                    for (n, (k, v)) in members.into_iter().enumerate() {
                        if n > 0 {
                            out.push(',');
                        }
                        self.ws(out);
                        self.string(k, out);
                        self.ws(out);
                        out.push(':');
                        self.ws(out);
                        self.value(v, out);
                        self.ws(out);
                    }
                    out.push('}');
                }
                Value::Array(items) => {
                    out.push('[');
                    for (n, item) in items.iter().enumerate() {
                        if n > 0 {
                            out.push(',');
                        }
                        self.ws(out);
                        self.value(item, out);
                        self.ws(out);
                    }
                    out.push(']');
                }
                Value::String(s) => self.string(s, out),
                other => out.push_str(&other.to_string()),
            }
        }

        /// One SSE event: a pretty-printed payload goes on several `data:` lines.
        fn event(&mut self, v: &serde_json::Value) -> String {
            let mut json = String::new();
            self.ws(&mut json);
            self.value(v, &mut json);
            let mut event = String::new();
            for line in json.split('\n') {
                event.push_str(if self.next().is_multiple_of(2) {
                    "data: "
                } else {
                    "data:"
                });
                event.push_str(line);
                event.push('\n');
            }
            event.push('\n');
            event
        }
    }

    /// Chunks as OpenAI-compatible upstreams stream them (chat, completions,
    /// Responses API; text, role, finish and usage chunks), and the generated
    /// text of each.
    fn chunk() -> impl proptest::strategy::Strategy<Value = (serde_json::Value, String)> {
        use proptest::prelude::*;
        use serde_json::json;
        let text = "[a-z \"\\\\\n\t\u{e9}\u{4e2d}\u{1F600}/]{0,8}";
        let n = 0i64..100_000;
        prop_oneof![
            (text, 0..3u8).prop_map(|(t, i)| (json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                "model": "gpt-4o-mini", "choices": [{"index": i, "delta": {"content": t}, "logprobs": null,
                "finish_reason": null}]}), t)),
            text.prop_map(|t| (json!({"id": "cmpl-1", "choices": [{"text": t, "index": 0, "finish_reason": null}]}), t)),
            text.prop_map(|t| (json!({"type": "response.output_text.delta", "item_id": "msg_1",
                "output_index": 0, "delta": t}), t)),
            Just((json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}), String::new())),
            Just((json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}), String::new())),
            (n.clone(), n.clone(), n.clone()).prop_map(|(i, o, c)| (json!({"choices": [], "usage": {
                "prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o,
                "prompt_tokens_details": {"cached_tokens": c}}}), String::new())),
            (n.clone(), n).prop_map(|(i, o)| (json!({"type": "response.completed", "response": {
                "model": "gpt-4o", "usage": {"input_tokens": i, "output_tokens": o}}}), String::new())),
        ]
    }

    fn tap_all(stream: &[u8], frame: usize) -> (SseTap, Vec<u8>) {
        let mut tap = SseTap::new(false);
        let mut out = Vec::new();
        for piece in stream.chunks(frame) {
            out.extend_from_slice(&tap.push(Bytes::copy_from_slice(piece)));
        }
        out.extend_from_slice(&tap.finish());
        (tap, out)
    }

    proptest::proptest! {
        /// However an upstream spaces, orders and escapes its chunks, the tap
        /// counts the same text and reads the same usage as from the compact
        /// form; and the compact form's count is the text that was generated.
        #[test]
        fn spacing_order_and_escapes_do_not_change_what_is_counted(
            chunks in proptest::collection::vec(chunk(), 1..8),
            seed in 1u64..,
            frame in 1usize..300,
            cut in proptest::bool::ANY,
        ) {
            let mut spelling = Spelling(seed);
            let mut compact = String::new();
            let mut spelled = String::new();
            for (chunk, _) in &chunks {
                compact.push_str(&format!("data: {chunk}\n\n"));
                spelled.push_str(&spelling.event(chunk));
            }
            if !cut {
                compact.push_str("data: [DONE]\n\n");
                spelled.push_str("data: [DONE]\n\n");
            }
            let (want, _) = tap_all(compact.as_bytes(), compact.len());
            let generated: Vec<&String> =
                chunks.iter().map(|(_, t)| t).filter(|t| !t.is_empty()).collect();
            proptest::prop_assert_eq!(want.text_events, generated.len() as i64);
            proptest::prop_assert_eq!(
                want.text_bytes,
                generated.iter().map(|t| t.len() as i64).sum::<i64>()
            );
            let (got, out) = tap_all(spelled.as_bytes(), frame);
            proptest::prop_assert_eq!(got.text_events, want.text_events, "{}", spelled);
            proptest::prop_assert_eq!(got.text_bytes, want.text_bytes, "{}", spelled);
            proptest::prop_assert_eq!(got.usage, want.usage, "{}", spelled);
            proptest::prop_assert_eq!(out, spelled.as_bytes());
        }
    }
}
