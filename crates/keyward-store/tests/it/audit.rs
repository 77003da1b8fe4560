//! The audit log.

use keyward_store::{NewAuditEvent, SharedStore};
use serde_json::json;

store_tests!(audit_is_newest_first_and_filtered_by_target);

fn audit(at: i64, action: &str, target: &str, detail: serde_json::Value) -> NewAuditEvent {
    NewAuditEvent {
        at,
        actor: "key_admin".into(),
        action: action.into(),
        target: target.into(),
        detail,
    }
}

async fn audit_is_newest_first_and_filtered_by_target(store: SharedStore) {
    let detail = json!({"name": "ci ✓", "tags": ["team:a", "x"], "limits": {"rpm": 60, "usd": 1.5}, "none": null});
    let mut appended = Vec::new();
    for (at, action, target, detail) in [
        (1_000, "key.created", "key_a", detail.clone()),
        (3_000, "key.created", "key_b", json!({})),
        (2_000, "key.revoked", "key_a", json!("reason")),
        (3_000, "key.deleted", "key_a", json!([1, 2, 3])),
    ] {
        let event = audit(at, action, target, detail);
        let stored = store.append_audit(&event).await.unwrap();
        assert!(stored.id.as_str().starts_with("aud_"));
        assert_eq!(
            (stored.at, &stored.action, &stored.target, &stored.detail),
            (at, &event.action, &event.target, &event.detail)
        );
        appended.push(stored);
    }
    let ids = |events: Vec<keyward_store::AuditEvent>| {
        events.into_iter().map(|e| e.id).collect::<Vec<_>>()
    };

    let all = store.list_audit(None, 10).await.unwrap();
    assert_eq!(
        all[3], appended[0],
        "stored events read back unchanged, JSON detail included"
    );
    // Newest first; equal times in reverse order of appending.
    let order = [3, 1, 2, 0].map(|i| appended[i].id.clone());
    assert_eq!(ids(all), order);
    assert_eq!(ids(store.list_audit(None, 2).await.unwrap()), order[..2]);
    assert_eq!(
        ids(store.list_audit(Some("key_a"), 10).await.unwrap()),
        [3, 2, 0].map(|i| appended[i].id.clone())
    );
    assert_eq!(
        ids(store.list_audit(Some("key_a"), 1).await.unwrap()),
        [appended[3].id.clone()]
    );
    assert_eq!(
        ids(store.list_audit(Some("key_b"), 10).await.unwrap()),
        [appended[1].id.clone()]
    );
    assert_eq!(store.list_audit(Some("key_c"), 10).await.unwrap(), vec![]);
    assert_eq!(store.list_audit(None, 0).await.unwrap(), vec![]);
}
