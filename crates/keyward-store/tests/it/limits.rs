//! Restrictions, ephemeral tokens, rotation, budgets and grouped usage.

use crate::support::{event, key_in_new_project, new_key};
use keyward_core::{
    Budget, BudgetScope, EndpointRule, KeyHash, KeyId, KeyPolicy, Micros, Period, ProjectId,
};
use keyward_store::{
    Bucket, GroupBy, KeyRecord, KeyStatus, NewSecret, ProjectPolicy, SharedStore, StoreError,
    UsageEvent, UsageFilter, UsageGroup, UsageTotals,
};
use std::collections::BTreeMap;

store_tests!(
    policies_round_trip_on_keys_and_projects,
    ephemeral_tokens_are_listed_under_their_parent,
    rotation_adds_a_secret_and_gives_the_old_ones_a_grace_period,
    rotation_never_extends_an_earlier_grace_period,
    rotation_can_reactivate_a_revoked_key,
    failed_rotation_changes_nothing,
    budgets_are_upserted_listed_and_deleted,
    budget_alerts_fire_once_per_threshold_and_period,
    usage_grouped_by_key_honours_every_filter,
    usage_grouped_by_model_honours_every_filter,
    usage_series_is_the_groups_per_bucket,
    daily_and_hourly_rollups_agree,
);

const H: i64 = 3_600_000;
/// 2026-11-26T00:00:00Z.
const DAY: i64 = 1_795_737_600_000;

fn strict_policy() -> KeyPolicy {
    KeyPolicy {
        endpoints: EndpointRule::parse_list("chat-only").unwrap(),
        models: vec!["gpt-4o-mini*".into()],
        networks: keyward_core::policy::parse_networks("10.0.0.0/8, 2001:db8::/32").unwrap(),
        rpm: Some(60),
        tpm: Some(100_000),
        max_concurrent: Some(4),
        origins: vec![
            "https://app.example.com".into(),
            "http://localhost:3000".into(),
        ],
    }
}

