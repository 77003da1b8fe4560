//! Ephemeral tokens are bound to the parent secret they were minted with.

use crate::support::{key_in_new_project, new_key};
use keyward_core::{KeyHash, KeyId};
use keyward_store::{KeyRecord, KeyStatus, MintedFrom, NewSecret, SharedStore};

store_tests!(
    a_token_reads_the_state_of_the_secret_it_was_minted_with,
    ending_a_secret_at_once_revokes_its_tokens_for_good,
    revoke_tokens_revokes_only_active_tokens_of_the_parent,
);

/// A token of `parent` minted with the secret `secret`; returns it and its secret.
async fn token(
    store: &SharedStore,
    parent: &KeyRecord,
    secret: Option<&KeyHash>,
) -> (KeyRecord, String) {
    let (mut new, token_secret) = new_key(&parent.project_id, "token", 2_000);
    new.parent_id = Some(parent.id.clone());
    new.parent_secret_hash = secret.map(KeyHash::to_hex);
    (store.create_key(&new).await.unwrap(), token_secret)
}

async fn minted_from(store: &SharedStore, token_secret: &str) -> Option<MintedFrom> {
    store
        .key_by_hash(&KeyHash::of(token_secret))
        .await
        .unwrap()
        .unwrap()
        .minted_from
}

fn rotation(name: &str) -> NewSecret {
    let secret = format!("kwk_rotated_{name}_0123456789abcdef");
    NewSecret {
        hash_hex: KeyHash::of(&secret).to_hex(),
        hint: keyward_core::key::hint(&secret),
    }
}

async fn a_token_reads_the_state_of_the_secret_it_was_minted_with(store: SharedStore) {
    let parent = key_in_new_project(&store, "acme", "web").await;
    let first = store.current_secret(&parent.id).await.unwrap().unwrap();
    assert_eq!(
        store.current_secret(&KeyId::generate()).await.unwrap(),
        None
    );
    let (t, t_secret) = token(&store, &parent, Some(&first)).await;
    assert_eq!(t.minted_from, None, "only lookups by secret read it");
    assert_eq!(
        minted_from(&store, &t_secret).await,
        Some(MintedFrom::Secret { expires_at: None })
    );
    // Keys are not tokens: nothing to read.
    let (plain, plain_secret) = new_key(&parent.project_id, "plain", 2_000);
    store.create_key(&plain).await.unwrap();
    assert_eq!(minted_from(&store, &plain_secret).await, None);
    // The leak lookup reads it too.
    let found = store
        .keys_by_hashes(&[KeyHash::of(&t_secret)])
        .await
        .unwrap();
    assert_eq!(
        found[0].1.minted_from,
        Some(MintedFrom::Secret { expires_at: None })
    );

    // A rotation with a grace period: the token ends with the old secret.
    let new = rotation("grace");
    store
        .rotate_key(&parent.id, &new, 5_000, 65_000, false)
        .await
        .unwrap();
    assert_eq!(
        minted_from(&store, &t_secret).await,
        Some(MintedFrom::Secret {
            expires_at: Some(65_000)
        })
    );
    assert!(!MintedFrom::Secret {
        expires_at: Some(65_000)
    }
    .is_live(65_000));
    assert_eq!(
        store
            .current_secret(&parent.id)
            .await
            .unwrap()
            .map(|h| h.to_hex()),
        Some(new.hash_hex.clone())
    );
    assert_eq!(
        store.get_key(&t.id).await.unwrap().unwrap().status,
        KeyStatus::Active,
        "revoked only when the secret ends"
    );

    // A token bound to nothing, or to another key's secret, is bound to no
    // live secret; so is one whose parent was deleted.
    let (unbound, unbound_secret) = token(&store, &parent, None).await;
    assert_eq!(
        minted_from(&store, &unbound_secret).await,
        Some(MintedFrom::Gone)
    );
    let other = key_in_new_project(&store, "acme", "api").await;
    let foreign = store.current_secret(&other.id).await.unwrap().unwrap();
    let (_, foreign_secret) = token(&store, &parent, Some(&foreign)).await;
    assert_eq!(
        minted_from(&store, &foreign_secret).await,
        Some(MintedFrom::Gone)
    );
    store.delete_key(&parent.id).await.unwrap();
    assert_eq!(minted_from(&store, &t_secret).await, Some(MintedFrom::Gone));
    assert!(!MintedFrom::Gone.is_live(0));
    assert_eq!(unbound.parent_id, Some(parent.id));
}

async fn ending_a_secret_at_once_revokes_its_tokens_for_good(store: SharedStore) {
    let parent = key_in_new_project(&store, "acme", "web").await;
    let secret = store.current_secret(&parent.id).await.unwrap().unwrap();
    let (by_rotation, _) = token(&store, &parent, Some(&secret)).await;
    // No grace: the token is revoked with the secret.
    store
        .rotate_key(&parent.id, &rotation("now"), 5_000, 5_000, false)
        .await
        .unwrap();
    let after = store.get_key(&by_rotation.id).await.unwrap().unwrap();
    assert_eq!(
        (after.status, after.revoked_at),
        (KeyStatus::Revoked, Some(5_000))
    );

    // A leak revokes the key's tokens in the same step, and clearing the leak
    // brings back the key, not them.
    let current = store.current_secret(&parent.id).await.unwrap().unwrap();
    let (by_leak, _) = token(&store, &parent, Some(&current)).await;
    assert!(store
        .mark_key_leaked(&parent.id, 6_000)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store.get_key(&by_leak.id).await.unwrap().unwrap().status,
        KeyStatus::Revoked
    );
    assert!(store
        .mark_key_leaked(&parent.id, 7_000)
        .await
        .unwrap()
        .is_none());
    store.clear_key_leak(&parent.id).await.unwrap().unwrap();
    assert_eq!(
        store.get_key(&by_leak.id).await.unwrap().unwrap().status,
        KeyStatus::Revoked
    );
}

async fn revoke_tokens_revokes_only_active_tokens_of_the_parent(store: SharedStore) {
    let parent = key_in_new_project(&store, "acme", "web").await;
    let other = key_in_new_project(&store, "acme", "api").await;
    let secret = store.current_secret(&parent.id).await.unwrap().unwrap();
    let (a, _) = token(&store, &parent, Some(&secret)).await;
    let (b, _) = token(&store, &parent, Some(&secret)).await;
    let (expired, _) = token(&store, &parent, Some(&secret)).await;
    store
        .set_key_status(&expired.id, KeyStatus::Expired, 3_000)
        .await
        .unwrap();
    let other_secret = store.current_secret(&other.id).await.unwrap().unwrap();
    let (unrelated, _) = token(&store, &other, Some(&other_secret)).await;

    let mut revoked = store.revoke_tokens(&parent.id, 4_000).await.unwrap();
    revoked.sort();
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(revoked, expected);
    assert_eq!(
        store.get_key(&expired.id).await.unwrap().unwrap().status,
        KeyStatus::Expired
    );
    assert_eq!(
        store.get_key(&unrelated.id).await.unwrap().unwrap().status,
        KeyStatus::Active
    );
    assert_eq!(
        store.get_key(&parent.id).await.unwrap().unwrap().status,
        KeyStatus::Active,
        "the parent itself is untouched"
    );
    assert_eq!(store.revoke_tokens(&parent.id, 5_000).await.unwrap(), []);
}
