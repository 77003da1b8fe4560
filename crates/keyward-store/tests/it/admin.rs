//! Admin (management) keys.

use keyward_core::{KeyHash, KeyId};
use keyward_store::{KeyStatus, NewAdminKey, SharedStore, StoreError};

store_tests!(admin_keys_are_counted_and_found_by_hash);

fn new_admin_key(name: &str, created_at: i64) -> (NewAdminKey, String) {
    let secret = format!("kwa_{}", keyward_core::base62::random(38));
    let key = NewAdminKey {
        id: KeyId::generate(),
        name: name.into(),
        hash_hex: KeyHash::of(&secret).to_hex(),
        hint: keyward_core::key::hint(&secret),
        created_at,
        created_by: None,
    };
    (key, secret)
}

async fn admin_keys_are_counted_and_found_by_hash(store: SharedStore) {
    assert_eq!(store.count_admin_keys().await.unwrap(), 0);
    let (first, first_secret) = new_admin_key("bootstrap", 1_000);
    let created = store.create_admin_key(&first).await.unwrap();
    assert_eq!(
        (
            created.id.clone(),
            created.name.as_str(),
            created.hint.clone(),
            created.status,
            created.created_at
        ),
        (
            first.id.clone(),
            "bootstrap",
            first.hint.clone(),
            KeyStatus::Active,
            1_000
        )
    );
    assert_eq!(store.count_admin_keys().await.unwrap(), 1);

    let (second, second_secret) = new_admin_key("ops", 2_000);
    store.create_admin_key(&second).await.unwrap();
    assert_eq!(store.count_admin_keys().await.unwrap(), 2);

    assert_eq!(
        store
            .admin_key_by_hash(&KeyHash::of(&first_secret))
            .await
            .unwrap(),
        Some(created)
    );
    assert_eq!(
        store
            .admin_key_by_hash(&KeyHash::of(&second_secret))
            .await
            .unwrap()
            .map(|k| k.id),
        Some(second.id.clone())
    );
    assert_eq!(
        store
            .admin_key_by_hash(&KeyHash::of("kwa_not_a_key"))
            .await
            .unwrap(),
        None
    );

    // A gateway key's hash is not an admin key.
    let org = store.create_org("acme", 1).await.unwrap();
    let project = store.create_project(&org.id, "p", 1).await.unwrap();
    let (gateway, gateway_secret) = crate::support::new_key(&project.id, "g", 1);
    store.create_key(&gateway).await.unwrap();
    assert_eq!(
        store
            .admin_key_by_hash(&KeyHash::of(&gateway_secret))
            .await
            .unwrap(),
        None
    );

    let (mut clash, _) = new_admin_key("clash", 3_000);
    clash.hash_hex = first.hash_hex.clone();
    assert!(matches!(
        store.create_admin_key(&clash).await,
        Err(StoreError::Duplicate("admin key"))
    ));
    let (mut same_id, _) = new_admin_key("same id", 3_000);
    same_id.id = second.id;
    assert!(matches!(
        store.create_admin_key(&same_id).await,
        Err(StoreError::Duplicate("admin key"))
    ));
    assert_eq!(store.count_admin_keys().await.unwrap(), 2);
}