async fn policies_round_trip_on_keys_and_projects(store: SharedStore) {
    let org = store.create_org("acme", 1_000).await.unwrap();
    let project = store.create_project(&org.id, "web", 1_000).await.unwrap();
    assert_eq!(project.policy, ProjectPolicy::default());

    let limits = ProjectPolicy {
        rpm: Some(600),
        tpm: Some(1_000_000),
        max_concurrent: Some(32),
        max_key_age_ms: Some(90 * 86_400_000),
    };
    let updated = store
        .set_project_policy(&project.id, &limits)
        .await
        .unwrap();
    assert_eq!(updated.policy, limits);
    assert_eq!(
        (updated.id.clone(), updated.name.as_str()),
        (project.id.clone(), "web")
    );
    assert_eq!(
        store.get_project(&project.id).await.unwrap(),
        Some(updated.clone())
    );
    assert_eq!(
        store.project_by_name(&org.id, "web").await.unwrap(),
        Some(updated.clone())
    );
    assert_eq!(store.list_projects(Some(&org.id)).await.unwrap(), [updated]);
    assert!(matches!(
        store
            .set_project_policy(&ProjectId::generate(), &limits)
            .await,
        Err(StoreError::NotFound("project"))
    ));

    // A key created with a policy keeps it on every read path.
    let (mut new, secret) = new_key(&project.id, "strict", 2_000);
    new.policy = strict_policy();
    let created = store.create_key(&new).await.unwrap();
    assert_eq!(created.policy, strict_policy());
    assert_eq!(store.get_key(&new.id).await.unwrap(), Some(created.clone()));
    assert_eq!(
        store.key_by_hash(&KeyHash::of(&secret)).await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(
        store.list_keys(Some(&project.id)).await.unwrap(),
        std::slice::from_ref(&created)
    );

    // Its origins are listed while it is active, and no longer once revoked.
    assert_eq!(
        store.listed_origins(2_000).await.unwrap(),
        ["http://localhost:3000", "https://app.example.com"]
    );

    // Replacing the policy replaces all of it.
    let loose = KeyPolicy {
        rpm: Some(5),
        ..Default::default()
    };
    let replaced = store.set_key_policy(&new.id, &loose).await.unwrap();
    assert_eq!(replaced.policy, loose);
    assert_eq!(
        KeyRecord {
            policy: strict_policy(),
            ..replaced.clone()
        },
        created,
        "nothing but the policy changed"
    );
    assert_eq!(store.get_key(&new.id).await.unwrap().unwrap().policy, loose);
    let cleared = store
        .set_key_policy(&new.id, &KeyPolicy::default())
        .await
        .unwrap();
    assert_eq!(cleared.policy, KeyPolicy::default());
    assert!(matches!(
        store.set_key_policy(&KeyId::generate(), &loose).await,
        Err(StoreError::NotFound("key"))
    ));
    store
        .set_key_policy(&new.id, &strict_policy())
        .await
        .unwrap();
    assert_eq!(store.listed_origins(2_000).await.unwrap().len(), 2);
    store
        .set_key_status(&new.id, keyward_store::KeyStatus::Revoked, 3_000)
        .await
        .unwrap();
    assert!(store.listed_origins(3_000).await.unwrap().is_empty());
}

async fn ephemeral_tokens_are_listed_under_their_parent(store: SharedStore) {
    let parent = key_in_new_project(&store, "acme", "web").await;
    let other = key_in_new_project(&store, "acme", "api").await;
    assert_eq!(parent.parent_id, None);

    let mut tokens = Vec::new();
    // Created out of order: the listing is by creation time.
    for (name, at) in [("late", 9_000), ("early", 3_000)] {
        let (mut token, _) = new_key(&parent.project_id, name, at);
        token.parent_id = Some(parent.id.clone());
        token.policy = KeyPolicy {
            rpm: Some(1),
            ..Default::default()
        };
        let created = store.create_key(&token).await.unwrap();
        assert_eq!(created.parent_id.as_ref(), Some(&parent.id));
        tokens.push(created);
    }
    let (mut unrelated, _) = new_key(&other.project_id, "other", 5_000);
    unrelated.parent_id = Some(other.id.clone());
    store.create_key(&unrelated).await.unwrap();

    let children = store.child_keys(&parent.id).await.unwrap();
    assert_eq!(children, [tokens[1].clone(), tokens[0].clone()]);
    assert_eq!(
        store
            .get_key(&tokens[0].id)
            .await
            .unwrap()
            .unwrap()
            .parent_id,
        Some(parent.id.clone())
    );
    assert_eq!(store.child_keys(&other.id).await.unwrap().len(), 1);
    assert_eq!(store.child_keys(&tokens[0].id).await.unwrap(), []);
    assert_eq!(store.child_keys(&KeyId::generate()).await.unwrap(), []);
}

fn secret_for(name: &str) -> (String, NewSecret) {
    let secret = format!("kwk_rotated_{name}_0123456789abcdef");
    let new = NewSecret {
        hash_hex: KeyHash::of(&secret).to_hex(),
        hint: keyward_core::key::hint(&secret),
    };
    (secret, new)
}

/// The expiry of the secret `secret` of a key, as `key_by_hash` reports it.
async fn secret_expiry(store: &SharedStore, secret: &str) -> Option<Option<i64>> {
    store
        .key_by_hash(&KeyHash::of(secret))
        .await
        .unwrap()
        .map(|k| k.secret_expires_at)
}

async fn rotation_adds_a_secret_and_gives_the_old_ones_a_grace_period(store: SharedStore) {
    let key = key_in_new_project(&store, "acme", "web").await;
    let (fresh, old_secret) = new_key(&key.project_id, "rotating", 2_000);
    let before = store.create_key(&fresh).await.unwrap();
    let (new_secret, secret) = secret_for("one");
    assert_ne!(secret.hint, before.hint);

    let rotated = store
        .rotate_key(&before.id, &secret, 10_000, 90_000, false)
        .await
        .unwrap();
    assert_eq!(rotated.hint, secret.hint);
    assert_eq!(rotated.rotated_at, Some(10_000));
    assert_eq!(rotated.secret_expires_at, None);
    assert_eq!(
        KeyRecord {
            hint: before.hint.clone(),
            rotated_at: None,
            ..rotated.clone()
        },
        before,
        "only the hint and rotated_at changed"
    );
    assert_eq!(
        store.get_key(&before.id).await.unwrap(),
        Some(rotated.clone())
    );

    let by_old = store
        .key_by_hash(&KeyHash::of(&old_secret))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_old.secret_expires_at, Some(90_000));
    assert_eq!(
        KeyRecord {
            secret_expires_at: None,
            ..by_old
        },
        rotated
    );
    let by_new = store
        .key_by_hash(&KeyHash::of(&new_secret))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_new, rotated, "the new secret is current: no expiry");

    // Another key's secrets are untouched.
    assert_eq!(
        store.get_key(&key.id).await.unwrap().unwrap().rotated_at,
        None
    );

    assert!(matches!(
        store
            .rotate_key(&KeyId::generate(), &secret_for("two").1, 1, 2, false)
            .await,
        Err(StoreError::NotFound("key"))
    ));
    assert_eq!(secret_expiry(&store, &secret_for("two").0).await, None);

    // Deleting the key removes every secret it had.
    store.delete_key(&before.id).await.unwrap();
    assert_eq!(secret_expiry(&store, &old_secret).await, None);
    assert_eq!(secret_expiry(&store, &new_secret).await, None);
}

