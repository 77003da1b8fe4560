//! Usage events and their hourly rollups.

use crate::support::{event, key_in_new_project};
use keyward_core::clock::hour_start;
use keyward_core::Micros;
use keyward_store::{
    Bucket, KeyRecord, SharedStore, UsageBucket, UsageEvent, UsageFilter, UsageTotals,
};
use std::collections::BTreeMap;

store_tests!(
    rollups_are_exact_across_hours_and_days,
    month_buckets_are_utc_calendar_months,
    rollup_time_bounds_count_whole_hours,
    filters_scope_usage_to_key_project_and_org,
    raw_events_round_trip_newest_first,
    a_batch_of_5000_events_is_counted_exactly_once,
    concurrent_batches_are_all_counted,
    latest_events_across_many_batches_match_a_full_sort,
);

const H: i64 = 3_600_000;
/// 2026-11-26T00:00:00Z.
const DAY: i64 = 1_795_737_600_000;

fn with(key: &KeyRecord, at: i64, status: u16, input: i64, cost: i64) -> UsageEvent {
    UsageEvent {
        status,
        input_tokens: input,
        cost_micros: Micros(cost),
        ..event(key, at)
    }
}

/// What the store should report for `events`: a reference implementation.
fn expected_totals<'a>(events: impl IntoIterator<Item = &'a UsageEvent>) -> UsageTotals {
    let mut t = UsageTotals::default();
    for e in events {
        t.requests += 1;
        t.errors += i64::from(e.status >= 400);
        t.input_tokens += e.input_tokens;
        t.cached_input_tokens += e.cached_input_tokens;
        t.output_tokens += e.output_tokens;
        t.reasoning_tokens += e.reasoning_tokens;
        t.cost_micros += e.cost_micros.0;
        t.incomplete += i64::from(e.incomplete);
    }
    t
}

fn expected_hours(events: &[UsageEvent]) -> Vec<UsageBucket> {
    let mut by_hour: BTreeMap<i64, Vec<&UsageEvent>> = BTreeMap::new();
    for e in events {
        by_hour.entry(hour_start(e.at)).or_default().push(e);
    }
    by_hour
        .into_iter()
        .map(|(start, es)| UsageBucket {
            start,
            totals: expected_totals(es),
        })
        .collect()
}

/// Five events over four hours of two days, two of them incomplete.
fn two_days(key: &KeyRecord) -> Vec<UsageEvent> {
    vec![
        with(key, DAY + H, 200, 10_000, 50_000),
        UsageEvent {
            incomplete: true,
            ..with(key, DAY + 23 * H + 600_000, 200, 1, 1)
        },
        with(key, DAY + 24 * H - 1, 500, 10, 20),
        with(key, DAY + 24 * H, 404, 100, 300),
        UsageEvent {
            incomplete: true,
            ..with(key, DAY + 26 * H + 1, 200, 1_000, 4_000)
        },
    ]
}

