//! Watching a server-sent-events stream on its way to the client.
//!
//! The tap forwards complete events as soon as they are complete (an event is of no
//! use to a client before its blank line arrives, so this adds no latency), reads
//! usage from whichever event carries it, and drops the usage-only chunk the
//! gateway asked for when the client did not.

use bytes::{Bytes, BytesMut};
use keyward_core::TokenUsage;
use memchr::memmem::Finder;
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
    /// Bytes of generated text seen.
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
        if data.is_empty() || data == b"[DONE]" {
            return true;
        }
        if has_text(data) {
            self.text_events += 1;
            self.text_bytes += data.len() as i64;
        }
        if USAGE_FINDER.find(data).is_none() {
            return true;
        }
        let Some(found) = crate::metering::usage_parse::read(data) else {
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

/// The `data:` payload of an event (multi-line data joined is not needed for JSON
/// chunks, which OpenAI-compatible servers send on one line). Lines are found
/// with `memchr`: splitting on a byte predicate walked every byte of the chunk
/// and was the tap's largest cost.
fn event_data(event: &[u8]) -> &[u8] {
    let mut start = 0;
    while start < event.len() {
        let end = memchr::memchr(b'\n', &event[start..]).map_or(event.len(), |i| start + i);
        if let Some(rest) = event[start..end].strip_prefix(b"data:") {
            let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
            return rest.strip_prefix(b" ").unwrap_or(rest);
        }
        start = end + 1;
    }
    &[]
}

/// Whether a chunk carries generated text (chat `content`, completions `text`,
/// Responses `delta`).
fn has_text(data: &[u8]) -> bool {
    TEXT_FINDERS.iter().any(|finder| {
        let len = finder.needle().len();
        finder
            .find_iter(data)
            .any(|i| data.get(i + len) != Some(&b'"'))
    })
}

/// Searchers built once: building one per event (what `memmem::find` does)
/// cost more than the search itself on these short events. (Measured on a
/// 200-byte chunk: these searches take about 55 ns; a byte loop testing every
/// quote, 290-400 ns.)
static TEXT_FINDERS: LazyLock<[Finder<'static>; 3]> = LazyLock::new(|| {
    [
        Finder::new(b"\"content\":\""),
        Finder::new(b"\"text\":\""),
        Finder::new(b"\"delta\":\""),
    ]
});
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
    fn event_data_is_the_first_data_line() {
        assert_eq!(
            event_data(b"event: x\r\ndata: {\"a\":1}\r\n\r\n"),
            b"{\"a\":1}"
        );
        assert_eq!(event_data(b"data:[DONE]\n\n"), b"[DONE]");
        assert_eq!(event_data(b": comment\n\n"), b"");
        assert_eq!(event_data(b"data: tail"), b"tail");
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
}