async fn rotation_never_extends_an_earlier_grace_period(store: SharedStore) {
    let project = key_in_new_project(&store, "acme", "web").await.project_id;
    let (fresh, s0) = new_key(&project, "rotating", 2_000);
    let key = store.create_key(&fresh).await.unwrap();
    let (s1, n1) = secret_for("one");
    store
        .rotate_key(&key.id, &n1, 5_000, 60_000, false)
        .await
        .unwrap();
    assert_eq!(secret_expiry(&store, &s0).await, Some(Some(60_000)));

    // A longer grace later leaves the earlier, shorter one as it was.
    let (s2, n2) = secret_for("two");
    let r2 = store
        .rotate_key(&key.id, &n2, 10_000, 90_000, false)
        .await
        .unwrap();
    assert_eq!(
        (r2.rotated_at, r2.hint.as_str()),
        (Some(10_000), n2.hint.as_str())
    );
    assert_eq!(secret_expiry(&store, &s0).await, Some(Some(60_000)));
    assert_eq!(secret_expiry(&store, &s1).await, Some(Some(90_000)));
    assert_eq!(secret_expiry(&store, &s2).await, Some(None));

    let (s3, n3) = secret_for("three");
    store
        .rotate_key(&key.id, &n3, 20_000, 500_000, false)
        .await
        .unwrap();
    assert_eq!(secret_expiry(&store, &s0).await, Some(Some(60_000)));
    assert_eq!(secret_expiry(&store, &s1).await, Some(Some(90_000)));
    assert_eq!(secret_expiry(&store, &s2).await, Some(Some(500_000)));
    assert_eq!(secret_expiry(&store, &s3).await, Some(None));

    // A shorter one (e.g. "rotate now, it leaked") cuts every older secret short.
    let (s4, n4) = secret_for("four");
    store
        .rotate_key(&key.id, &n4, 30_000, 30_000, false)
        .await
        .unwrap();
    for s in [&s0, &s1, &s2, &s3] {
        assert_eq!(secret_expiry(&store, s).await, Some(Some(30_000)), "{s}");
    }
    assert_eq!(secret_expiry(&store, &s4).await, Some(None));
}

