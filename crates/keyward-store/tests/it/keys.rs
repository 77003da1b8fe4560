//! Gateway keys: creation, lookup by hash, status, deletion, last use.

use crate::support::{event, key_in_new_project, new_key};
use keyward_core::{KeyHash, KeyId, ProjectId};
use keyward_store::{KeyStatus, SharedStore, StoreError, UsageFilter};

store_tests!(
    created_key_is_found_by_its_hash_only,
    failed_key_creation_leaves_nothing_behind,
    keys_are_listed_per_project_oldest_first,
    leaving_active_sets_revoked_at_once,
    deleting_a_key_removes_its_secrets_but_keeps_usage,
    touch_keys_only_moves_last_use_forward,
);

async fn created_key_is_found_by_its_hash_only(store: SharedStore) {
    let org = store.create_org("acme", 1_000).await.unwrap();
    let project = store.create_project(&org.id, "web", 1_000).await.unwrap();
    let (new, secret) = new_key(&project.id, "ci", 5_000);
    let created = store.create_key(&new).await.unwrap();

    assert_eq!(created.id, new.id);
    assert_eq!(created.project_id, project.id);
    assert_eq!(created.org_id, org.id, "the org comes from the project");
    assert_eq!(created.status, KeyStatus::Active);
    assert_eq!(created.tags, new.tags);
    assert_eq!(created.hint, new.hint);
    assert_eq!(created.created_by.as_deref(), Some("key_admin"));
    assert_eq!(
        (created.created_at, created.expires_at),
        (5_000, Some(5_000 + 86_400_000))
    );
    assert_eq!(
        (
            created.last_used_at,
            created.revoked_at,
            created.secret_expires_at
        ),
        (None, None, None)
    );

    assert_eq!(store.get_key(&new.id).await.unwrap(), Some(created.clone()));
    assert_eq!(
        store.key_by_hash(&KeyHash::of(&secret)).await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(
        store
            .key_by_hash(&KeyHash::of(&format!("{secret}x")))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.get_key(&KeyId::generate()).await.unwrap(), None);

    // A key with no tags, creator or expiry round-trips too.
    let (mut bare, bare_secret) = new_key(&project.id, "bare", 6_000);
    bare.tags.clear();
    bare.created_by = None;
    bare.expires_at = None;
    let bare_record = store.create_key(&bare).await.unwrap();
    assert_eq!(
        (
            bare_record.tags.len(),
            bare_record.created_by.clone(),
            bare_record.expires_at
        ),
        (0, None, None)
    );
    assert_eq!(
        store.key_by_hash(&KeyHash::of(&bare_secret)).await.unwrap(),
        Some(bare_record)
    );
}

async fn failed_key_creation_leaves_nothing_behind(store: SharedStore) {
    let existing = key_in_new_project(&store, "acme", "web").await;
    let (taken_hash, _) = new_key(&existing.project_id, "first", 1_000);
    store.create_key(&taken_hash).await.unwrap();

    // Same secret hash, new id: the key row is written, then the secret clashes,
    // and the whole transaction must roll back.
    let (mut clash, _) = new_key(&existing.project_id, "second", 2_000);
    clash.hash_hex = taken_hash.hash_hex.clone();
    assert!(matches!(
        store.create_key(&clash).await,
        Err(StoreError::Duplicate("key"))
    ));
    assert_eq!(store.get_key(&clash.id).await.unwrap(), None);

    // Same id, new secret.
    let (mut same_id, same_id_secret) = new_key(&existing.project_id, "third", 3_000);
    same_id.id = existing.id.clone();
    assert!(matches!(
        store.create_key(&same_id).await,
        Err(StoreError::Duplicate("key"))
    ));
    assert_eq!(
        store
            .key_by_hash(&KeyHash::of(&same_id_secret))
            .await
            .unwrap(),
        None
    );

    // Unknown project.
    let (orphan, _) = new_key(&ProjectId::generate(), "orphan", 4_000);
    assert!(matches!(
        store.create_key(&orphan).await,
        Err(StoreError::NotFound("project"))
    ));
    assert_eq!(store.get_key(&orphan.id).await.unwrap(), None);

    assert_eq!(store.list_keys(None).await.unwrap().len(), 2);
}

async fn keys_are_listed_per_project_oldest_first(store: SharedStore) {
    let org = store.create_org("acme", 1_000).await.unwrap();
    let web = store.create_project(&org.id, "web", 1_000).await.unwrap();
    let api = store.create_project(&org.id, "api", 1_000).await.unwrap();
    let mut created = Vec::new();
    for (project, at) in [(&web, 3_000), (&api, 2_000), (&web, 1_000)] {
        let (k, _) = new_key(&project.id, "k", at);
        created.push(store.create_key(&k).await.unwrap());
    }
    let ids =
        |keys: Vec<keyward_store::KeyRecord>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_keys(Some(&web.id)).await.unwrap()),
        [created[2].id.clone(), created[0].id.clone()]
    );
    assert_eq!(
        ids(store.list_keys(Some(&api.id)).await.unwrap()),
        [created[1].id.clone()]
    );
    assert_eq!(
        store.list_keys(Some(&ProjectId::generate())).await.unwrap(),
        vec![]
    );
    assert_eq!(
        ids(store.list_keys(None).await.unwrap()),
        [
            created[2].id.clone(),
            created[1].id.clone(),
            created[0].id.clone()
        ]
    );
}

