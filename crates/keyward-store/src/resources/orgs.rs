//! Organizations and the projects inside them.

use crate::columns::{backend, write_error};
use crate::common;
use crate::sql::{SqlStore, Stmt};
use crate::{Org, Project, ProjectPolicy, StoreError, StoreResult};
use async_trait::async_trait;
use keyward_core::{OrgId, ProjectId};

/// Organizations and the projects inside them.
#[async_trait]
pub trait OrgStore: Send + Sync {
    /// Creates an organization; `Duplicate` when the name is taken.
    async fn create_org(&self, name: &str, now_ms: i64) -> StoreResult<Org>;
    /// Looks an organization up by its unique name.
    async fn org_by_name(&self, name: &str) -> StoreResult<Option<Org>>;
    /// Looks an organization up by id.
    async fn get_org(&self, id: &OrgId) -> StoreResult<Option<Org>>;
    /// All organizations, oldest first.
    async fn list_orgs(&self) -> StoreResult<Vec<Org>>;
    /// Creates a project in `org`; `Duplicate` when the org has one of that name,
    /// `NotFound` when the org does not exist.
    async fn create_project(&self, org: &OrgId, name: &str, now_ms: i64) -> StoreResult<Project>;
    /// A project by its name within an organization.
    async fn project_by_name(&self, org: &OrgId, name: &str) -> StoreResult<Option<Project>>;
    /// A project by id.
    async fn get_project(&self, id: &ProjectId) -> StoreResult<Option<Project>>;
    /// Projects, of one org or of all, oldest first.
    async fn list_projects(&self, org: Option<&OrgId>) -> StoreResult<Vec<Project>>;
    /// Replaces a project's limits and key-age policy; `NotFound` if absent.
    async fn set_project_policy(
        &self,
        id: &ProjectId,
        policy: &ProjectPolicy,
    ) -> StoreResult<Project>;
}

#[async_trait]
impl<S: SqlStore> OrgStore for S {
    async fn create_org(&self, name: &str, now_ms: i64) -> StoreResult<Org> {
        let db = self.db();
        let org = Org {
            id: OrgId::generate(),
            name: name.to_owned(),
            created_at: now_ms,
        };
        Stmt::new("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(org.id.as_str())
            .bind(&org.name)
            .bind(org.created_at)
            .execute(db.writer())
            .await
            .map_err(|e| write_error(e, "org", "org"))?;
        Ok(org)
    }

    async fn org_by_name(&self, name: &str) -> StoreResult<Option<Org>> {
        let db = self.db();
        let sql = format!("SELECT {} FROM orgs WHERE name = $1", common::ORG_COLUMNS);
        Stmt::new(&sql)
            .bind(name)
            .optional(db.reader(), common::org)
            .await
    }

    async fn get_org(&self, id: &OrgId) -> StoreResult<Option<Org>> {
        let db = self.db();
        let sql = format!("SELECT {} FROM orgs WHERE id = $1", common::ORG_COLUMNS);
        Stmt::new(&sql)
            .bind(id.as_str())
            .optional(db.reader(), common::org)
            .await
    }

    async fn list_orgs(&self) -> StoreResult<Vec<Org>> {
        let db = self.db();
        let sql = format!(
            "SELECT {} FROM orgs ORDER BY created_at, id",
            common::ORG_COLUMNS
        );
        Stmt::new(&sql).all(db.reader(), common::org).await
    }

    async fn create_project(&self, org: &OrgId, name: &str, now_ms: i64) -> StoreResult<Project> {
        let db = self.db();
        let project = Project {
            id: ProjectId::generate(),
            org_id: org.clone(),
            name: name.to_owned(),
            created_at: now_ms,
            policy: ProjectPolicy::default(),
        };
        Stmt::new("INSERT INTO projects (id, org_id, name, created_at) VALUES ($1, $2, $3, $4)")
            .bind(project.id.as_str())
            .bind(project.org_id.as_str())
            .bind(&project.name)
            .bind(project.created_at)
            .execute(db.writer())
            .await
            .map_err(|e| write_error(e, "project", "org"))?;
        Ok(project)
    }

    async fn project_by_name(&self, org: &OrgId, name: &str) -> StoreResult<Option<Project>> {
        let db = self.db();
        let sql = format!(
            "SELECT {} FROM projects WHERE org_id = $1 AND name = $2",
            common::PROJECT_COLUMNS
        );
        Stmt::new(&sql)
            .bind(org.as_str())
            .bind(name)
            .optional(db.reader(), common::project)
            .await
    }

    async fn get_project(&self, id: &ProjectId) -> StoreResult<Option<Project>> {
        let db = self.db();
        let sql = format!(
            "SELECT {} FROM projects WHERE id = $1",
            common::PROJECT_COLUMNS
        );
        Stmt::new(&sql)
            .bind(id.as_str())
            .optional(db.reader(), common::project)
            .await
    }

    async fn list_projects(&self, org: Option<&OrgId>) -> StoreResult<Vec<Project>> {
        let db = self.db();
        let mut qb = Stmt::new(format!("SELECT {} FROM projects", common::PROJECT_COLUMNS));
        if let Some(org) = org {
            qb.push(" WHERE org_id = ").push_bind(org.as_str());
        }
        qb.push(" ORDER BY created_at, id");
        qb.all(db.reader(), common::project).await
    }

    async fn set_project_policy(
        &self,
        id: &ProjectId,
        policy: &ProjectPolicy,
    ) -> StoreResult<Project> {
        let db = self.db();
        let sql = format!(
            "UPDATE projects SET policy = $1 WHERE id = $2 RETURNING {}",
            common::PROJECT_COLUMNS
        );
        let row = Stmt::new(&sql)
            .bind(common::encode_json(policy, "project policy")?)
            .bind(id.as_str())
            .fetch_optional(db.writer())
            .await
            .map_err(backend)?;
        common::project(&row.ok_or(StoreError::NotFound("project"))?)
    }
}