async fn rotation_can_reactivate_a_revoked_key(store: SharedStore) {
    let key = key_in_new_project(&store, "acme", "web").await;
    let leaked = store
        .set_key_status(&key.id, KeyStatus::Leaked, 4_000)
        .await
        .unwrap();
    assert_eq!(leaked.revoked_at, Some(4_000));

    let (_, n1) = secret_for("one");
    let kept = store
        .rotate_key(&key.id, &n1, 5_000, 5_000, false)
        .await
        .unwrap();
    assert_eq!(
        (kept.status, kept.revoked_at),
        (KeyStatus::Leaked, Some(4_000))
    );

    let (s2, n2) = secret_for("two");
    let back = store
        .rotate_key(&key.id, &n2, 6_000, 6_000, true)
        .await
        .unwrap();
    assert_eq!((back.status, back.revoked_at), (KeyStatus::Active, None));
    assert_eq!(store.get_key(&key.id).await.unwrap(), Some(back.clone()));
    assert_eq!(
        store.key_by_hash(&KeyHash::of(&s2)).await.unwrap(),
        Some(back)
    );
}

async fn failed_rotation_changes_nothing(store: SharedStore) {
    let victim = key_in_new_project(&store, "acme", "web").await;
    let (new, taken_secret) = new_key(&victim.project_id, "other", 2_000);
    store.create_key(&new).await.unwrap();
    let (s1, n1) = secret_for("one");
    let before = store
        .rotate_key(&victim.id, &n1, 5_000, 50_000, false)
        .await
        .unwrap();

    // The new secret hashes like another key's: nothing of the rotation stays.
    let clash = NewSecret {
        hash_hex: KeyHash::of(&taken_secret).to_hex(),
        hint: "kwk_…clsh".into(),
    };
    assert!(matches!(
        store
            .rotate_key(&victim.id, &clash, 9_000, 9_000, true)
            .await,
        Err(StoreError::Duplicate("key"))
    ));
    assert_eq!(store.get_key(&victim.id).await.unwrap(), Some(before));
    assert_eq!(secret_expiry(&store, &s1).await, Some(None));
    assert_eq!(
        store
            .key_by_hash(&KeyHash::of(&taken_secret))
            .await
            .unwrap()
            .map(|k| k.id),
        Some(new.id)
    );
}

fn budget(scope: BudgetScope, usd: i64, period: Period, thresholds: &[u32]) -> Budget {
    Budget {
        scope,
        amount_micros: Micros(usd * 1_000_000),
        period,
        soft_thresholds: thresholds.to_vec(),
    }
}

async fn budgets_are_upserted_listed_and_deleted(store: SharedStore) {
    assert_eq!(store.list_budgets().await.unwrap(), []);
    let org = budget(
        BudgetScope::Org("org_x".into()),
        1_000,
        Period::Month,
        &[50, 80, 100],
    );
    // Same id, other kind: a different budget.
    let project = budget(BudgetScope::Project("org_x".into()), 100, Period::Day, &[]);
    let key = budget(BudgetScope::Key("key_y".into()), 5, Period::None, &[90]);
    for b in [&project, &key, &org] {
        store.set_budget(b, 1_000).await.unwrap();
    }
    // Ordered by scope kind, then id.
    assert_eq!(
        store.list_budgets().await.unwrap(),
        [key.clone(), org.clone(), project.clone()]
    );

    let raised = budget(BudgetScope::Org("org_x".into()), 2_500, Period::Day, &[75]);
    store.set_budget(&raised, 2_000).await.unwrap();
    assert_eq!(
        store.list_budgets().await.unwrap(),
        [key.clone(), raised.clone(), project.clone()]
    );

    let wanted = [
        BudgetScope::Project("org_x".into()),
        BudgetScope::Key("key_y".into()),
        BudgetScope::Key("org_x".into()),
        BudgetScope::Project("prj_none".into()),
    ];
    assert_eq!(
        store.budgets_for(&wanted).await.unwrap(),
        [key.clone(), project.clone()]
    );
    assert_eq!(
        store
            .budgets_for(&[BudgetScope::Org("org_x".into())])
            .await
            .unwrap(),
        std::slice::from_ref(&raised)
    );
    assert_eq!(store.budgets_for(&[]).await.unwrap(), []);

    store.delete_budget(&key.scope).await.unwrap();
    assert!(matches!(
        store.delete_budget(&key.scope).await,
        Err(StoreError::NotFound("budget"))
    ));
    assert!(matches!(
        store.delete_budget(&BudgetScope::Key("org_x".into())).await,
        Err(StoreError::NotFound("budget"))
    ));
    assert_eq!(
        store.list_budgets().await.unwrap(),
        [raised, project.clone()]
    );
    assert_eq!(store.budgets_for(&wanted).await.unwrap(), [project]);
}

