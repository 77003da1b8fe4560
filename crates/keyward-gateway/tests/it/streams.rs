//! Streams as real upstreams send them: the simulated upstream writes each SSE
//! event as its own chunk, optionally paced; keyward meters such streams exactly
//! (cut off by the client or by the upstream included), hides the usage chunk it
//! asked for however its bytes are split, and forwards each event without
//! waiting for the next.
//!
//! The upstreams whose byte boundaries matter are hand-written HTTP/1.1 servers
//! on a socket ([`scripted_upstream`]); the client that counts chunks reads the
//! chunked encoding itself ([`raw_chunks`]). No test has a time limit: a pace is
//! checked by a lower bound on the spread only.

use crate::support::*;
use futures_util::StreamExt;
use keyward_gateway::upstream::simulated::{self, SimulatorOptions};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The simulated upstream on a port-0 socket.
async fn simulator(options: SimulatorOptions) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(simulated::serve(listener, options));
    addr
}

fn paced(tokens_per_second: Option<f64>, output_tokens: usize) -> SimulatorOptions {
    SimulatorOptions::new(tokens_per_second, Some(output_tokens)).unwrap()
}

/// POSTs `body` to `addr` over a bare socket and reads the chunked answer
/// frame by frame: each chunk's data with the time its last byte arrived.
async fn raw_chunks(addr: SocketAddr, path: &str, body: &Value) -> Vec<(Instant, String)> {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(socket);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).await.unwrap() > 0, "{head}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("x-keyward-simulated: true"), "{head}");
    let mut chunks = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).await.unwrap();
        let size = usize::from_str_radix(size.trim_end(), 16).unwrap();
        let mut data = vec![0; size + 2];
        reader.read_exact(&mut data).await.unwrap();
        assert_eq!(&data[size..], b"\r\n");
        if size == 0 {
            return chunks;
        }
        data.truncate(size);
        chunks.push((Instant::now(), String::from_utf8(data).unwrap()));
    }
}

/// The event without the stamp a paced simulator puts first (`: sent_us=…`).
fn unstamped(chunk: &str) -> &str {
    match chunk.strip_prefix(": sent_us=") {
        Some(rest) => rest.split_once('\n').map_or(rest, |(_, event)| event),
        None => chunk,
    }
}

/// True when `chunk` is exactly one SSE event (after a paced stream's stamp).
fn one_event(chunk: &str) -> bool {
    let chunk = unstamped(chunk);
    chunk.starts_with("data: ")
        && chunk.ends_with("\n\n")
        && chunk.matches("\n\n").count() == 1
        && chunk.matches("data: ").count() == 1
}

#[tokio::test]
async fn the_simulator_sends_each_event_as_its_own_chunk() {
    let addr = simulator(paced(None, 30)).await;
    let chunks = raw_chunks(
        addr,
        "/v1/chat/completions",
        &json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "hello"}]}),
    )
    .await;
    // The role chunk, 30 tokens, the finish chunk, the usage chunk, [DONE].
    assert_eq!(chunks.len(), 34, "{chunks:#?}");
    for (_, c) in &chunks {
        assert!(one_event(c), "a chunk holds one whole event: {c:?}");
        assert!(
            c == "data: [DONE]\n\n" || c.contains("\"system_fingerprint\":\"keyward-simulated\""),
            "{c}"
        );
    }
    assert!(
        chunks[32].1.contains("\"completion_tokens\":30"),
        "{}",
        chunks[32].1
    );
    assert_eq!(chunks[33].1, "data: [DONE]\n\n");

    // Text completions too: a token per chunk, the finish chunk, [DONE].
    let chunks = raw_chunks(
        addr,
        "/v1/completions",
        &json!({"model": "gpt-3.5-turbo-instruct", "stream": true, "prompt": "hello", "max_tokens": 5}),
    )
    .await;
    assert_eq!(chunks.len(), 7, "{chunks:#?}");
    assert!(chunks.iter().all(|(_, c)| one_event(c)), "{chunks:#?}");
    assert!(chunks[5].1.contains("\"finish_reason\":\"length\""));
}

