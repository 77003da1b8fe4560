//! Users, sessions and the single-use things that act for them.

use keyward_core::{Role, SessionId};
use keyward_store::{
    NewOneTimeToken, NewSession, NewUser, OneTimeKind, SharedStore, StoreError, User,
};

store_tests!(
    users_are_unique_by_lowercased_email_and_keep_their_state,
    a_totp_step_is_accepted_once_even_by_racing_requests,
    a_recovery_code_works_once,
    a_one_time_token_is_taken_once_and_not_after_it_expires,
    ending_sessions_is_scoped_to_their_user_and_keeps_the_current_one,
    devices_are_new_once,
    passkeys_and_identities_belong_to_one_user,
);

async fn user(store: &SharedStore, email: &str) -> User {
    let org = match store.org_by_name("acme").await.unwrap() {
        Some(o) => o,
        None => store.create_org("acme", 1).await.unwrap(),
    };
    store
        .create_user(&NewUser {
            org_id: org.id,
            email: email.into(),
            password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            role: Role::Member,
            created_at: 10,
        })
        .await
        .unwrap()
}

async fn users_are_unique_by_lowercased_email_and_keep_their_state(store: SharedStore) {
    let u = user(&store, "Ada@Example.com").await;
    assert_eq!(u.email, "ada@example.com");
    let again = store
        .create_user(&NewUser {
            org_id: u.org_id.clone(),
            email: "ADA@example.com".into(),
            password_hash: None,
            role: Role::Viewer,
            created_at: 11,
        })
        .await;
    assert!(matches!(again, Err(StoreError::Duplicate(_))));
    let found = store
        .user_by_email("ada@EXAMPLE.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, u);
    assert!(
        !format!("{found:?}").contains("argon2"),
        "Debug shows no hash"
    );

    store.lock_user(&u.id, 50).await.unwrap();
    store.require_reset(&u.id, 60).await.unwrap();
    store.set_role(&u.id, Role::Admin).await.unwrap();
    let got = store.get_user(&u.id).await.unwrap().unwrap();
    assert_eq!(
        (got.locked_at, got.reset_required_at, got.role),
        (Some(50), Some(60), Role::Admin)
    );
    store
        .set_password(&u.id, "$argon2id$new", 70)
        .await
        .unwrap();
    let got = store.get_user(&u.id).await.unwrap().unwrap();
    assert_eq!(got.password_hash.as_deref(), Some("$argon2id$new"));
    assert_eq!(
        (got.locked_at, got.reset_required_at),
        (None, None),
        "a new password lifts both"
    );
    assert_eq!(got.password_changed_at, Some(70));
    assert_eq!(store.list_users(&u.org_id).await.unwrap().len(), 1);
}

async fn a_totp_step_is_accepted_once_even_by_racing_requests(store: SharedStore) {
    let u = user(&store, "totp@example.com").await;
    store
        .set_totp_pending(&u.id, "sealed-pending")
        .await
        .unwrap();
    let hashes: Vec<String> = (0..10).map(|i| format!("{i:064x}")).collect();
    store
        .confirm_totp(&u.id, "sealed", 100, &hashes, 5)
        .await
        .unwrap();
    let got = store.get_user(&u.id).await.unwrap().unwrap();
    assert!(got.has_totp() && got.totp_pending.is_none());
    assert_eq!(store.recovery_codes_left(&u.id).await.unwrap(), 10);
    assert!(
        !store.accept_totp_step(&u.id, 100).await.unwrap(),
        "the confirming step is used"
    );
    let racers = (0..8).map(|_| {
        let store = store.clone();
        let id = u.id.clone();
        tokio::spawn(async move { store.accept_totp_step(&id, 101).await.unwrap() })
    });
    let mut accepted = 0;
    for r in racers {
        accepted += r.await.unwrap() as usize;
    }
    assert_eq!(accepted, 1);
    assert!(
        !store.accept_totp_step(&u.id, 99).await.unwrap(),
        "an older step is a replay"
    );
    store.remove_totp(&u.id).await.unwrap();
    assert_eq!(store.recovery_codes_left(&u.id).await.unwrap(), 0);
}

async fn a_recovery_code_works_once(store: SharedStore) {
    let u = user(&store, "rc@example.com").await;
    let hashes = vec!["a".repeat(64), "b".repeat(64)];
    store
        .confirm_totp(&u.id, "sealed", 1, &hashes, 5)
        .await
        .unwrap();
    assert!(store.use_recovery_code(&u.id, &hashes[0], 6).await.unwrap());
    assert!(!store.use_recovery_code(&u.id, &hashes[0], 7).await.unwrap());
    assert!(!store
        .use_recovery_code(&u.id, &"c".repeat(64), 7)
        .await
        .unwrap());
    assert_eq!(store.recovery_codes_left(&u.id).await.unwrap(), 1);
}

async fn a_one_time_token_is_taken_once_and_not_after_it_expires(store: SharedStore) {
    let u = user(&store, "ott@example.com").await;
    for (hash, expires_at) in [("h1", 1_000), ("h2", 1_000)] {
        store
            .create_one_time_token(&NewOneTimeToken {
                token_hash: hash.into(),
                kind: OneTimeKind::PasswordReset,
                user_id: Some(u.id.clone()),
                org_id: None,
                data: serde_json::json!({"why": "test"}),
                created_at: 1,
                expires_at,
            })
            .await
            .unwrap();
    }
    let kind = OneTimeKind::PasswordReset;
    assert!(store
        .take_one_time_token("h1", OneTimeKind::Invitation, 5)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .peek_one_time_token("h1", kind, 5)
        .await
        .unwrap()
        .is_some());
    let taken = store
        .take_one_time_token("h1", kind, 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.user_id.as_ref(), Some(&u.id));
    assert_eq!(taken.data["why"], "test");
    assert!(store
        .take_one_time_token("h1", kind, 6)
        .await
        .unwrap()
        .is_none());
    assert!(
        store
            .take_one_time_token("h2", kind, 1_000)
            .await
            .unwrap()
            .is_none(),
        "expired"
    );
    // Housekeeping deletes what can never be taken again, and only that.
    store
        .create_one_time_token(&NewOneTimeToken {
            token_hash: "h3".into(),
            kind,
            user_id: Some(u.id.clone()),
            org_id: None,
            data: serde_json::json!({}),
            created_at: 1,
            expires_at: 9_000,
        })
        .await
        .unwrap();
    assert_eq!(store.purge_one_time_tokens(1_001).await.unwrap(), 2);
    assert!(store
        .peek_one_time_token("h3", kind, 1_002)
        .await
        .unwrap()
        .is_some());
}

async fn ending_sessions_is_scoped_to_their_user_and_keeps_the_current_one(store: SharedStore) {
    let a = user(&store, "a@example.com").await;
    let b = user(&store, "b@example.com").await;
    let mut ids = Vec::new();
    for (i, who) in [&a, &a, &a, &b].into_iter().enumerate() {
        let s = store
            .create_session(&NewSession {
                id: SessionId::generate(),
                token_hash: format!("{i:064x}"),
                user_id: who.id.clone(),
                created_at: 100 + i as i64,
                expires_at: 10_000,
                ip: Some("127.0.0.1".into()),
                user_agent: Some("test".into()),
            })
            .await
            .unwrap();
        ids.push(s.id);
    }
    let found = store
        .session_by_token_hash(&format!("{:064x}", 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, ids[1]);
    assert_eq!(store.list_sessions(&a.id, 200).await.unwrap().len(), 3);
    assert_eq!(
        store.list_sessions(&a.id, 10_000).await.unwrap().len(),
        0,
        "past the absolute timeout"
    );
    assert!(
        store
            .end_session(&a.id, &ids[3], 300, "test")
            .await
            .unwrap()
            .is_none(),
        "another user's session is not found"
    );
    let ended = store
        .end_session(&a.id, &ids[0], 300, "signed out")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.ended_at, Some(300));
    let others = store
        .end_sessions(&a.id, Some(&ids[1]), 400, "end others")
        .await
        .unwrap();
    assert_eq!(
        others.iter().map(|s| &s.id).collect::<Vec<_>>(),
        vec![&ids[2]]
    );
    let open: Vec<_> = store.list_sessions(&a.id, 500).await.unwrap();
    assert_eq!(
        open.iter().map(|s| &s.id).collect::<Vec<_>>(),
        vec![&ids[1]]
    );
    assert_eq!(
        store
            .end_sessions(&a.id, None, 600, "everywhere")
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store.list_sessions(&b.id, 600).await.unwrap().len(),
        1,
        "b untouched"
    );
}

async fn devices_are_new_once(store: SharedStore) {
    let u = user(&store, "dev@example.com").await;
    assert!(store
        .remember_device(&u.id, "d1", Some("ua"), Some("127.0.0.0/24"), 1)
        .await
        .unwrap());
    assert!(!store
        .remember_device(&u.id, "d1", Some("ua"), None, 2)
        .await
        .unwrap());
    assert!(store
        .remember_device(&u.id, "d2", None, None, 3)
        .await
        .unwrap());
}

async fn passkeys_and_identities_belong_to_one_user(store: SharedStore) {
    let a = user(&store, "pk-a@example.com").await;
    let b = user(&store, "pk-b@example.com").await;
    let row = |id: &str, who: &User| keyward_store::StoredPasskeyRow {
        id: id.into(),
        user_id: who.id.clone(),
        name: format!("key {id}"),
        data: "{}".into(),
        created_at: 1,
        last_used_at: None,
    };
    store.add_passkey(&row("cred1", &a)).await.unwrap();
    store.add_passkey(&row("cred2", &a)).await.unwrap();
    assert!(matches!(
        store.add_passkey(&row("cred1", &b)).await,
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(store.list_passkeys(&a.id).await.unwrap().len(), 2);
    store.passkey_used("cred1", "{\"n\":2}", 9).await.unwrap();
    let listed = store.list_passkeys(&a.id).await.unwrap();
    assert_eq!(
        (listed[0].last_used_at, listed[0].data.as_str()),
        (Some(9), "{\"n\":2}")
    );
    assert!(
        !store.remove_passkey(&b.id, "cred1").await.unwrap(),
        "not b's"
    );
    assert!(store.remove_passkey(&a.id, "cred1").await.unwrap());
    assert_eq!(store.list_passkeys(&a.id).await.unwrap().len(), 1);

    assert_eq!(store.oidc_user("https://idp", "sub-1").await.unwrap(), None);
    store
        .link_oidc("https://idp", "sub-1", &a.id, 5)
        .await
        .unwrap();
    assert_eq!(
        store.oidc_user("https://idp", "sub-1").await.unwrap(),
        Some(a.id.clone())
    );
    assert!(store
        .link_oidc("https://idp", "sub-1", &b.id, 6)
        .await
        .is_err());
}
