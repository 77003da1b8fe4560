//! Organizations and projects.

use keyward_core::OrgId;
use keyward_store::{SharedStore, StoreError};

store_tests!(
    orgs_are_unique_by_name_and_listed_oldest_first,
    projects_are_scoped_to_their_org,
    ping_answers
);

async fn orgs_are_unique_by_name_and_listed_oldest_first(store: SharedStore) {
    let later = store.create_org("zeta", 2_000).await.unwrap();
    let earlier = store.create_org("acme", 1_000).await.unwrap();
    assert!(later.id.as_str().starts_with("org_"));
    assert_ne!(later.id, earlier.id);
    assert_eq!((later.name.as_str(), later.created_at), ("zeta", 2_000));

    assert!(matches!(
        store.create_org("acme", 3_000).await,
        Err(StoreError::Duplicate("org"))
    ));

    assert_eq!(
        store.org_by_name("acme").await.unwrap(),
        Some(earlier.clone())
    );
    assert_eq!(store.org_by_name("Acme").await.unwrap(), None);
    assert_eq!(store.get_org(&later.id).await.unwrap(), Some(later.clone()));
    assert_eq!(store.get_org(&OrgId::generate()).await.unwrap(), None);
    assert_eq!(store.list_orgs().await.unwrap(), vec![earlier, later]);
}

async fn projects_are_scoped_to_their_org(store: SharedStore) {
    let a = store.create_org("a", 1_000).await.unwrap();
    let b = store.create_org("b", 1_000).await.unwrap();
    let a_web = store.create_project(&a.id, "web", 1_000).await.unwrap();
    let a_api = store.create_project(&a.id, "api", 2_000).await.unwrap();
    // The same name in another org is a different project.
    let b_web = store.create_project(&b.id, "web", 1_500).await.unwrap();
    assert_ne!(a_web.id, b_web.id);
    assert_eq!(a_web.org_id, a.id);

    assert!(matches!(
        store.create_project(&a.id, "web", 3_000).await,
        Err(StoreError::Duplicate("project"))
    ));
    assert!(matches!(
        store.create_project(&OrgId::generate(), "web", 3_000).await,
        Err(StoreError::NotFound("org"))
    ));

    assert_eq!(
        store.project_by_name(&a.id, "web").await.unwrap(),
        Some(a_web.clone())
    );
    assert_eq!(
        store.project_by_name(&b.id, "web").await.unwrap(),
        Some(b_web.clone())
    );
    assert_eq!(store.project_by_name(&b.id, "api").await.unwrap(), None);
    assert_eq!(
        store.get_project(&a_api.id).await.unwrap(),
        Some(a_api.clone())
    );
    assert_eq!(
        store
            .get_project(&keyward_core::ProjectId::generate())
            .await
            .unwrap(),
        None
    );

    assert_eq!(
        store.list_projects(Some(&a.id)).await.unwrap(),
        vec![a_web.clone(), a_api.clone()]
    );
    assert_eq!(
        store.list_projects(Some(&b.id)).await.unwrap(),
        vec![b_web.clone()]
    );
    assert_eq!(
        store.list_projects(Some(&OrgId::generate())).await.unwrap(),
        vec![]
    );
    assert_eq!(
        store.list_projects(None).await.unwrap(),
        vec![a_web, b_web, a_api]
    );
}

async fn ping_answers(store: SharedStore) {
    store.ping().await.unwrap();
    assert!(["sqlite", "postgres"].contains(&store.backend()));
}
