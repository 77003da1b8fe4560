//! Watchers: keys planted in a watched directory and in an uploaded APK are
//! found with the scanner library and disabled.

use crate::leaks::key_status;
use crate::support::{Keyward, Upstream};
use keyward_gateway::config::WatchSource;
use keyward_gateway::leaks::watchers::scan_source;
use serde_json::Value;
use std::io::Write;

#[tokio::test]
async fn a_key_planted_in_a_watched_directory_is_disabled_once() {
    let upstream = Upstream::start().await;
    let kw = Keyward::start(&upstream.base_url()).await;
    let (id, key) = kw.create_key("app", "k").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("settings.py"),
        format!("DEBUG = True\nKEYWARD_KEY = \"{key}\"\n"),
    )
    .unwrap();
    let source = WatchSource {
        name: "repo".into(),
        path: dir.path().to_owned(),
        git: false,
    };
    let verdicts = scan_source(&kw.state, &source).await.unwrap();
    assert_eq!(verdicts.len(), 1);
    assert_eq!(key_status(&kw, &id).await, "leaked");
    let reports: Value = kw
        .admin_get(&format!("/api/v1/leaks?key={id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reports["data"][0]["source"], "watcher");
    assert!(reports["data"][0]["location"]
        .as_str()
        .unwrap()
        .ends_with("settings.py:2"));
    // The next round sees the same key again: nothing new is recorded.
    scan_source(&kw.state, &source).await.unwrap();
    let reports: Value = kw
        .admin_get(&format!("/api/v1/leaks?key={id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reports["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_key_inside_an_uploaded_apk_is_disabled() {
    let upstream = Upstream::start().await;
    let kw = Keyward::start(&upstream.base_url()).await;
    let (id, key) = kw.create_key("mobile", "android").await;
    let (other_id, _) = kw.create_key("mobile", "server").await;
    let mut apk = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    apk.start_file("AndroidManifest.xml", opts).unwrap();
    apk.write_all(b"<manifest/>").unwrap();
    apk.start_file("assets/config.json", opts).unwrap();
    apk.write_all(format!("{{\"api_key\": \"{key}\"}}").as_bytes())
        .unwrap();
    let bytes = apk.finish().unwrap().into_inner();
    let r = kw
        .http
        .post(format!(
            "{}/api/v1/scan-uploads?name=app-release.apk",
            kw.url
        ))
        .bearer_auth(&kw.admin_key)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"][0]["result"], "disabled");
    assert_eq!(v["data"][0]["key_id"], id);
    assert!(v["data"][0]["location"]
        .as_str()
        .unwrap()
        .contains("app-release.apk!/assets/config.json"));
    assert_eq!(key_status(&kw, &id).await, "leaked");
    assert_eq!(key_status(&kw, &other_id).await, "active");
    // Size limit.
    let big = vec![0u8; kw.state.config.leaks.watchers.max_upload_bytes + 1];
    let r = kw
        .http
        .post(format!("{}/api/v1/scan-uploads", kw.url))
        .bearer_auth(&kw.admin_key)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}