async fn rollups_are_exact_across_hours_and_days(store: SharedStore) {
    let key = key_in_new_project(&store, "acme", "web").await;
    let events = two_days(&key);
    store.insert_usage(&events).await.unwrap();
    let all = UsageFilter::default();

    let totals = store.usage_totals(&all).await.unwrap();
    assert_eq!(
        totals,
        UsageTotals {
            requests: 5,
            errors: 2,
            input_tokens: 11_111,
            cached_input_tokens: 100,
            output_tokens: 250,
            reasoning_tokens: 25,
            cost_micros: 54_321,
            incomplete: 2,
        }
    );

    let hours = store.usage_buckets(&all, Bucket::Hour).await.unwrap();
    let starts: Vec<i64> = hours.iter().map(|b| b.start).collect();
    assert_eq!(starts, [DAY + H, DAY + 23 * H, DAY + 24 * H, DAY + 26 * H]);
    assert_eq!(hours, expected_hours(&events));
    assert_eq!(
        (
            hours[1].totals.requests,
            hours[1].totals.errors,
            hours[1].totals.cost_micros,
            hours[1].totals.incomplete
        ),
        (2, 1, 21, 1)
    );

    let days = store.usage_buckets(&all, Bucket::Day).await.unwrap();
    assert_eq!(
        days,
        [
            UsageBucket {
                start: DAY,
                totals: expected_totals(&events[..3])
            },
            UsageBucket {
                start: DAY + 24 * H,
                totals: expected_totals(&events[3..])
            },
        ]
    );
    assert_eq!(
        (
            days[0].totals.requests,
            days[1].totals.requests,
            days[1].totals.input_tokens
        ),
        (3, 2, 1_100)
    );

    // `from` rounds down to the bucket: mid-day still gets the whole first day.
    let from_evening = UsageFilter {
        from: Some(DAY + 23 * H + 5),
        ..Default::default()
    };
    let days = store
        .usage_buckets(&from_evening, Bucket::Day)
        .await
        .unwrap();
    assert_eq!(
        days.iter()
            .map(|b| (b.start, b.totals.requests))
            .collect::<Vec<_>>(),
        [(DAY, 3), (DAY + 24 * H, 2)]
    );
    let hours = store
        .usage_buckets(&from_evening, Bucket::Hour)
        .await
        .unwrap();
    assert_eq!(
        hours.iter().map(|b| b.start).collect::<Vec<_>>(),
        [DAY + 23 * H, DAY + 24 * H, DAY + 26 * H]
    );

    // A second batch adds to the same rollup rows.
    store.insert_usage(&events[..2]).await.unwrap();
    let totals = store.usage_totals(&all).await.unwrap();
    assert_eq!((totals.requests, totals.input_tokens), (7, 11_111 + 10_001));

    // Nothing matches: zeros, and no buckets.
    let before = UsageFilter {
        to: Some(DAY),
        ..Default::default()
    };
    assert_eq!(
        store.usage_totals(&before).await.unwrap(),
        UsageTotals::default()
    );
    assert_eq!(
        store.usage_buckets(&before, Bucket::Day).await.unwrap(),
        vec![]
    );
}

/// 2024-01-01T00:00:00Z, and the first days of the next two months (2024 is a
/// leap year: February has 29 days).
const JAN_2024: i64 = 1_704_067_200_000;
const FEB_2024: i64 = 1_706_745_600_000;
const MAR_2024: i64 = 1_709_251_200_000;

async fn month_buckets_are_utc_calendar_months(store: SharedStore) {
    let key = key_in_new_project(&store, "acme", "web").await;
    let events = vec![
        with(&key, JAN_2024, 200, 1, 1),
        with(&key, FEB_2024 - 30 * 60_000, 200, 2, 2), // Jan 31, 23:30
        UsageEvent {
            incomplete: true,
            ..with(&key, FEB_2024, 500, 4, 4)
        },
        with(&key, MAR_2024 - 1, 200, 8, 8), // Feb 29, 23:59:59.999
        with(&key, MAR_2024, 200, 16, 16),
    ];
    store.insert_usage(&events).await.unwrap();
    let all = UsageFilter::default();
    let months = store.usage_buckets(&all, Bucket::Month).await.unwrap();
    assert_eq!(
        months,
        [
            UsageBucket {
                start: JAN_2024,
                totals: expected_totals(&events[..2])
            },
            UsageBucket {
                start: FEB_2024,
                totals: expected_totals(&events[2..4])
            },
            UsageBucket {
                start: MAR_2024,
                totals: expected_totals(&events[4..])
            },
        ]
    );
    assert_eq!(
        (months[1].totals.input_tokens, months[1].totals.incomplete),
        (12, 1)
    );
    // `from` mid-February starts the series at February's first day, and `to`
    // cuts it as usual.
    let february = UsageFilter {
        from: Some(FEB_2024 + 14 * 24 * H + 12 * H),
        to: Some(MAR_2024),
        ..Default::default()
    };
    let months = store.usage_buckets(&february, Bucket::Month).await.unwrap();
    assert_eq!(
        months,
        [UsageBucket {
            start: FEB_2024,
            totals: expected_totals(&events[2..4])
        }]
    );
}

