//! The gateway's own HTTP/1.1 client (`upstream::wire`) against upstreams that
//! answer in the less common ways HTTP/1.1 allows, and in ways it does not: a
//! raw socket writes each answer byte for byte.

use crate::support::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream that answers the n-th request it reads (on any connection) with
/// `answers[n]` and closes the connection after it when `close` is set. Returns
/// its base URL and the count of connections it accepted.
async fn scripted_upstream(answers: Vec<String>, close: bool) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let (count, next) = (connections.clone(), Arc::new(AtomicUsize::new(0)));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (answers, next) = (answers.clone(), next.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // Requests here have no body (GET).
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let answer = answers.get(n).or(answers.last()).unwrap();
                    if socket.write_all(answer.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/v1"), connections)
}

/// `GET /v1/models` through keyward `times` times: each status and body.
async fn get_models(base: &str, times: usize) -> Vec<(u16, String)> {
    let kw = Keyward::start(base).await;
    let (_, key) = kw.create_key("app", "k1").await;
    let mut out = Vec::new();
    for _ in 0..times {
        let r = kw.models(&key).await;
        out.push((r.status().as_u16(), r.text().await.unwrap()));
    }
    out
}

const LIST: &str = r#"{"object":"list","data":[]}"#;

#[tokio::test]
async fn informational_answers_and_trailers_are_read_past_and_the_connection_reused() {
    let answer = format!(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n\
         HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
         5;ext=1\r\n{}\r\n{:x}\r\n{}\r\n0\r\nx-trailer: t\r\n\r\n",
        &LIST[..5],
        LIST.len() - 5,
        &LIST[5..]
    );
    let (base, connections) = scripted_upstream(vec![answer], false).await;
    let got = get_models(&base, 3).await;
    assert!(got.iter().all(|(s, b)| *s == 200 && b == LIST), "{got:?}");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_delimited_by_close_is_forwarded_whole_and_its_connection_not_reused() {
    let answer = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{LIST}");
    let (base, connections) = scripted_upstream(vec![answer], true).await;
    let got = get_models(&base, 2).await;
    assert!(got.iter().all(|(s, b)| *s == 200 && b == LIST), "{got:?}");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

/// Response splitting: an upstream (or whoever sits between) sends a second,
/// unasked response after the first one's body. Were the connection reused,
/// the next client's request would get it.
#[tokio::test]
async fn response_smuggled_after_a_body_never_reaches_the_next_request() {
    let genuine = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{LIST}",
        LIST.len()
    );
    let smuggled = format!(
        "{genuine}HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 8\r\n\r\nSMUGGLED"
    );
    let (base, _) = scripted_upstream(vec![smuggled, genuine], false).await;
    let got = get_models(&base, 2).await;
    assert_eq!(got[0], (200, LIST.to_owned()));
    assert_eq!(
        got[1],
        (200, LIST.to_owned()),
        "the second request got {got:?}"
    );
}

/// Request smuggling's response side: two lengths that disagree are refused
/// (which one a proxy believes decides where the next message starts).
#[tokio::test]
async fn conflicting_content_lengths_are_a_502_not_a_guess() {
    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                  content-length: 5\r\ncontent-length: 27\r\n\r\n{\"object\":\"list\",\"data\":[]}";
    let (base, _) = scripted_upstream(vec![answer.to_owned()], false).await;
    let got = get_models(&base, 1).await;
    assert_eq!(got[0].0, 502, "{got:?}");
    assert!(!got[0].1.contains("object"), "{got:?}");
}

/// A body cut short by the upstream ends the client's response as broken, not
/// as a complete (shorter) answer.
#[tokio::test]
async fn a_body_cut_short_by_the_upstream_is_not_passed_off_as_complete() {
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        LIST.len() + 10,
        LIST
    );
    let (base, _) = scripted_upstream(vec![answer], true).await;
    let kw = Keyward::start(&base).await;
    let (_, key) = kw.create_key("app", "k1").await;
    let r = kw.models(&key).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.is_err(), "a truncated body read as complete");
}