async fn budget_alerts_fire_once_per_threshold_and_period(store: SharedStore) {
    let scope = BudgetScope::Project("prj_a".into());
    let month = Period::Month.start(DAY);
    let next_month = Period::Month.start(DAY + 40 * 24 * H);
    assert!(store
        .record_budget_alert(&scope, month, 50, DAY)
        .await
        .unwrap());
    assert!(!store
        .record_budget_alert(&scope, month, 50, DAY + 1)
        .await
        .unwrap());
    assert!(store
        .record_budget_alert(&scope, month, 80, DAY + 2)
        .await
        .unwrap());
    assert!(!store
        .record_budget_alert(&scope, month, 80, DAY + 3)
        .await
        .unwrap());
    assert!(store
        .record_budget_alert(&scope, next_month, 50, DAY)
        .await
        .unwrap());
    // Same id, other kind of scope: its own alerts.
    let org = BudgetScope::Org("prj_a".into());
    assert!(store
        .record_budget_alert(&org, month, 50, DAY)
        .await
        .unwrap());

    // Deleting the budget forgets its alerts: one set again starts afresh.
    store
        .set_budget(&budget(scope.clone(), 10, Period::Month, &[50]), DAY)
        .await
        .unwrap();
    store.delete_budget(&scope).await.unwrap();
    assert!(store
        .record_budget_alert(&scope, month, 50, DAY + 4)
        .await
        .unwrap());
    assert!(!store
        .record_budget_alert(&org, month, 50, DAY + 4)
        .await
        .unwrap());
}

fn used(key: &KeyRecord, at: i64, model: &str, status: u16, cost: i64) -> UsageEvent {
    UsageEvent {
        model: model.into(),
        status,
        input_tokens: cost / 2,
        cost_micros: Micros(cost),
        ..event(key, at)
    }
}

/// A reference implementation: events in the whole hours the filter covers (as
/// the rollups count them), grouped, by cost descending then name (bytewise).
fn expected_groups(
    events: &[UsageEvent],
    filter: &UsageFilter,
    name: impl Fn(&UsageEvent) -> String,
) -> Vec<UsageGroup> {
    let hour = |t: i64| t - t.rem_euclid(H);
    let mut groups: BTreeMap<String, UsageTotals> = BTreeMap::new();
    for e in events {
        let keep = filter.key.as_ref().is_none_or(|k| *k == e.key_id)
            && filter.project.as_ref().is_none_or(|p| *p == e.project_id)
            && filter.org.as_ref().is_none_or(|o| *o == e.org_id)
            && filter.from.is_none_or(|f| hour(e.at) >= hour(f))
            && filter.to.is_none_or(|t| hour(e.at) < t);
        if keep {
            let t = groups.entry(name(e)).or_default();
            t.requests += 1;
            t.errors += i64::from(e.status >= 400);
            t.input_tokens += e.input_tokens;
            t.cached_input_tokens += e.cached_input_tokens;
            t.output_tokens += e.output_tokens;
            t.reasoning_tokens += e.reasoning_tokens;
            t.cost_micros += e.cost_micros.0;
            t.incomplete += i64::from(e.incomplete);
        }
    }
    let mut out: Vec<UsageGroup> = groups
        .into_iter()
        .map(|(group, totals)| UsageGroup { group, totals })
        .collect();
    out.sort_by(|a, b| {
        b.totals
            .cost_micros
            .cmp(&a.totals.cost_micros)
            .then_with(|| a.group.cmp(&b.group))
    });
    out
}