async fn rollup_time_bounds_count_whole_hours(store: SharedStore) {
    let key = key_in_new_project(&store, "acme", "web").await;
    store.insert_usage(&two_days(&key)).await.unwrap();
    let requests = |from: Option<i64>, to: Option<i64>| {
        let store = store.clone();
        async move {
            store
                .usage_totals(&UsageFilter {
                    from,
                    to,
                    ..Default::default()
                })
                .await
                .unwrap()
                .requests
        }
    };
    // `from` rounds down to the hour, so the 23:10 event counts from 23:30.
    assert_eq!(requests(Some(DAY + 23 * H + 1_800_000), None).await, 4);
    assert_eq!(requests(Some(DAY + 24 * H + 1), None).await, 2);
    assert_eq!(requests(Some(DAY + 27 * H), None).await, 0);
    // `to` is exclusive and applies to hour starts.
    assert_eq!(requests(None, Some(DAY + 24 * H)).await, 3);
    assert_eq!(requests(None, Some(DAY + 24 * H + 1)).await, 4);
    assert_eq!(requests(Some(DAY + 23 * H), Some(DAY + 26 * H)).await, 3);

    // Raw events use the bounds exactly.
    let raw = store
        .usage_events(
            &UsageFilter {
                from: Some(DAY + 23 * H + 1_800_000),
                to: Some(DAY + 24 * H),
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        raw.iter().map(|e| e.at).collect::<Vec<_>>(),
        [DAY + 24 * H - 1]
    );
}

async fn filters_scope_usage_to_key_project_and_org(store: SharedStore) {
    let k1 = key_in_new_project(&store, "a", "p1").await;
    let org_a = store.get_org(&k1.org_id).await.unwrap().unwrap();
    let p1 = store.get_project(&k1.project_id).await.unwrap().unwrap();
    let (k2_new, _) = crate::support::new_key(&p1.id, "k2", 2_000);
    let k2 = store.create_key(&k2_new).await.unwrap();
    let k3 = key_in_new_project(&store, "a", "p2").await;
    let k4 = key_in_new_project(&store, "b", "p1").await;
    assert_eq!(k3.org_id, org_a.id);
    assert_ne!(k4.org_id, org_a.id);

    let mut events = Vec::new();
    for (key, n) in [(&k1, 1), (&k2, 2), (&k3, 3), (&k4, 4)] {
        for i in 0..n {
            events.push(with(key, DAY + i * H, 200, n, 1));
        }
    }
    store.insert_usage(&events).await.unwrap();

    let requests = |filter: UsageFilter| {
        let store = store.clone();
        async move { store.usage_totals(&filter).await.unwrap().requests }
    };
    assert_eq!(requests(UsageFilter::default()).await, 10);
    assert_eq!(
        requests(UsageFilter {
            key: Some(k2.id.clone()),
            ..Default::default()
        })
        .await,
        2
    );
    assert_eq!(
        requests(UsageFilter {
            project: Some(p1.id.clone()),
            ..Default::default()
        })
        .await,
        3
    );
    assert_eq!(
        requests(UsageFilter {
            project: Some(k3.project_id.clone()),
            ..Default::default()
        })
        .await,
        3
    );
    assert_eq!(
        requests(UsageFilter {
            org: Some(org_a.id.clone()),
            ..Default::default()
        })
        .await,
        6
    );
    assert_eq!(
        requests(UsageFilter {
            org: Some(k4.org_id.clone()),
            ..Default::default()
        })
        .await,
        4
    );
    // Conditions combine: k1 is not in p2.
    let contradictory = UsageFilter {
        key: Some(k1.id.clone()),
        project: Some(k3.project_id.clone()),
        ..Default::default()
    };
    assert_eq!(requests(contradictory).await, 0);
    let org_late = UsageFilter {
        org: Some(org_a.id.clone()),
        from: Some(DAY + H),
        ..Default::default()
    };
    assert_eq!(
        requests(org_late.clone()).await,
        3,
        "k2's second and k3's second and third"
    );

    let tokens = store
        .usage_totals(&UsageFilter {
            org: Some(org_a.id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(tokens.input_tokens, 1 + 2 * 2 + 3 * 3);

    let hours = store.usage_buckets(&org_late, Bucket::Hour).await.unwrap();
    assert_eq!(
        hours
            .iter()
            .map(|b| (b.start, b.totals.requests))
            .collect::<Vec<_>>(),
        [(DAY + H, 2), (DAY + 2 * H, 1)]
    );

    let raw = store
        .usage_events(
            &UsageFilter {
                project: Some(k3.project_id.clone()),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(raw.len(), 3);
    assert!(raw.iter().all(|e| e.key_id == k3.id));
    let raw = store
        .usage_events(
            &UsageFilter {
                org: Some(k4.org_id.clone()),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(raw.len(), 4);
    assert!(raw.iter().all(|e| e.key_id == k4.id));
    let raw = store
        .usage_events(
            &UsageFilter {
                key: Some(k2.id.clone()),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(raw.iter().map(|e| e.at).collect::<Vec<_>>(), [DAY + H, DAY]);
}

async fn raw_events_round_trip_newest_first(store: SharedStore) {
    let key = key_in_new_project(&store, "acme", "web").await;
    let plain = event(&key, 1_000);
    let odd = UsageEvent {
        at: 2_000,
        endpoint: "/v1/responses".into(),
        model: String::new(),
        status: 429,
        client_ip: None,
        streamed: true,
        incomplete: true,
        reasoning_tokens: 0,
        ..event(&key, 0)
    };
    let tie = UsageEvent {
        at: 2_000,
        status: 599,
        model: "o3".into(),
        ..event(&key, 0)
    };
    let newest = UsageEvent {
        at: 3_000,
        client_ip: Some("2001:db8::1".into()),
        ..event(&key, 0)
    };
    store
        .insert_usage(&[plain.clone(), odd.clone(), tie.clone()])
        .await
        .unwrap();
    store
        .insert_usage(std::slice::from_ref(&newest))
        .await
        .unwrap();

    let all = UsageFilter::default();
    // Equal times: the later-inserted event comes first.
    assert_eq!(
        store.usage_events(&all, 10).await.unwrap(),
        vec![newest.clone(), tie.clone(), odd.clone(), plain]
    );
    assert_eq!(
        store.usage_events(&all, 2).await.unwrap(),
        vec![newest, tie]
    );
    assert_eq!(store.usage_events(&all, 0).await.unwrap(), vec![]);
    assert_eq!(store.usage_totals(&all).await.unwrap().errors, 2);
    store.insert_usage(&[]).await.unwrap();
    assert_eq!(store.usage_totals(&all).await.unwrap().requests, 4);
}

async fn a_batch_of_5000_events_is_counted_exactly_once(store: SharedStore) {
    let keys = [
        key_in_new_project(&store, "acme", "a").await,
        key_in_new_project(&store, "acme", "b").await,
        key_in_new_project(&store, "other", "c").await,
    ];
    let events: Vec<UsageEvent> = (0..5_000i64)
        .map(|i| {
            let key = &keys[(i % 3) as usize];
            let status = if i % 7 == 0 { 500 } else { 200 };
            UsageEvent {
                reasoning_tokens: i % 5,
                ..with(key, DAY + (i % 10) * H + i, status, i, i % 13)
            }
        })
        .collect();
    store.insert_usage(&events).await.unwrap();

    let all = UsageFilter::default();
    let totals = store.usage_totals(&all).await.unwrap();
    assert_eq!(totals, expected_totals(&events));
    assert_eq!((totals.requests, totals.errors), (5_000, 715));
    assert_eq!(
        store.usage_buckets(&all, Bucket::Hour).await.unwrap(),
        expected_hours(&events)
    );
    for key in &keys {
        let mine = store
            .usage_totals(&UsageFilter {
                key: Some(key.id.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            mine,
            expected_totals(events.iter().filter(|e| e.key_id == key.id))
        );
    }
    assert_eq!(store.usage_events(&all, 10_000).await.unwrap().len(), 5_000);

    store.insert_usage(&events).await.unwrap();
    assert_eq!(store.usage_totals(&all).await.unwrap().requests, 10_000);
}

async fn concurrent_batches_are_all_counted(store: SharedStore) {
    let a = key_in_new_project(&store, "acme", "a").await;
    let b = key_in_new_project(&store, "acme", "b").await;
    const TASKS: i64 = 16;
    const BATCHES: i64 = 8;
    const PER_BATCH: i64 = 25;

    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let (store, a, b) = (store.clone(), a.clone(), b.clone());
        tasks.spawn(async move {
            for n in 0..BATCHES {
                // Every batch hits the same few rollup rows, in different orders.
                let batch: Vec<UsageEvent> = (0..PER_BATCH)
                    .map(|i| {
                        let key = if (i + t) % 2 == 0 { &a } else { &b };
                        with(key, DAY + ((t + n + i) % 3) * H, 200, 1, 2)
                    })
                    .rev()
                    .collect();
                store.insert_usage(&batch).await.unwrap();
                let touches = if t % 2 == 0 {
                    [(a.id.clone(), t * 100 + n), (b.id.clone(), t * 100 + n)]
                } else {
                    [(b.id.clone(), t * 100 + n), (a.id.clone(), t * 100 + n)]
                };
                store.touch_keys(&touches).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }

    let totals = store.usage_totals(&UsageFilter::default()).await.unwrap();
    let n = TASKS * BATCHES * PER_BATCH;
    assert_eq!(
        (totals.requests, totals.input_tokens, totals.cost_micros),
        (n, n, 2 * n)
    );
    let hours = store
        .usage_buckets(&UsageFilter::default(), Bucket::Hour)
        .await
        .unwrap();
    assert_eq!(hours.iter().map(|b| b.totals.requests).sum::<i64>(), n);
    assert_eq!(hours.len(), 3);
    assert_eq!(
        store
            .usage_events(&UsageFilter::default(), 100_000)
            .await
            .unwrap()
            .len() as i64,
        n
    );
    let last = (TASKS - 1) * 100 + BATCHES - 1;
    assert_eq!(
        store
            .get_key(&a.id)
            .await
            .unwrap()
            .and_then(|k| k.last_used_at),
        Some(last)
    );
}

/// Many small batches whose times overlap (a long stream is written after
/// shorter, later requests), read back through every filter shape and limit:
/// the result must equal sorting every matching event by (time, insertion)
/// newest first. Guards SQLite's early stop when walking event blocks.
async fn latest_events_across_many_batches_match_a_full_sort(store: SharedStore) {
    let a = key_in_new_project(&store, "acme", "web").await;
    let b = key_in_new_project(&store, "acme", "api").await;
    let mut inserted: Vec<UsageEvent> = Vec::new();
    for batch in 0..90i64 {
        let events: Vec<UsageEvent> = (0..(batch % 4))
            .map(|i| {
                let key = if (batch + i) % 3 == 0 { &b } else { &a };
                // Times go forward, but every fifth event is an old one.
                let at = if i == 2 {
                    DAY + batch * 10 - 400
                } else {
                    DAY + batch * 10 + i
                };
                UsageEvent {
                    input_tokens: batch * 10 + i,
                    ..event(key, at)
                }
            })
            .collect();
        store.insert_usage(&events).await.unwrap();
        inserted.extend(events);
    }
    let filters = [
        UsageFilter::default(),
        UsageFilter {
            key: Some(b.id.clone()),
            ..Default::default()
        },
        UsageFilter {
            project: Some(a.project_id.clone()),
            from: Some(DAY + 200),
            to: Some(DAY + 700),
            ..Default::default()
        },
    ];
    for filter in &filters {
        let mut want: Vec<(usize, &UsageEvent)> = inserted
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                filter.key.as_ref().is_none_or(|k| *k == e.key_id)
                    && filter.project.as_ref().is_none_or(|p| *p == e.project_id)
                    && filter.from.is_none_or(|f| e.at >= f)
                    && filter.to.is_none_or(|t| e.at < t)
            })
            .collect();
        want.sort_by_key(|x| std::cmp::Reverse((x.1.at, x.0)));
        assert!(want.len() > 20, "the filter must select enough events");
        for limit in [1, 7, 40, 1_000] {
            let got = store.usage_events(filter, limit).await.unwrap();
            let expected: Vec<UsageEvent> = want
                .iter()
                .take(limit as usize)
                .map(|(_, e)| (*e).clone())
                .collect();
            assert_eq!(got, expected, "filter {filter:?}, limit {limit}");
        }
    }
}

/// PostgreSQL's migration that adds the `incomplete` counter counts it for the
/// rollup rows already stored, from the raw events. (SQLite's is tested beside
/// its usage blocks.)
#[tokio::test]
async fn postgres_migration_0005_counts_incomplete_events_already_stored() {
    use sqlx::Connection;
    let Some(url) = crate::support::postgres_url() else {
        return;
    };
    let schema = crate::support::fresh_schema();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let migrated = async {
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}; SET search_path TO {schema};"))
            .execute(&mut conn)
            .await?;
        for sql in [
            include_str!("../../migrations/postgres/0001_initial.sql"),
            include_str!("../../migrations/postgres/0002_limits.sql"),
            include_str!("../../migrations/postgres/0003_leaks.sql"),
            include_str!("../../migrations/postgres/0004_token_secrets_admin_keys.sql"),
        ] {
            sqlx::raw_sql(sql).execute(&mut conn).await?;
        }
        // (key, at, incomplete): two cut off in key_a's first hour, one in its next.
        let events = [
            ("key_a", H + 5, true),
            ("key_a", H + 6, false),
            ("key_a", 2 * H - 1, true),
            ("key_a", 2 * H, true),
            ("key_b", H, false),
        ];
        for (key, at, incomplete) in events {
            sqlx::query(
                "INSERT INTO usage_events (key_id, project_id, org_id, at, endpoint, model, status, \
                 input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cost_micros, \
                 upstream_latency_ms, total_latency_ms, client_ip, streamed, incomplete) \
                 VALUES ($1, 'prj_1', 'org_1', $2, '/v1/chat/completions', 'm', 200, \
                 1, 0, 1, 0, 1, 1, 1, NULL, TRUE, $3)",
            )
            .bind(key)
            .bind(at)
            .bind(incomplete)
            .execute(&mut conn)
            .await?;
        }
        for (key, hour) in [("key_a", H), ("key_a", 2 * H), ("key_b", H)] {
            sqlx::query(
                "INSERT INTO usage_hourly (key_id, hour_start, project_id, org_id, requests, errors, \
                 input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cost_micros) \
                 VALUES ($1, $2, 'prj_1', 'org_1', 1, 0, 0, 0, 0, 0, 0)",
            )
            .bind(key)
            .bind(hour)
            .execute(&mut conn)
            .await?;
        }
        sqlx::raw_sql(include_str!(
            "../../migrations/postgres/0005_usage_incomplete.sql"
        ))
        .execute(&mut conn)
        .await?;
        sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT key_id, hour_start, incomplete FROM usage_hourly ORDER BY key_id, hour_start",
        )
        .fetch_all(&mut conn)
        .await
    }
    .await;
    drop(conn);
    crate::support::drop_schema(&url, &schema).await;
    assert_eq!(
        migrated.unwrap(),
        vec![
            ("key_a".into(), H, 2),
            ("key_a".into(), 2 * H, 1),
            ("key_b".into(), H, 0),
        ]
    );
}
