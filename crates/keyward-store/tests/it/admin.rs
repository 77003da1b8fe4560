//! Admin (management) keys.

use keyward_core::{KeyHash, KeyId};
use keyward_store::{
    AdminKeyRevocation, KeyStatus, NewAdminKey, NewSecret, SharedStore, StoreError,
};

store_tests!(
    admin_keys_are_counted_and_found_by_hash,
    admin_keys_are_listed_revoked_leaked_and_rotated,
    the_last_active_admin_key_is_never_revoked_even_by_racing_revocations,
);

fn new_admin_key(name: &str, created_at: i64) -> (NewAdminKey, String) {
    let secret = format!("kwa_{}", keyward_core::base62::random(38));
    let key = NewAdminKey {
        id: KeyId::generate(),
        name: name.into(),
        hash_hex: KeyHash::of(&secret).to_hex(),
        hint: keyward_core::key::hint(&secret),
        created_at,
        created_by: None,
        org_id: None,
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

async fn admin_keys_are_listed_revoked_leaked_and_rotated(store: SharedStore) {
    let (a, a_secret) = new_admin_key("a", 1_000);
    let (mut b, b_secret) = new_admin_key("b", 2_000);
    b.created_by = Some(a.id.to_string());
    let (c, c_secret) = new_admin_key("c", 3_000);
    for k in [&a, &b, &c] {
        store.create_admin_key(k).await.unwrap();
    }
    let listed = store.list_admin_keys().await.unwrap();
    assert_eq!(
        listed.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(listed[1].created_by.as_deref(), Some(a.id.as_str()));
    assert_eq!(
        store.get_admin_key(&b.id).await.unwrap().as_ref(),
        Some(&listed[1])
    );
    assert_eq!(store.get_admin_key(&KeyId::generate()).await.unwrap(), None);

    let mut found = store
        .admin_keys_by_hashes(&[
            KeyHash::of(&a_secret),
            KeyHash::of(&c_secret),
            KeyHash::of("x"),
        ])
        .await
        .unwrap();
    found.sort_by(|x, y| x.1.name.cmp(&y.1.name));
    assert_eq!(
        found
            .iter()
            .map(|(h, k)| (*h, k.name.as_str()))
            .collect::<Vec<_>>(),
        [(KeyHash::of(&a_secret), "a"), (KeyHash::of(&c_secret), "c")]
    );

    // Revocation.
    let AdminKeyRevocation::Revoked(revoked) = store.revoke_admin_key(&b.id, 5_000).await.unwrap()
    else {
        panic!("b was active and not the last");
    };
    assert_eq!(
        (revoked.status, revoked.revoked_at),
        (KeyStatus::Revoked, Some(5_000))
    );
    assert_eq!(
        store.revoke_admin_key(&b.id, 6_000).await.unwrap(),
        AdminKeyRevocation::NotActive(revoked.clone())
    );
    assert!(matches!(
        store.revoke_admin_key(&KeyId::generate(), 6_000).await,
        Err(StoreError::NotFound("admin key"))
    ));
    let rotation = |name: &str| {
        let secret = format!("kwa_{name}_0123456789abcdef");
        (
            secret.clone(),
            NewSecret {
                hash_hex: KeyHash::of(&secret).to_hex(),
                hint: keyward_core::key::hint(&secret),
            },
        )
    };
    assert_eq!(
        store
            .rotate_admin_key(&b.id, &rotation("b2").1, 6_000)
            .await
            .unwrap(),
        None,
        "a revoked key stays revoked"
    );
    assert!(store
        .admin_key_by_hash(&KeyHash::of(&b_secret))
        .await
        .unwrap()
        .is_some());

    // A leak: once, even for the last active key.
    let leaked = store
        .mark_admin_key_leaked(&c.id, 7_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (leaked.status, leaked.revoked_at),
        (KeyStatus::Leaked, Some(7_000))
    );
    assert_eq!(
        store.mark_admin_key_leaked(&c.id, 8_000).await.unwrap(),
        None
    );
    let last = store
        .mark_admin_key_leaked(&a.id, 8_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.status, KeyStatus::Leaked);

    // Rotation replaces the secret at once and reactivates a leaked key.
    let (new_secret, new) = rotation("c2");
    let rotated = store
        .rotate_admin_key(&c.id, &new, 9_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            rotated.status,
            rotated.revoked_at,
            rotated.rotated_at,
            rotated.hint.as_str()
        ),
        (KeyStatus::Active, None, Some(9_000), new.hint.as_str())
    );
    assert_eq!(
        store
            .admin_key_by_hash(&KeyHash::of(&c_secret))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .admin_key_by_hash(&KeyHash::of(&new_secret))
            .await
            .unwrap(),
        Some(rotated)
    );
    // A secret already in use is refused.
    let taken = NewSecret {
        hash_hex: KeyHash::of(&new_secret).to_hex(),
        hint: new.hint.clone(),
    };
    assert!(matches!(
        store.rotate_admin_key(&a.id, &taken, 9_500).await,
        Err(StoreError::Duplicate("admin key"))
    ));
}

async fn the_last_active_admin_key_is_never_revoked_even_by_racing_revocations(store: SharedStore) {
    let (first, _) = new_admin_key("first", 1_000);
    store.create_admin_key(&first).await.unwrap();
    assert_eq!(
        store.revoke_admin_key(&first.id, 2_000).await.unwrap(),
        AdminKeyRevocation::LastActive
    );
    // Two active keys revoked at once: exactly one revocation passes.
    let mut survivor = first.id;
    for round in 0..10 {
        let (fresh, _) = new_admin_key("fresh", 3_000 + round);
        store.create_admin_key(&fresh).await.unwrap();
        let (x, y) = (store.clone(), store.clone());
        let (a, b) = (survivor.clone(), fresh.id.clone());
        let (ra, rb) = tokio::join!(
            tokio::spawn(async move { x.revoke_admin_key(&a, 4_000).await.unwrap() }),
            tokio::spawn(async move { y.revoke_admin_key(&b, 4_000).await.unwrap() }),
        );
        let outcomes = [ra.unwrap(), rb.unwrap()];
        let revoked = outcomes
            .iter()
            .filter(|o| matches!(o, AdminKeyRevocation::Revoked(_)))
            .count();
        let refused = outcomes
            .iter()
            .filter(|o| **o == AdminKeyRevocation::LastActive)
            .count();
        assert_eq!((revoked, refused), (1, 1), "round {round}: {outcomes:?}");
        let active: Vec<_> = store
            .list_admin_keys()
            .await
            .unwrap()
            .into_iter()
            .filter(|k| k.status == KeyStatus::Active)
            .collect();
        assert_eq!(active.len(), 1, "round {round}");
        survivor = active[0].id.clone();
    }
}