/// Three keys in two projects of two orgs, over three hours.
async fn fleet(store: &SharedStore) -> (KeyRecord, KeyRecord, KeyRecord, Vec<UsageEvent>) {
    let a = key_in_new_project(store, "acme", "web").await;
    let (b_new, _) = new_key(&a.project_id, "b", 1_000);
    let b = store.create_key(&b_new).await.unwrap();
    let c = key_in_new_project(store, "globex", "api").await;
    let mut events = vec![
        used(&a, DAY + 10, "gpt-4o", 200, 300),
        used(&a, DAY + H + 5, "gpt-4o-mini", 500, 40),
        used(&a, DAY + 2 * H + 7, "B-model", 200, 100),
        used(&b, DAY + 30 * 60_000, "gpt-4o", 200, 1_000),
        used(&b, DAY + 2 * H + 9, "a-model", 429, 100),
        used(&c, DAY + H + 1, "gpt-4o", 200, 400),
        used(&c, DAY + H + 2, "", 200, 0),
    ];
    // Streams whose usage never came, counted in every grouping.
    events[0].incomplete = true;
    events[4].incomplete = true;
    store.insert_usage(&events).await.unwrap();
    (a, b, c, events)
}

/// The filters both groupings are checked under.
fn filters(a: &KeyRecord, c: &KeyRecord) -> Vec<UsageFilter> {
    let all = UsageFilter::default();
    vec![
        all.clone(),
        UsageFilter {
            key: Some(a.id.clone()),
            ..all.clone()
        },
        UsageFilter {
            project: Some(a.project_id.clone()),
            ..all.clone()
        },
        UsageFilter {
            org: Some(c.org_id.clone()),
            ..all.clone()
        },
        // Mid-hour bounds count whole hours, as the rollups do.
        UsageFilter {
            from: Some(DAY + H + 30 * 60_000),
            to: Some(DAY + H + 1),
            ..all.clone()
        },
        UsageFilter {
            from: Some(DAY + 2 * H),
            ..all.clone()
        },
        UsageFilter {
            to: Some(DAY + H),
            org: Some(a.org_id.clone()),
            ..all.clone()
        },
        // Whole days, read from the daily rollup.
        UsageFilter {
            from: Some(DAY),
            to: Some(DAY + 24 * H),
            ..all.clone()
        },
        UsageFilter {
            from: Some(DAY + 24 * H),
            project: Some(a.project_id.clone()),
            ..all.clone()
        },
        UsageFilter {
            to: Some(DAY),
            ..all
        },
    ]
}

async fn usage_grouped_by_key_honours_every_filter(store: SharedStore) {
    let (a, b, c, events) = fleet(&store).await;
    let all = store
        .usage_grouped(&UsageFilter::default(), GroupBy::Key)
        .await
        .unwrap();
    let names: Vec<_> = all.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, [b.id.as_str(), a.id.as_str(), c.id.as_str()]);
    assert_eq!(
        (
            all[0].totals.requests,
            all[0].totals.errors,
            all[0].totals.cost_micros
        ),
        (2, 1, 1_100)
    );
    for filter in filters(&a, &c) {
        let got = store.usage_grouped(&filter, GroupBy::Key).await.unwrap();
        let want = expected_groups(&events, &filter, |e| e.key_id.to_string());
        assert_eq!(got, want, "{filter:?}");
        let mut sum = UsageTotals::default();
        for g in &got {
            sum.requests += g.totals.requests;
            sum.cost_micros += g.totals.cost_micros;
        }
        let totals = store.usage_totals(&filter).await.unwrap();
        assert_eq!(
            (sum.requests, sum.cost_micros),
            (totals.requests, totals.cost_micros),
            "{filter:?}"
        );
    }
    let only_b = UsageFilter {
        key: Some(b.id.clone()),
        from: Some(DAY + H),
        ..Default::default()
    };
    let got = store.usage_grouped(&only_b, GroupBy::Key).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].group.as_str(), got[0].totals.requests),
        (b.id.as_str(), 1)
    );
}