async fn leaving_active_sets_revoked_at_once(store: SharedStore) {
    let org = store.create_org("acme", 1_000).await.unwrap();
    let project = store.create_project(&org.id, "web", 1_000).await.unwrap();
    let (new, secret) = new_key(&project.id, "k", 1_000);
    store.create_key(&new).await.unwrap();

    let revoked = store
        .set_key_status(&new.id, KeyStatus::Revoked, 10_000)
        .await
        .unwrap();
    assert_eq!(
        (revoked.status, revoked.revoked_at),
        (KeyStatus::Revoked, Some(10_000))
    );
    assert_eq!(store.get_key(&new.id).await.unwrap(), Some(revoked.clone()));
    let by_hash = store
        .key_by_hash(&KeyHash::of(&secret))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (by_hash.status, by_hash.revoked_at),
        (KeyStatus::Revoked, Some(10_000))
    );

    // Moving between inactive states keeps the time the key left `active`.
    let leaked = store
        .set_key_status(&new.id, KeyStatus::Leaked, 20_000)
        .await
        .unwrap();
    assert_eq!(
        (leaked.status, leaked.revoked_at),
        (KeyStatus::Leaked, Some(10_000))
    );

    // Reactivating clears it; leaving again records the new time.
    let active = store
        .set_key_status(&new.id, KeyStatus::Active, 30_000)
        .await
        .unwrap();
    assert_eq!(
        (active.status, active.revoked_at),
        (KeyStatus::Active, None)
    );
    let suspended = store
        .set_key_status(&new.id, KeyStatus::Suspended, 40_000)
        .await
        .unwrap();
    assert_eq!(
        (suspended.status, suspended.revoked_at),
        (KeyStatus::Suspended, Some(40_000))
    );
    let expired = store
        .set_key_status(&new.id, KeyStatus::Expired, 50_000)
        .await
        .unwrap();
    assert_eq!(store.get_key(&new.id).await.unwrap(), Some(expired.clone()));
    assert_eq!(expired.status, KeyStatus::Expired);

    // Everything else about the key is untouched.
    assert_eq!(
        (
            expired.name.as_str(),
            expired.tags.clone(),
            expired.hint.clone()
        ),
        ("k", new.tags, new.hint)
    );

    assert!(matches!(
        store
            .set_key_status(&KeyId::generate(), KeyStatus::Revoked, 1)
            .await,
        Err(StoreError::NotFound("key"))
    ));
}

async fn deleting_a_key_removes_its_secrets_but_keeps_usage(store: SharedStore) {
    let org = store.create_org("acme", 1_000).await.unwrap();
    let project = store.create_project(&org.id, "web", 1_000).await.unwrap();
    let (new, secret) = new_key(&project.id, "k", 1_000);
    let key = store.create_key(&new).await.unwrap();
    let (other_new, other_secret) = new_key(&project.id, "other", 1_000);
    store.create_key(&other_new).await.unwrap();
    store
        .insert_usage(&[event(&key, 5_000), event(&key, 6_000)])
        .await
        .unwrap();

    store.delete_key(&key.id).await.unwrap();
    assert_eq!(store.get_key(&key.id).await.unwrap(), None);
    assert_eq!(
        store.key_by_hash(&KeyHash::of(&secret)).await.unwrap(),
        None
    );
    assert!(matches!(
        store.delete_key(&key.id).await,
        Err(StoreError::NotFound("key"))
    ));
    assert!(
        store
            .key_by_hash(&KeyHash::of(&other_secret))
            .await
            .unwrap()
            .is_some(),
        "other keys stay"
    );

    let by_key = UsageFilter {
        key: Some(key.id.clone()),
        ..Default::default()
    };
    assert_eq!(store.usage_totals(&by_key).await.unwrap().requests, 2);
    assert_eq!(store.usage_events(&by_key, 10).await.unwrap().len(), 2);

    // The secret row is gone too: its hash can be stored again.
    let (mut again, _) = new_key(&project.id, "again", 2_000);
    again.hash_hex = new.hash_hex.clone();
    let again = store.create_key(&again).await.unwrap();
    assert_eq!(
        store
            .key_by_hash(&KeyHash::of(&secret))
            .await
            .unwrap()
            .map(|k| k.id),
        Some(again.id)
    );
}

async fn touch_keys_only_moves_last_use_forward(store: SharedStore) {
    let a = key_in_new_project(&store, "acme", "a").await;
    let b = key_in_new_project(&store, "acme", "b").await;
    let untouched = key_in_new_project(&store, "acme", "c").await;

    store.touch_keys(&[]).await.unwrap();
    store
        .touch_keys(&[
            (a.id.clone(), 100),
            (a.id.clone(), 300),
            (b.id.clone(), 200),
            (a.id.clone(), 250),
        ])
        .await
        .unwrap();
    let last_used = |k: Option<keyward_store::KeyRecord>| k.and_then(|k| k.last_used_at);
    assert_eq!(last_used(store.get_key(&a.id).await.unwrap()), Some(300));
    assert_eq!(last_used(store.get_key(&b.id).await.unwrap()), Some(200));
    assert_eq!(last_used(store.get_key(&untouched.id).await.unwrap()), None);

    // An older report (another node's late batch) does not move it back; unknown
    // (deleted) keys are ignored.
    store
        .touch_keys(&[
            (a.id.clone(), 250),
            (b.id.clone(), 400),
            (KeyId::generate(), 500),
        ])
        .await
        .unwrap();
    assert_eq!(last_used(store.get_key(&a.id).await.unwrap()), Some(300));
    assert_eq!(last_used(store.get_key(&b.id).await.unwrap()), Some(400));
}