#[tokio::test]
async fn a_paced_simulator_spaces_its_events_in_time() {
    let rate = 100.0;
    let addr = simulator(paced(Some(rate), 20)).await;
    let chunks = raw_chunks(
        addr,
        "/v1/chat/completions",
        &json!({"model": "gpt-4o-mini", "stream": true}),
    )
    .await;
    // The role chunk, 20 tokens, the finish chunk, [DONE]: 22 gaps of 1/rate.
    assert_eq!(chunks.len(), 23);
    assert!(chunks.iter().all(|(_, c)| one_event(c)), "{chunks:#?}");
    // Each says when it was written (for the benchmark's delay measurement).
    let stamps: Vec<u128> = chunks
        .iter()
        .map(|(_, c)| {
            let stamp = c
                .strip_prefix(": sent_us=")
                .unwrap()
                .split('\n')
                .next()
                .unwrap();
            stamp.parse().unwrap()
        })
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    let spread = chunks[22].0 - chunks[0].0;
    let expected = Duration::from_secs_f64(22.0 / rate);
    assert!(
        spread >= expected / 2,
        "events arrive spread over {spread:?}, paced for {expected:?}"
    );
    // Spaced all along, not in a burst after a wait: each half takes its share.
    let first_half = chunks[11].0 - chunks[0].0;
    assert!(
        first_half >= expected / 4,
        "the first half arrives over {first_half:?}"
    );
}

#[tokio::test]
async fn a_plain_simulated_answer_has_the_streams_text_and_usage() {
    let addr = simulator(paced(Some(1_000.0), 40)).await;
    for (max, tokens, finish) in [(None, 40, "stop"), (Some(7), 7, "length")] {
        let mut body =
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}]});
        if let Some(max) = max {
            body["max_tokens"] = json!(max);
        }
        let r = reqwest::Client::new()
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-keyward-simulated"], "true");
        let plain: Value = r.json().await.unwrap();
        assert_eq!(plain["system_fingerprint"], "keyward-simulated");
        assert_eq!(plain["usage"]["completion_tokens"], tokens);
        assert_eq!(plain["choices"][0]["finish_reason"], finish);
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let events: Vec<Value> = raw_chunks(addr, "/v1/chat/completions", &body)
            .await
            .iter()
            .filter_map(|(_, c)| {
                serde_json::from_str(unstamped(c).strip_prefix("data: ")?.trim_end()).ok()
            })
            .collect();
        let streamed: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        let text = plain["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(streamed, text);
        assert_eq!(text.split(' ').count(), tokens, "a word per token: {text}");
        assert!(text.starts_with("This is a simulated response"), "{text}");
        let usage = events.iter().find(|e| e["usage"].is_object()).unwrap();
        assert_eq!(usage["usage"], plain["usage"]);
    }
}

#[test]
fn simulator_options_out_of_range_are_refused() {
    for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 100_000.5, 1e9] {
        assert!(
            SimulatorOptions::new(Some(rate), None).is_err(),
            "{rate} tokens per second"
        );
    }
    for n in [0, 100_001, usize::MAX] {
        assert!(SimulatorOptions::new(None, Some(n)).is_err(), "{n} tokens");
    }
    assert!(SimulatorOptions::new(Some(100_000.0), Some(100_000)).is_ok());
    assert!(SimulatorOptions::new(Some(0.5), Some(1)).is_ok());
}

/// The usage the simulator reports for `body`, asked directly.
async fn simulator_usage(addr: SocketAddr, body: &Value) -> (i64, i64) {
    let mut body = body.clone();
    body["stream_options"] = json!({"include_usage": true});
    let chunks = raw_chunks(addr, "/v1/chat/completions", &body).await;
    let usage = chunks
        .iter()
        .find_map(|(_, c)| {
            let v: Value =
                serde_json::from_str(unstamped(c).strip_prefix("data: ")?.trim_end()).ok()?;
            v.get("usage").cloned()
        })
        .unwrap();
    (
        usage["prompt_tokens"].as_i64().unwrap(),
        usage["completion_tokens"].as_i64().unwrap(),
    )
}

