//! Metering: exact usage for plain and streamed calls, the usage chunk handled as
//! the client asked, and cut-off streams charged for what was produced.

use crate::support::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

fn expected_cost(requests: i64) -> i64 {
    // gpt-4o-mini: (11-3) * 0.15 + 3 * 0.075 + 7 * 0.60 micro-dollars per request,
    // rounded up per request: 1.2 + 0.225 + 4.2 = 5.625 -> 6.
    requests * 6
}

#[tokio::test]
async fn usage_totals_are_exact_for_plain_and_streamed_calls() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (id, key) = kw.create_key("app", "k1").await;
    let msgs = json!([{"role": "user", "content": "hello"}]);

    // Plain.
    for _ in 0..3 {
        let r = kw
            .chat(&key, json!({"model": "gpt-4o-mini", "messages": msgs}))
            .await;
        assert_eq!(r.status(), 200);
    }
    // Streamed without include_usage: the gateway asks for usage and hides the chunk.
    let r = kw
        .chat(
            &key,
            json!({"model": "gpt-4o-mini", "messages": msgs, "stream": true}),
        )
        .await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("\"usage\""),
        "the client did not ask for usage: {text}"
    );
    assert!(text.contains("Hel") && text.ends_with("data: [DONE]\n\n"));
    let seen = up.seen();
    assert_eq!(
        seen.last().unwrap().body["stream_options"]["include_usage"],
        true,
        "the upstream is asked for usage"
    );
    // Streamed with include_usage: the client gets its usage chunk.
    let r = kw
        .chat(&key, json!({"model": "gpt-4o-mini", "messages": msgs, "stream": true, "stream_options": {"include_usage": true}}))
        .await;
    let text = r.text().await.unwrap();
    assert!(text.contains("\"usage\""), "{text}");

    let u = kw.usage_of(&id).await;
    assert_eq!(u["requests"], 5);
    assert_eq!(u["input_tokens"], 5 * PROMPT_TOKENS);
    assert_eq!(u["cached_input_tokens"], 5 * CACHED_TOKENS);
    assert_eq!(u["output_tokens"], 5 * COMPLETION_TOKENS);
    assert_eq!(u["cost_micros"], expected_cost(5));
    assert_eq!(u["incomplete"], 0, "every usage was reported");
}

#[tokio::test]
async fn usage_is_per_key_and_per_project() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (a, ka) = kw.create_key("alpha", "a").await;
    let (b, kb) = kw.create_key("beta", "b").await;
    for _ in 0..2 {
        kw.chat(&ka, json!({"model": "gpt-4o-mini"}))
            .await
            .text()
            .await
            .unwrap();
    }
    kw.chat(&kb, json!({"model": "gpt-4o-mini"}))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(kw.usage_of(&a).await["requests"], 2);
    assert_eq!(kw.usage_of(&b).await["requests"], 1);
    let p: Value = kw
        .admin_get("/api/v1/usage?project=alpha&bucket=hour")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(p["requests"], 2);
    assert_eq!(p["buckets"].as_array().unwrap().len(), 1);
    assert_eq!(p["buckets"][0]["requests"], 2);
    let all: Value = kw
        .admin_get("/api/v1/usage?bucket=day")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["requests"], 3);
}

#[tokio::test]
async fn client_hang_up_mid_stream_ends_the_upstream_request_and_is_charged() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (id, key) = kw.create_key("app", "k1").await;
    let r = kw
        .chat(&key, json!({"model": "endless", "stream": true}))
        .await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut received = 0;
    while received < 3 {
        let chunk = stream.next().await.unwrap().unwrap();
        received += chunk.windows(5).filter(|w| w == b"data:").count();
    }
    let dropped = up.log.dropped.notified();
    drop(stream);
    if !up
        .log
        .stream_dropped
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        // Bounded wait so a regression fails instead of hanging the suite.
        tokio::time::timeout(std::time::Duration::from_secs(30), dropped)
            .await
            .expect("the upstream stream must end when the client hangs up");
    }
    let u = kw.usage_of(&id).await;
    assert_eq!(u["requests"], 1);
    assert!(
        u["output_tokens"].as_i64().unwrap() >= 3,
        "what was produced is charged: {u}"
    );
    let event = kw.latest_usage_event().await;
    assert!(event.incomplete && event.streamed);
}