async fn usage_grouped_by_model_honours_every_filter(store: SharedStore) {
    let (a, _, c, events) = fleet(&store).await;
    let all = store
        .usage_grouped(&UsageFilter::default(), GroupBy::Model)
        .await
        .unwrap();
    let names: Vec<_> = all.iter().map(|g| g.group.as_str()).collect();
    // Equal costs are ordered bytewise: "B-model" before "a-model".
    assert_eq!(names, ["gpt-4o", "B-model", "a-model", "gpt-4o-mini", ""]);
    assert_eq!(
        all[0].totals,
        UsageTotals {
            requests: 3,
            errors: 0,
            input_tokens: 850,
            cached_input_tokens: 60,
            output_tokens: 150,
            reasoning_tokens: 15,
            cost_micros: 1_700,
            incomplete: 1,
        }
    );
    assert_eq!((all[2].totals.errors, all[3].totals.errors), (1, 1));
    for filter in filters(&a, &c) {
        let got = store.usage_grouped(&filter, GroupBy::Model).await.unwrap();
        let want = expected_groups(&events, &filter, |e| e.model.clone());
        assert_eq!(got, want, "{filter:?}");
        let mut sum = UsageTotals::default();
        for g in &got {
            sum.requests += g.totals.requests;
            sum.errors += g.totals.errors;
            sum.input_tokens += g.totals.input_tokens;
            sum.cost_micros += g.totals.cost_micros;
        }
        let totals = store.usage_totals(&filter).await.unwrap();
        assert_eq!(
            (sum.requests, sum.errors, sum.input_tokens, sum.cost_micros),
            (
                totals.requests,
                totals.errors,
                totals.input_tokens,
                totals.cost_micros
            ),
            "{filter:?}: groups add up to the totals"
        );
    }
    let mid_hour = UsageFilter {
        from: Some(DAY + H + 30 * 60_000),
        to: Some(DAY + H + 1),
        ..Default::default()
    };
    let got = store
        .usage_grouped(&mid_hour, GroupBy::Model)
        .await
        .unwrap();
    let names: Vec<_> = got.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, ["gpt-4o", "gpt-4o-mini", ""]);
}

