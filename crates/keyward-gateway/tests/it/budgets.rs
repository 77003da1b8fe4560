//! Hard budgets: never exceeded under concurrency, output caps set when missing,
//! reservations released by failed and cut-off requests.

use crate::support::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

fn ask(model: &str, stream: bool, max_tokens: Option<i64>) -> Value {
    let mut body =
        json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream});
    if let Some(m) = max_tokens {
        body["max_tokens"] = json!(m);
    }
    body
}

/// A request's reservation at gpt-4o-mini prices: the input bound of `ask(…, 40)`
/// is 33 tokens ("gpt-4o-mini-metered" 19 + "user" 4 + "hi" 2 + the cap 1, + 7 of
/// framing) and 40 output tokens: 4.95 + 24 micro-dollars, rounded up.
const BOUND: i64 = 29;
/// What one metered request actually costs: 10 prompt + 40 completion tokens.
const ACTUAL: i64 = 26;

#[tokio::test]
async fn concurrent_burst_never_overshoots_and_the_budget_is_used_up() {
    let up = Upstream::start().await;
    let kw = Keyward::start_with(&up.base_url(), |c| c.max_body_bytes = 1 << 20).await;
    let created = kw.create_key_with(json!({})).await;
    let (id, key) = (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    );
    // Pays for 20 requests.
    let budget = 20 * ACTUAL;
    let r = kw
        .admin_put(
            "/api/v1/budgets",
            json!({"key": id, "usd": budget as f64 / 1e6, "period": "none"}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let burst: Vec<_> = (0..200)
        .map(|i| {
            let (http, url, key) = (kw.http.clone(), kw.url.clone(), key.clone());
            tokio::spawn(async move {
                let r = http
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&ask("gpt-4o-mini-metered", i % 2 == 0, Some(40)))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let body = r.text().await.unwrap();
                (status, body)
            })
        })
        .collect();
    let mut ok = 0;
    for t in burst {
        let (status, body) = t.await.unwrap();
        match status {
            200 => ok += 1,
            429 => assert!(
                body.contains("insufficient_quota") && body.contains("key budget"),
                "{body}"
            ),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let served: i64 = up
        .log
        .served
        .lock()
        .unwrap()
        .iter()
        .map(|(p, c)| mini_cost(*p, *c))
        .sum();
    assert!(served <= budget, "served {served} > budget {budget}");
    assert!(
        ok >= 15,
        "over-reservation refused most of the burst: only {ok} of ~20 served"
    );

    // After the burst, requests keep succeeding until the budget is used up.
    loop {
        let r = kw
            .chat(&key, ask("gpt-4o-mini-metered", false, Some(40)))
            .await;
        if r.status() == 429 {
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let served: i64 = up
        .log
        .served
        .lock()
        .unwrap()
        .iter()
        .map(|(p, c)| mini_cost(*p, *c))
        .sum();
    assert!(served <= budget, "served {served} > budget {budget}");
    assert!(
        budget - served < BOUND,
        "stopped early: {served} of {budget} spent"
    );
    let u = kw.usage_of(&id).await;
    assert_eq!(
        u["cost_micros"].as_i64().unwrap(),
        served,
        "metered spend equals what the upstream served"
    );
    assert_eq!(u["reserved_micros"], 0, "no reservation left open");
}

#[tokio::test]
async fn a_request_without_a_cap_runs_with_the_cap_the_budget_can_pay_for() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let created = kw
        .create_key_with(json!({"budget": {"usd": 0.0001, "period": "day"}}))
        .await;
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    let r = kw.chat(key, ask("gpt-4o-mini-greedy", false, None)).await;
    assert_eq!(r.status(), 200);
    let seen = up.seen();
    let cap = seen[0].body["max_completion_tokens"]
        .as_i64()
        .expect("the upstream sees a cap");
    // 100 micro-dollars, input bound 31 tokens ("gpt-4o-mini-greedy" 18 + "user" 4
    // + "hi" 2 + 7 of framing): (100 - 4.65) / 0.6 = 158 tokens.
    assert_eq!(cap, 158);
    let u = kw.usage_of(id).await;
    assert!(u["cost_micros"].as_i64().unwrap() <= 100, "{u}");
    // The budget is now (nearly) spent: the next request is refused, not clamped to zero.
    let r = kw.chat(key, ask("gpt-4o-mini-greedy", false, None)).await;
    let msg = assert_openai_error(r, 429, Some("insufficient_quota")).await;
    assert!(msg.contains("key budget"), "{msg}");
    assert_eq!(
        up.seen().len(),
        1,
        "a refused request never reaches the upstream"
    );
}

#[tokio::test]
async fn cut_off_streams_release_their_reservation_and_pay_for_what_was_produced() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let created = kw.create_key_with(json!({"budget": {"usd": 1.0}})).await;
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );

    // Cut off by the upstream.
    let r = kw.chat(key, json!({"model": "gpt-4o-mini-cutoff", "stream": true, "max_tokens": 10, "messages": []})).await;
    assert!(r.text().await.is_err());
    // Cut off by the client.
    let r = kw.chat(key, json!({"model": "gpt-4o-mini-endless", "stream": true, "max_tokens": 10, "messages": []})).await;
    let mut s = r.bytes_stream();
    s.next().await.unwrap().unwrap();
    let dropped = up.log.dropped.notified();
    drop(s);
    if !up
        .log
        .stream_dropped
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        tokio::time::timeout(std::time::Duration::from_secs(30), dropped)
            .await
            .unwrap();
    }
    let u = kw.usage_of(id).await;
    assert_eq!(u["reserved_micros"], 0, "{u}");
    assert!(u["output_tokens"].as_i64().unwrap() >= 4, "{u}");
}

#[tokio::test]
async fn a_route_without_a_cost_bound_is_refused_under_a_hard_budget_unless_given_a_fixed_cost() {
    let up = Upstream::start().await;
    let kw = Keyward::start_with(&up.base_url(), |c| {
        c.route_costs
            .insert("/v1/embeddings".into(), keyward_core::Micros(5));
    })
    .await;
    let created = kw.create_key_with(json!({"budget": {"usd": 1.0}})).await;
    let key = created["key"].as_str().unwrap();
    let r = kw
        .http
        .post(format!("{}/v1/images/generations", kw.url))
        .bearer_auth(key)
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_openai_error(r, 400, Some("cost_not_bounded")).await;
    let r = kw
        .chat(key, json!({"model": "unpriced-model", "messages": []}))
        .await;
    assert_openai_error(r, 400, Some("cost_not_bounded")).await;
    let r = kw
        .http
        .post(format!("{}/v1/embeddings", kw.url))
        .bearer_auth(key)
        .json(&json!({"model": "x", "input": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a configured fixed cost lets the route run"
    );
    let r = kw
        .http
        .get(format!("{}/v1/models", kw.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "free routes need no bound");
}

#[tokio::test]
async fn project_and_org_budgets_apply_and_thresholds_are_recorded_once() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let created = kw.create_key_with(json!({})).await;
    let key = created["key"].as_str().unwrap();
    let project = created["project_id"].as_str().unwrap();
    let r = kw.admin_put("/api/v1/budgets", json!({"project": project, "usd": 3.0 * ACTUAL as f64 / 1e6, "period": "month", "soft": [50]})).await;
    assert_eq!(r.status(), 200);
    for _ in 0..2 {
        assert_eq!(
            kw.chat(key, ask("gpt-4o-mini-metered", false, Some(40)))
                .await
                .status(),
            200
        );
    }
    let r = kw
        .chat(key, ask("gpt-4o-mini-metered", false, Some(40)))
        .await;
    let msg = assert_openai_error(r, 429, Some("insufficient_quota")).await;
    assert!(msg.contains("project budget"), "{msg}");
    // The alert is written off the request path.
    let mut alerts = 0;
    for _ in 0..200 {
        let audit: Value = kw
            .admin_get(&format!("/api/v1/audit?target={project}"))
            .await
            .json()
            .await
            .unwrap();
        alerts = audit["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "budget.threshold_crossed")
            .count();
        if alerts > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(alerts, 1);
    let budgets: Value = kw.admin_get("/api/v1/budgets").await.json().await.unwrap();
    assert_eq!(budgets["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_budgets_are_refused_and_nothing_is_stored() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let created = kw.create_key_with(json!({})).await;
    let id = created["id"].as_str().unwrap();
    for body in [
        json!({"key": id, "usd": -1}),
        json!({"key": id, "usd": 1e13}),
        json!({"key": id, "usd": 5, "period": "fortnight"}),
        json!({"key": id, "usd": 5, "soft": [0]}),
        json!({"usd": 5}),
        json!({"key": id, "org": "default", "usd": 5}),
        json!({"key": "key_nope", "usd": 5}),
        json!({"key": id, "usd": "five"}),
    ] {
        let r = kw.admin_put("/api/v1/budgets", body.clone()).await;
        assert!(
            r.status() == 400 || r.status() == 404,
            "{body}: {}",
            r.status()
        );
    }
    let r = kw
        .admin_post(
            "/api/v1/keys",
            json!({"project": "app", "name": "n", "budget": {"usd": -3}}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let budgets: Value = kw.admin_get("/api/v1/budgets").await.json().await.unwrap();
    assert!(budgets["data"].as_array().unwrap().is_empty());
    let keys: Value = kw.admin_get("/api/v1/keys").await.json().await.unwrap();
    assert_eq!(
        keys["data"].as_array().unwrap().len(),
        1,
        "the refused key was not created"
    );
}

/// The dashboard's budgets page shows an organization's admins who was
/// alerted, from the audit log: an alert recorded only in the deployment's
/// chain would be invisible to them (an org-scoped caller reads its own
/// chain only).
#[tokio::test]
async fn an_org_admin_sees_their_budget_alerts_and_another_org_does_not() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let mut admins = Vec::new();
    for name in ["org-a", "org-b"] {
        let r = kw.admin_post("/api/v1/orgs", json!({ "name": name })).await;
        assert!(r.status().is_success());
        let r = kw
            .admin_post("/api/v1/admin-keys", json!({"name": "admin", "org": name}))
            .await;
        assert!(r.status().is_success());
        let v: Value = r.json().await.unwrap();
        admins.push(v["key"].as_str().unwrap().to_owned());
    }
    let created = kw
        .create_key_with(json!({"org": "org-a", "project": "app-a"}))
        .await;
    let key = created["key"].as_str().unwrap();
    let project = created["project_id"].as_str().unwrap();
    let r = kw.admin_put("/api/v1/budgets", json!({"project": project, "usd": 3.0 * ACTUAL as f64 / 1e6, "period": "month", "soft": [50]})).await;
    assert_eq!(r.status(), 200);
    for _ in 0..2 {
        let r = kw
            .chat(key, ask("gpt-4o-mini-metered", false, Some(40)))
            .await;
        assert_eq!(r.status(), 200);
    }
    let alerts_seen_by = |admin: String| {
        let kw = &kw;
        async move {
            let audit: Value = kw
                .http
                .get(format!(
                    "{}/api/v1/audit?action=budget.threshold_crossed",
                    kw.url
                ))
                .bearer_auth(admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            audit["data"].as_array().unwrap().clone()
        }
    };
    // The alert is written off the request path.
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = alerts_seen_by(admins[0].clone()).await;
        if !seen.is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(seen.len(), 1, "org-a's admin sees its alert");
    assert_eq!(seen[0]["target"], project);
    assert_eq!(seen[0]["detail"]["threshold_percent"], 50);
    assert!(
        alerts_seen_by(admins[1].clone()).await.is_empty(),
        "another organization's admin does not"
    );
}