#[tokio::test]
async fn upstream_cut_off_is_charged_for_what_was_produced() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (id, key) = kw.create_key("app", "k1").await;
    let r = kw
        .chat(&key, json!({"model": "cutoff", "stream": true}))
        .await;
    assert_eq!(r.status(), 200);
    // The client sees a broken stream, not a clean end.
    assert!(r.text().await.is_err());
    let u = kw.usage_of(&id).await;
    assert_eq!(u["output_tokens"], 3);
    assert!(u["input_tokens"].as_i64().unwrap() > 0);
    assert_eq!(u["incomplete"], 1);
    // Each bucket and group says how many of its requests are estimates.
    for query in [
        "bucket=hour",
        "bucket=day",
        "group_by=key",
        "group_by=model",
    ] {
        let r = kw
            .admin_get(&format!("/api/v1/usage?key={id}&{query}"))
            .await;
        let v: Value = r.json().await.unwrap();
        let series = v["buckets"].as_array().or(v["groups"].as_array()).unwrap();
        assert_eq!(series.len(), 1, "{query}: {v}");
        assert_eq!(series[0]["incomplete"], 1, "{query}: {v}");
    }
}

/// An upstream that streams chunks written as JSON allows but not as OpenAI
/// writes them (spaces after colons, members reordered, escapes, a payload on
/// several `data:` lines), then breaks the connection before any usage.
async fn spaced_cutoff_upstream() -> String {
    use axum::body::{Body, Bytes};
    use axum::response::IntoResponse;
    const CHUNKS: [&str; 5] = [
        "data: {\"id\": \"c1\", \"choices\": [{\"index\": 0, \"delta\": {\"role\": \"assistant\", \"content\": \"\"}}]}\n\n",
        "data: {\"id\": \"c1\", \"choices\": [{\"index\": 0, \"delta\": {\"content\": \"Hel\"}}]}\n\n",
        "data: { \"choices\" : [ { \"delta\" : { \"content\" :\t\"lo\" } , \"index\" : 0 } ] , \"id\" : \"c1\" }\n\n",
        "data: {\"choices\": [{\"delta\": {\"\\u0063ontent\": \"caf\\u00e9 \\\"\"}}]}\n\n",
        "data: {\"choices\": [\ndata:   {\"delta\": {\"content\":\ndata:  \"!\"}}]}\n\n",
    ];
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            let s = futures_util::stream::iter(CHUNKS.iter().map(|c| Ok(Bytes::from(*c)))).chain(
                futures_util::stream::once(async {
                    // After the chunks have surely been flushed.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    Err(std::io::Error::other("upstream broke off"))
                }),
            );
            (
                [("content-type", "text/event-stream")],
                Body::from_stream(s),
            )
                .into_response()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn a_cut_off_stream_with_spaced_json_is_charged_for_every_text_chunk() {
    let upstream = spaced_cutoff_upstream().await;
    let kw = Keyward::start(&upstream).await;
    let (id, key) = kw.create_key("app", "k1").await;
    let r = kw
        .chat(&key, json!({"model": "gpt-4o-mini", "stream": true}))
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.is_err(), "the client sees a broken stream");
    let u = kw.usage_of(&id).await;
    assert_eq!(u["requests"], 1);
    assert_eq!(
        u["output_tokens"], 4,
        "one token per chunk with text, however it was spelled: {u}"
    );
    assert!(u["cost_micros"].as_i64().unwrap() > 0, "{u}");
    assert_eq!(u["incomplete"], 1, "the charge is an estimate: {u}");
    let event = kw.latest_usage_event().await;
    assert!(event.incomplete && event.streamed);
}

#[tokio::test]
async fn graceful_shutdown_writes_every_buffered_event() {
    let up = Upstream::start().await;
    let kw = Keyward::start_with(&up.base_url(), |c| {
        c.usage_batch.interval = std::time::Duration::from_secs(3600)
    })
    .await;
    let (id, key) = kw.create_key("app", "k1").await;
    for _ in 0..25 {
        assert_eq!(
            kw.chat(&key, json!({"model": "gpt-4o-mini"}))
                .await
                .status(),
            200
        );
    }
    let store = kw.state.store.clone();
    let id = keyward_core::KeyId::parse(&id).unwrap();
    let filter = keyward_store::UsageFilter {
        key: Some(id),
        ..Default::default()
    };
    assert_eq!(
        store.usage_totals(&filter).await.unwrap().requests,
        0,
        "events are still buffered"
    );
    kw.shutdown().await;
    assert_eq!(store.usage_totals(&filter).await.unwrap().requests, 25);
}

