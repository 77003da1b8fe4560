//! `keyward health`, the container image's HEALTHCHECK: 0 only when the server
//! answers /healthz with 200, 1 with the reason otherwise.

use crate::support::{keyward, ServeProcess};
use std::io::{Read, Write};
use std::net::TcpListener;

#[test]
fn health_is_0_against_a_served_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    let by_flag = keyward()
        .args(["health", "--url", &server.url])
        .env_remove("KEYWARD_URL")
        .output()
        .unwrap();
    assert_eq!(
        by_flag.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&by_flag.stderr)
    );
    // The image sets KEYWARD_URL rather than passing --url.
    let by_env = keyward()
        .arg("health")
        .env("KEYWARD_URL", format!("{}/", server.url))
        .output()
        .unwrap();
    assert_eq!(by_env.status.code(), Some(0));
}

#[test]
fn health_is_1_with_the_reason_when_nothing_listens() {
    // A port that was free a moment ago and is closed now.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = keyward()
        .args(["health", "--url", &format!("http://{addr}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach") && stderr.contains(&addr.to_string()),
        "{stderr}"
    );
}

/// A server that answers every connection with `status_line` and no body.
fn answering(status_line: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 {status_line}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    url
}

#[test]
fn health_is_1_when_the_server_answers_503() {
    let url = answering("503 Service Unavailable");
    let out = keyward().args(["health", "--url", &url]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("503"));
}

#[test]
fn health_never_prints_credentials_from_the_url() {
    let url = answering("500 Internal Server Error");
    let with_password = url.replace("http://", "http://ops:hunter2-secret@");
    let out = keyward()
        .args(["health", "--url", &with_password])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("500"), "{all}");
    assert!(!all.contains("hunter2") && !all.contains("ops:"), "{all}");
}

#[test]
fn health_with_a_url_that_is_not_one_is_a_usage_error() {
    let out = keyward()
        .args(["health", "--url", "not a url"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEYWARD_URL"));
}
