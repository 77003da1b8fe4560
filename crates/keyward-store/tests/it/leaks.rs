//! Leak response storage: reports, the leaked transition, channels and deliveries.

use crate::support::{key_in_new_project, new_key};
use keyward_core::{DeliveryId, EventId, KeyHash, KeyId, RecipientId, Secret, WebhookId};
use keyward_store::{
    AttemptResult, Channel, ChannelScope, DeliveryStatus, KeyStatus, LeakOutcome, NewDelivery,
    NewLeakReport, NewWebhook, Recipient, SharedStore, StoreError,
};
use serde_json::json;

store_tests!(
    keys_are_found_by_many_hashes,
    a_key_is_marked_leaked_once_and_cleared_explicitly,
    a_repeated_sighting_is_stored_once,
    webhooks_and_recipients_round_trip,
    a_webhook_secret_is_replaced_only_from_the_expected_value,
    deliveries_are_queued_once_claimed_once_and_logged,
);

async fn keys_are_found_by_many_hashes(store: SharedStore) {
    let a = key_in_new_project(&store, "o", "p").await;
    let (b_new, b_secret) = new_key(&a.project_id, "b", 2_000);
    let b = store.create_key(&b_new).await.unwrap();
    // 1,200 hashes: more than one chunk of a batched lookup.
    let mut hashes: Vec<KeyHash> = (0..1_200).map(|i| KeyHash::of(&format!("x{i}"))).collect();
    hashes.insert(700, KeyHash::of(&b_secret));
    let found = store.keys_by_hashes(&hashes).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, KeyHash::of(&b_secret));
    assert_eq!(found[0].1.id, b.id);
    assert!(store.keys_by_hashes(&[]).await.unwrap().is_empty());
}