/// The dashboard groups usage by project too, from the hourly rollups: each
/// project's totals, and nothing of a project the filter leaves out.
#[tokio::test]
async fn usage_groups_by_project_and_the_groups_add_up_to_the_totals() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (_, key_a) = kw.create_key("app-a", "ka").await;
    let (_, key_b) = kw.create_key("app-b", "kb").await;
    let hi = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    for key in [&key_a, &key_a, &key_b] {
        assert_eq!(kw.chat(key, hi.clone()).await.status(), 200);
    }
    kw.state.usage.flush().await;
    let v: Value = kw
        .admin_get("/api/v1/usage?group_by=project")
        .await
        .json()
        .await
        .unwrap();
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{v}");
    let requests: Vec<i64> = groups
        .iter()
        .map(|g| g["requests"].as_i64().unwrap())
        .collect();
    assert_eq!(
        requests.iter().sum::<i64>(),
        v["requests"].as_i64().unwrap()
    );
    assert!(requests.contains(&2) && requests.contains(&1), "{v}");
    for g in groups {
        assert!(g["group"].as_str().unwrap().starts_with("prj_"), "{v}");
    }
    let r = kw.admin_get("/api/v1/usage?group_by=team").await;
    assert_eq!(r.status(), 400);
}

/// The dashboard's chart: each group's series (per bucket), named for people;
/// with `top`, the rest summed as one `(other)` series while `groups` lists
/// every group; series, groups, buckets and totals agree.
#[tokio::test]
async fn usage_series_per_group_add_up_and_top_sums_the_rest_as_other() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let mut keys = Vec::new();
    for (name, tags) in [
        ("alpha", json!(["team:a"])),
        ("beta", json!(["team:a", "team:b"])),
        ("gamma", json!([])),
    ] {
        let v = kw
            .create_key_with(json!({"name": name, "tags": tags}))
            .await;
        keys.push(v["key"].as_str().unwrap().to_owned());
    }
    let hi = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    for (i, key) in keys.iter().enumerate() {
        for _ in 0..=i {
            assert_eq!(kw.chat(key, hi.clone()).await.status(), 200);
        }
    }
    let v: Value = kw
        .admin_get("/api/v1/usage?bucket=hour&group_by=key&top=2")
        .await
        .json()
        .await
        .unwrap();
    // Every group is listed, named; the series are the top two and "(other)".
    let groups = v["groups"].as_array().unwrap();
    let names: Vec<&str> = groups
        .iter()
        .map(|g| g["name"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(names, ["gamma", "beta", "alpha"], "{v}");
    let series = v["series"].as_array().unwrap();
    let series_groups: Vec<&str> = series
        .iter()
        .map(|s| s["group"].as_str().unwrap())
        .collect();
    assert_eq!(
        series_groups[..2],
        [
            groups[0]["group"].as_str().unwrap(),
            groups[1]["group"].as_str().unwrap()
        ]
    );
    assert_eq!(series_groups[2], "(other)", "{v}");
    let requests = |s: &Value| -> i64 {
        s["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["requests"].as_i64().unwrap())
            .sum()
    };
    for (g, s) in groups.iter().zip(series).take(2) {
        assert_eq!(requests(s), g["requests"].as_i64().unwrap(), "{v}");
    }
    assert_eq!(requests(&series[2]), 1, "alpha's one request: {v}");
    let total: i64 = groups.iter().map(|g| g["requests"].as_i64().unwrap()).sum();
    assert_eq!(total, v["requests"].as_i64().unwrap());
    assert_eq!(total, 6);
    let buckets: i64 = v["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["requests"].as_i64().unwrap())
        .sum();
    assert_eq!(buckets, 6);

    // By tag: beta counts toward both of its tags, gamma is untagged.
    let v: Value = kw
        .admin_get("/api/v1/usage?bucket=day&group_by=tag")
        .await
        .json()
        .await
        .unwrap();
    let by_tag: Vec<(String, i64)> = v["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let n = s["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["requests"].as_i64().unwrap())
                .sum();
            (s["group"].as_str().unwrap().to_owned(), n)
        })
        .collect();
    let mut by_tag = by_tag;
    by_tag.sort();
    assert_eq!(
        by_tag,
        [
            ("(untagged)".into(), 3),
            ("team:a".into(), 3),
            ("team:b".into(), 2)
        ],
        "{v}"
    );
}