async fn usage_series_is_the_groups_per_bucket(store: SharedStore) {
    let (a, _, c, events) = fleet(&store).await;
    for filter in filters(&a, &c) {
        for (by, name) in [
            (
                GroupBy::Key,
                (|e: &UsageEvent| e.key_id.to_string()) as fn(&UsageEvent) -> String,
            ),
            (GroupBy::Project, |e| e.project_id.to_string()),
            (GroupBy::Model, |e| e.model.clone()),
        ] {
            let series = store
                .usage_series(&filter, Bucket::Hour, by, &[])
                .await
                .unwrap();
            let mut want = Vec::new();
            for hour in [DAY, DAY + H, DAY + 2 * H] {
                let in_hour: Vec<UsageEvent> = events
                    .iter()
                    .filter(|e| e.at - e.at.rem_euclid(H) == hour)
                    .cloned()
                    .collect();
                let mut groups = expected_groups(&in_hour, &filter, name);
                groups.sort_by(|x, y| x.group.cmp(&y.group));
                want.extend(groups.into_iter().map(|g| (hour, g.group, g.totals)));
            }
            let got: Vec<_> = series
                .into_iter()
                .map(|p| (p.start, p.group, p.totals))
                .collect();
            assert_eq!(got, want, "{filter:?} {by:?}");

            // Only some groups: the same cells, the others left out.
            if let Some(first) = want.first().map(|(_, g, _)| g.clone()) {
                let only = store
                    .usage_series(&filter, Bucket::Hour, by, std::slice::from_ref(&first))
                    .await
                    .unwrap();
                let kept: Vec<_> = want
                    .iter()
                    .filter(|(_, g, _)| *g == first)
                    .cloned()
                    .collect();
                let got: Vec<_> = only
                    .into_iter()
                    .map(|p| (p.start, p.group, p.totals))
                    .collect();
                assert_eq!(got, kept, "{filter:?} {by:?} only {first:?}");
            }
            // Day and month buckets are whole: `from` rounds down to the bucket.
            if filter.from.is_some_and(|f| f.rem_euclid(24 * H) != 0) {
                continue;
            }
            // One day: the day's cells are the groups.
            let day = store
                .usage_series(&filter, Bucket::Day, by, &[])
                .await
                .unwrap();
            let mut groups = store.usage_grouped(&filter, by).await.unwrap();
            groups.sort_by(|x, y| x.group.cmp(&y.group));
            let by_day: Vec<_> = day.iter().map(|p| (p.group.clone(), p.totals)).collect();
            let grouped: Vec<_> = groups.into_iter().map(|g| (g.group, g.totals)).collect();
            assert_eq!(by_day, grouped, "{filter:?} {by:?}");
            assert!(day.iter().all(|p| p.start == DAY));
            if filter.from.is_some() {
                continue; // a month bucket starts at the month's first day
            }
            let month = store
                .usage_series(&filter, Bucket::Month, by, &[])
                .await
                .unwrap();
            assert_eq!(
                month
                    .iter()
                    .map(|p| (p.group.clone(), p.totals))
                    .collect::<Vec<_>>(),
                grouped
            );
        }
    }
}

/// Usage over three days, read through the daily rollup (whole-day bounds) and
/// the hourly one (the same range, bounds a millisecond inside their hour).
async fn daily_and_hourly_rollups_agree(store: SharedStore) {
    let a = key_in_new_project(&store, "acme", "web").await;
    let mut events = Vec::new();
    for day in 0..3 {
        for hour in [0, 5, 23] {
            let at = DAY + day * 24 * H + hour * H + 17;
            events.push(used(&a, at, "gpt-4o", 200, 100 + day * 10 + hour));
            events.push(used(&a, at + 1, "gpt-4o-mini", 500, 7));
        }
    }
    store.insert_usage(&events).await.unwrap();
    let days = |from: i64, to: i64| UsageFilter {
        from: Some(from),
        to: Some(to),
        ..Default::default()
    };
    for (from, to) in [
        (DAY, DAY + 72 * H),
        (DAY + 24 * H, DAY + 48 * H),
        (DAY, DAY + 24 * H),
    ] {
        let daily = days(from, to);
        let hourly = days(from + 1, to - H + 1);
        assert_eq!(
            store.usage_totals(&daily).await.unwrap(),
            store.usage_totals(&hourly).await.unwrap()
        );
        for by in [GroupBy::Key, GroupBy::Model] {
            assert_eq!(
                store.usage_grouped(&daily, by).await.unwrap(),
                store.usage_grouped(&hourly, by).await.unwrap(),
                "{by:?}"
            );
        }
        let buckets = store.usage_buckets(&daily, Bucket::Day).await.unwrap();
        assert_eq!(
            buckets,
            store.usage_buckets(&hourly, Bucket::Day).await.unwrap()
        );
        assert_eq!(buckets.len() as i64, (to - from) / (24 * H));
        assert_eq!(
            store
                .usage_series(&daily, Bucket::Day, GroupBy::Model, &[])
                .await
                .unwrap(),
            store
                .usage_series(&hourly, Bucket::Day, GroupBy::Model, &[])
                .await
                .unwrap()
        );
    }
}