async fn a_key_is_marked_leaked_once_and_cleared_explicitly(store: SharedStore) {
    let key = key_in_new_project(&store, "o", "p").await;
    let leaked = store
        .mark_key_leaked(&key.id, 5_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(leaked.status, KeyStatus::Leaked);
    assert_eq!(leaked.revoked_at, Some(5_000));
    assert!(
        store
            .mark_key_leaked(&key.id, 6_000)
            .await
            .unwrap()
            .is_none(),
        "a second report does not leak it again"
    );
    assert!(store
        .mark_key_leaked(&KeyId::generate(), 6_000)
        .await
        .unwrap()
        .is_none());
    let cleared = store.clear_key_leak(&key.id).await.unwrap().unwrap();
    assert_eq!(
        (cleared.status, cleared.revoked_at),
        (KeyStatus::Active, None)
    );
    assert!(store.clear_key_leak(&key.id).await.unwrap().is_none());
    // A revoked key is not active: it is never marked leaked, nor re-enabled.
    store
        .set_key_status(&key.id, KeyStatus::Revoked, 7_000)
        .await
        .unwrap();
    assert!(store
        .mark_key_leaked(&key.id, 8_000)
        .await
        .unwrap()
        .is_none());
    assert!(store.clear_key_leak(&key.id).await.unwrap().is_none());
    assert_eq!(
        store.get_key(&key.id).await.unwrap().unwrap().status,
        KeyStatus::Revoked
    );
}

fn report(key: &KeyId, url: &str, at: i64) -> NewLeakReport {
    NewLeakReport {
        key_id: key.clone(),
        token_hash: KeyHash::of("kwk_x").to_hex(),
        source: "github".into(),
        url: url.into(),
        location: String::new(),
        token_type: "keyward_api_key".into(),
        outcome: LeakOutcome::Disabled,
        reporter: "github".into(),
        reported_at: at,
    }
}

async fn a_repeated_sighting_is_stored_once(store: SharedStore) {
    let key = key_in_new_project(&store, "o", "p").await;
    let first = store
        .insert_leak_report(&report(&key.id, "https://github.com/a/b/blob/1/x", 1_000))
        .await
        .unwrap()
        .unwrap();
    assert!(first.id.as_str().starts_with("leak_"));
    assert_eq!(first.outcome, LeakOutcome::Disabled);
    let mut again = report(&key.id, "https://github.com/a/b/blob/1/x", 2_000);
    again.outcome = LeakOutcome::AlreadyLeaked;
    assert!(store.insert_leak_report(&again).await.unwrap().is_none());
    again.url = "https://gist.github.com/c".into();
    let second = store.insert_leak_report(&again).await.unwrap().unwrap();
    let other = key_in_new_project(&store, "o", "q").await;
    let mut unrelated = report(&other.id, "u", 3_000);
    unrelated.token_hash = KeyHash::of("kwk_y").to_hex();
    store.insert_leak_report(&unrelated).await.unwrap().unwrap();
    let listed = store.list_leak_reports(Some(&key.id), 10).await.unwrap();
    assert_eq!(listed, vec![second, first]);
    assert_eq!(store.list_leak_reports(None, 10).await.unwrap().len(), 3);
    assert_eq!(store.list_leak_reports(None, 1).await.unwrap().len(), 1);
}

async fn webhooks_and_recipients_round_trip(store: SharedStore) {
    let key = key_in_new_project(&store, "o", "p").await;
    let scope = ChannelScope {
        events: vec!["key.leaked".into()],
        org_id: Some(key.org_id.clone()),
        project_id: None,
    };
    let w = store
        .create_webhook(&NewWebhook {
            id: WebhookId::generate(),
            url: "https://hooks.example/kw".into(),
            secret: Secret::new("whsec_test"),
            scope: scope.clone(),
            description: "ops".into(),
            created_by: "key_admin".into(),
            created_at: 1_000,
        })
        .await
        .unwrap();
    let listed = store.list_webhooks().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].secret.expose(), "whsec_test");
    assert_eq!((&listed[0].id, &listed[0].scope), (&w.id, &scope));
    assert!(!serde_json::to_string(&listed[0])
        .unwrap()
        .contains("whsec_test"));
    assert!(scope.matches("key.leaked", Some(&key.org_id), Some(&key.project_id)));
    assert!(!scope.matches("budget.threshold", Some(&key.org_id), None));
    assert!(!scope.matches("key.leaked", None, None));
    let r = Recipient {
        id: RecipientId::generate(),
        address: "ops@example.com".into(),
        scope: ChannelScope {
            events: vec!["*".into()],
            org_id: None,
            project_id: Some(key.project_id.clone()),
        },
        created_at: 2_000,
    };
    store.create_recipient(&r).await.unwrap();
    assert_eq!(store.list_recipients().await.unwrap(), vec![r.clone()]);
    store.delete_webhook(&w.id).await.unwrap();
    store.delete_recipient(&r.id).await.unwrap();
    assert!(store.list_webhooks().await.unwrap().is_empty());
    assert!(store.list_recipients().await.unwrap().is_empty());
    assert!(matches!(
        store.delete_webhook(&w.id).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn a_webhook_secret_is_replaced_only_from_the_expected_value(store: SharedStore) {
    let w = store
        .create_webhook(&NewWebhook {
            id: WebhookId::generate(),
            url: "https://hooks.example/kw".into(),
            secret: Secret::new("whsec_plain"),
            scope: ChannelScope {
                events: vec!["*".into()],
                org_id: None,
                project_id: None,
            },
            description: String::new(),
            created_by: "key_admin".into(),
            created_at: 1_000,
        })
        .await
        .unwrap();
    let (plain, sealed) = (Secret::new("whsec_plain"), Secret::new("kws1:sealed"));
    assert!(store
        .replace_webhook_secret(&w.id, &plain, &sealed)
        .await
        .unwrap());
    assert!(
        !store
            .replace_webhook_secret(&w.id, &plain, &Secret::new("kws1:other"))
            .await
            .unwrap(),
        "a second node sealing the same secret changes nothing"
    );
    assert_eq!(store.list_webhooks().await.unwrap()[0].secret, sealed);
    assert!(!store
        .replace_webhook_secret(&WebhookId::generate(), &sealed, &plain)
        .await
        .unwrap());
}

async fn deliveries_are_queued_once_claimed_once_and_logged(store: SharedStore) {
    let event = EventId::generate();
    let new = |target: &str| NewDelivery {
        id: DeliveryId::generate(),
        channel: Channel::Webhook,
        target_id: target.into(),
        event_id: event.clone(),
        event_type: "key.leaked".into(),
        payload: json!({"type": "key.leaked", "n": 1}),
        created_at: 1_000,
    };
    assert_eq!(
        store
            .enqueue_deliveries(&[new("whk_a"), new("whk_b")])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store.enqueue_deliveries(&[new("whk_a")]).await.unwrap(),
        0,
        "the same event is queued once per target"
    );
    assert!(store
        .claim_due_deliveries(999, 5_000, 10)
        .await
        .unwrap()
        .is_empty());
    let claimed = store.claim_due_deliveries(1_000, 5_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(
        store
            .claim_due_deliveries(1_001, 5_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "claimed deliveries are leased"
    );
    let a = claimed.iter().find(|d| d.target_id == "whk_a").unwrap();
    assert_eq!(a.payload, json!({"type": "key.leaked", "n": 1}));
    store
        .record_attempt(&AttemptResult {
            id: a.id.clone(),
            status: DeliveryStatus::Pending,
            next_attempt_at: 2_000,
            last_status: Some(503),
            last_error: Some("HTTP 503".into()),
            at: 1_500,
        })
        .await
        .unwrap();
    let again = store.claim_due_deliveries(2_000, 6_000, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].attempts, again[0].last_status), (1, Some(503)));
    store
        .record_attempt(&AttemptResult {
            id: a.id.clone(),
            status: DeliveryStatus::Delivered,
            next_attempt_at: 2_100,
            last_status: Some(200),
            last_error: None,
            at: 2_100,
        })
        .await
        .unwrap();
    let log = store.list_deliveries(Some("whk_a"), 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].status, log[0].attempts, log[0].delivered_at),
        (DeliveryStatus::Delivered, 2, Some(2_100))
    );
    // Only the other, never-answered delivery is still pending once its lease ends.
    let pending = store
        .claim_due_deliveries(100_000, 200_000, 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].target_id, "whk_b");
    assert_eq!(store.list_deliveries(None, 10).await.unwrap().len(), 2);
}