/// A stream from a simulator with `options` through keyward, the client not
/// asking for usage: what keyward records is what the simulator reported.
async fn metered_exactly(options: SimulatorOptions, tokens: usize) {
    let addr = simulator(options).await;
    let kw = Keyward::start(&format!("http://{addr}/v1")).await;
    let (id, key) = kw.create_key("app", "k1").await;
    let body = json!({"model": "gpt-4o-mini", "stream": true,
                      "messages": [{"role": "user", "content": "tell me something long"}]});
    let r = kw.chat(&key, body.clone()).await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    let mut frames = 0;
    while let Some(frame) = stream.next().await {
        text.push_str(std::str::from_utf8(&frame.unwrap()).unwrap());
        frames += 1;
    }
    assert!(
        !text.contains("\"usage\""),
        "the usage chunk is hidden: {text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
    let events = text.matches("data: ").count();
    assert_eq!(events, tokens + 3, "every event reaches the client: {text}");
    assert!(frames > 1, "forwarded as a stream, not one body");
    let (prompt, completion) = simulator_usage(addr, &body).await;
    assert_eq!(completion, tokens as i64);
    let u = kw.usage_of(&id).await;
    assert_eq!(u["requests"], 1);
    assert_eq!(u["input_tokens"], prompt, "{u}");
    assert_eq!(u["output_tokens"], completion, "{u}");
    assert_eq!(u["cost_micros"], mini_cost(prompt, completion), "{u}");
    assert_eq!(u["incomplete"], 0, "the simulator reported usage: {u}");
}

#[tokio::test]
async fn a_chunked_simulated_stream_is_metered_exactly() {
    metered_exactly(paced(None, 200), 200).await;
}

#[tokio::test]
async fn a_paced_simulated_stream_is_metered_exactly() {
    metered_exactly(paced(Some(200.0), 40), 40).await;
}

/// The complete events of `text` with some content: one token each.
fn tokens_in(text: &str) -> i64 {
    let complete = &text[..text.rfind("\n\n").map_or(0, |i| i + 2)];
    complete
        .split("\n\n")
        .filter_map(|e| serde_json::from_str::<Value>(unstamped(e).strip_prefix("data: ")?).ok())
        .filter(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .count() as i64
}

#[tokio::test]
async fn a_simulated_stream_the_client_drops_mid_way_is_charged_for_what_was_seen_and_marked_incomplete(
) {
    let addr = simulator(paced(Some(50.0), 1_000)).await;
    let kw = Keyward::start(&format!("http://{addr}/v1")).await;
    let (id, key) = kw.create_key("app", "k1").await;
    let r = kw
        .chat(
            &key,
            json!({"model": "gpt-4o-mini", "stream": true,
                   "messages": [{"role": "user", "content": "tell me something long"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    while tokens_in(&text) < 5 {
        text.push_str(std::str::from_utf8(&stream.next().await.unwrap().unwrap()).unwrap());
    }
    let seen = tokens_in(&text);
    drop(stream);
    let u = kw.usage_once(&id, 1).await;
    let output = u["output_tokens"].as_i64().unwrap();
    assert!(
        output >= seen && output < 1_000,
        "charged for what passed, not the whole reply: {seen} seen, {u}"
    );
    assert!(u["input_tokens"].as_i64().unwrap() > 0, "{u}");
    assert_eq!(u["incomplete"], 1, "the charge is an estimate: {u}");
    let event = kw.latest_usage_event().await;
    assert!(event.incomplete && event.streamed);
}

/// What a [`scripted_upstream`] does after reading the request.
enum Step {
    /// Write these bytes (one `write_all`, no delay: `TCP_NODELAY`).
    Write(Vec<u8>),
    /// Wait until the test says so.
    WaitFor(tokio::sync::oneshot::Receiver<()>),
}

/// A bare HTTP/1.1 upstream that takes one request, hands its JSON body to the
/// test and plays `script` on the socket, then closes it.
async fn scripted_upstream(script: Vec<Step>) -> (String, tokio::sync::oneshot::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        socket.set_nodelay(true).unwrap();
        let mut reader = BufReader::new(socket);
        let mut len = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).await.unwrap();
        let _ = seen_tx.send(serde_json::from_slice(&body).unwrap());
        let mut socket = reader.into_inner();
        for step in script {
            match step {
                Step::Write(bytes) => {
                    if socket.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Step::WaitFor(go) => {
                    let _ = go.await;
                }
            }
        }
    });
    (format!("http://{addr}/v1"), seen)
}

const STREAM_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
const LAST_CHUNK: &str = "0\r\n\r\n";

/// One HTTP chunk holding `data`.
fn http_chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

fn content_event(text: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
    )
}

const FINISH_EVENT: &str = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
const USAGE_EVENT: &str = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13}}\n\n";

/// Reads `stream` into `text` until it holds `wanted`.
async fn read_until(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    text: &mut String,
    wanted: &str,
) {
    while !text.contains(wanted) {
        let frame = stream
            .next()
            .await
            .unwrap_or_else(|| panic!("the stream ended before {wanted:?}: {text}"))
            .unwrap();
        text.push_str(std::str::from_utf8(&frame).unwrap());
    }
}

/// The usage event keyward asked for arrives in two TCP reads: the first half
/// is written, and the rest only after the client has received the event before
/// it. With `own_chunks`, each half is its own HTTP chunk; without, one HTTP
/// chunk's bytes are split.
async fn usage_split_across_reads_is_hidden(own_chunks: bool) {
    let (go, wait) = tokio::sync::oneshot::channel();
    // Split in the middle of the word "usage".
    let cut = USAGE_EVENT.find("sage").unwrap();
    let (first, rest) = USAGE_EVENT.split_at(cut);
    let (first_write, second_write) = if own_chunks {
        (
            format!("{}{}", http_chunk(FINISH_EVENT), http_chunk(first)),
            format!(
                "{}{}{LAST_CHUNK}",
                http_chunk(rest),
                http_chunk("data: [DONE]\n\n")
            ),
        )
    } else {
        (
            format!(
                "{}{:x}\r\n{first}",
                http_chunk(FINISH_EVENT),
                USAGE_EVENT.len()
            ),
            format!("{rest}\r\n{}{LAST_CHUNK}", http_chunk("data: [DONE]\n\n")),
        )
    };
    let mut head = String::from(STREAM_HEAD);
    for t in ["Hel", "lo", " wor", "ld"] {
        head.push_str(&http_chunk(&content_event(t)));
    }
    let (upstream, seen) = scripted_upstream(vec![
        Step::Write(head.into_bytes()),
        Step::Write(first_write.into_bytes()),
        Step::WaitFor(wait),
        Step::Write(second_write.into_bytes()),
    ])
    .await;
    let kw = Keyward::start(&upstream).await;
    let (id, key) = kw.create_key("app", "k1").await;
    let r = kw
        .chat(
            &key,
            json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        seen.await.unwrap()["stream_options"]["include_usage"],
        true,
        "keyward asks the upstream for usage"
    );
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    read_until(&mut stream, &mut text, "\"finish_reason\":\"stop\"").await;
    go.send(()).unwrap();
    read_until(&mut stream, &mut text, "data: [DONE]\n\n").await;
    assert!(stream.next().await.is_none(), "{text}");
    assert!(
        !text.contains("usage") && !text.contains("sage") && !text.contains("prompt_tokens"),
        "no piece of the usage chunk reaches the client: {text}"
    );
    assert!(
        text.ends_with(&format!("{FINISH_EVENT}data: [DONE]\n\n")),
        "{text}"
    );
    let u = kw.usage_of(&id).await;
    assert_eq!(u["input_tokens"], 9, "{u}");
    assert_eq!(u["output_tokens"], 4, "{u}");
    assert_eq!(u["cost_micros"], mini_cost(9, 4), "{u}");
    assert_eq!(u["incomplete"], 0, "the split usage was read: {u}");
}

#[tokio::test]
async fn the_injected_usage_chunk_is_hidden_when_split_across_two_http_chunks_and_tcp_reads() {
    usage_split_across_reads_is_hidden(true).await;
}

#[tokio::test]
async fn the_injected_usage_chunk_is_hidden_when_one_http_chunk_is_split_across_tcp_reads() {
    usage_split_across_reads_is_hidden(false).await;
}

#[tokio::test]
async fn an_event_reaches_the_client_before_the_upstream_sends_the_next() {
    let (go, wait) = tokio::sync::oneshot::channel();
    let mut rest = String::new();
    for e in [
        content_event(" world"),
        FINISH_EVENT.to_owned(),
        USAGE_EVENT.to_owned(),
        "data: [DONE]\n\n".to_owned(),
    ] {
        rest.push_str(&http_chunk(&e));
    }
    rest.push_str(LAST_CHUNK);
    let (upstream, _) = scripted_upstream(vec![
        Step::Write(format!("{STREAM_HEAD}{}", http_chunk(&content_event("Hello"))).into_bytes()),
        // The upstream goes on only once the client holds the first event.
        Step::WaitFor(wait),
        Step::Write(rest.into_bytes()),
    ])
    .await;
    let kw = Keyward::start(&upstream).await;
    let (id, key) = kw.create_key("app", "k1").await;
    let r = kw
        .chat(&key, json!({"model": "gpt-4o-mini", "stream": true}))
        .await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    read_until(&mut stream, &mut text, &content_event("Hello")).await;
    assert!(!text.contains("world"), "{text}");
    go.send(()).unwrap();
    read_until(&mut stream, &mut text, "data: [DONE]\n\n").await;
    assert!(text.contains(&content_event(" world")), "{text}");
    assert!(!text.contains("usage"), "{text}");
    let u = kw.usage_of(&id).await;
    assert_eq!(
        (u["input_tokens"].as_i64(), u["output_tokens"].as_i64()),
        (Some(9), Some(4)),
        "{u}"
    );
    assert_eq!(u["incomplete"], 0, "{u}");
}

#[tokio::test]
async fn a_stream_whose_upstream_closes_the_connection_mid_way_is_charged_for_what_was_seen() {
    let mut script = String::from(STREAM_HEAD);
    for t in ["one", " two", " three"] {
        script.push_str(&http_chunk(&content_event(t)));
    }
    // No last chunk: the upstream closes the connection mid-stream.
    let (upstream, _) = scripted_upstream(vec![Step::Write(script.into_bytes())]).await;
    let kw = Keyward::start(&upstream).await;
    let (id, key) = kw.create_key("app", "k1").await;
    let r = kw
        .chat(
            &key,
            json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "count"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    let mut broken = false;
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(bytes) => text.push_str(std::str::from_utf8(&bytes).unwrap()),
            Err(_) => broken = true,
        }
    }
    assert!(
        broken,
        "the client sees a broken stream, not a clean end: {text}"
    );
    assert!(text.contains("three") && !text.contains("[DONE]"), "{text}");
    let u = kw.usage_of(&id).await;
    assert_eq!(u["requests"], 1);
    assert_eq!(u["output_tokens"], 3, "one token per chunk seen: {u}");
    assert!(u["input_tokens"].as_i64().unwrap() > 0, "{u}");
    assert_eq!(u["incomplete"], 1, "the charge is an estimate: {u}");
    let event = kw.latest_usage_event().await;
    assert!(event.incomplete && event.streamed);
}
