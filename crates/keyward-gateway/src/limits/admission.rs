//! Admission: between "this key is valid" and "forward it", everything that may
//! refuse a request — restrictions, rate limits, budgets — in that order, cheapest
//! first. Rate limits and budgets are charged in one call to the
//! [`crate::limits::Counters`], all or nothing; the rate limit [`Permit`] and the
//! budget [`Reservation`] give back what they took when dropped unused.

use crate::error::GatewayError;
use crate::limits::budgets::{AccountId, CostBound, Exhausted, PeriodBudgets};
use crate::limits::counters::{Charge, Charged, Refusal};
use crate::limits::held::{Permit, Reservation};
use crate::limits::rate::{Limits, RateHeaders, Subject};
use crate::limits::{Backlog, SpendControl};
use crate::request::input_bound::input_token_bound;
use keyward_core::{Budget, BudgetScope, KeyPolicy, ModelPrice};
use keyward_store::{KeyRecord, Project, UsageFilter};
use std::net::IpAddr;
use std::sync::Arc;

/// What admission needs to know about a request.
pub struct Ask<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path, e.g. `/v1/chat/completions`.
    pub path: &'a str,
    /// Model named in the body (empty when the body names none); `None` when
    /// the request has no body that could name one (a GET, or an unread body).
    pub model: Option<&'a str>,
    /// The body was forwarded without being read (not JSON), so its model, if
    /// any, is unknown.
    pub uninspected_body: bool,
    /// The client's address.
    pub client_ip: IpAddr,
    /// The `Origin` a browser sent (none from other clients).
    pub origin: Option<&'a str>,
    /// The request body.
    pub body: &'a [u8],
    /// The output cap the request set.
    pub requested_output: Option<i64>,
    /// The model's price.
    pub price: Option<ModelPrice>,
}

/// An admitted request's hold on limits and budgets.
pub struct Admission {
    /// Rate-limit permit.
    pub permit: Option<Permit>,
    /// Budget reservation.
    pub reservation: Option<Reservation>,
    /// The output cap the gateway must set upstream.
    pub output_cap: Option<i64>,
    /// Allowances for the response headers.
    pub headers: RateHeaders,
}

/// The key that owns a request's limits: the token itself and, for an ephemeral
/// token, its parent.
pub struct Caller {
    /// The key or token presented.
    pub key: Arc<KeyRecord>,
    /// The parent key of an ephemeral token.
    pub parent: Option<Arc<KeyRecord>>,
}

/// Applies restrictions, rate limits and budgets.
pub async fn admit(
    limits: &SpendControl,
    caller: &Caller,
    ask: &Ask<'_>,
) -> Result<Admission, GatewayError> {
    // Checked first: a request served now could not be counted.
    if limits.unwritten.backlog() == Backlog::Full {
        return Err(GatewayError::UsageBacklog);
    }
    let policies: Vec<&KeyPolicy> = std::iter::once(&caller.key.policy)
        .chain(caller.parent.as_ref().map(|p| &p.policy))
        .collect();
    check_access(&policies, ask.method, ask.path, ask.client_ip)?;
    check_origin(caller, ask.origin)?;
    for p in policies.iter().filter(|p| p.restricts_models()) {
        check_model(p, ask)?;
    }

    let now = limits.clock.now_ms();
    let project = project(limits, caller).await?;
    let budgets = budgets(limits, caller, now).await?;
    let tpm = caller.key.policy.tpm.is_some()
        || caller
            .parent
            .as_ref()
            .is_some_and(|p| p.policy.tpm.is_some())
        || project.policy.tpm.is_some();
    // The bound walks the whole body: only when a token limit or a budget needs it.
    let input_tokens = if tpm || !budgets.is_empty() {
        input_token_bound(ask.body)
    } else {
        0
    };
    let estimated_tokens = input_tokens + ask.requested_output.unwrap_or(0);
    let mut subjects = subjects(caller, &project);
    subjects.retain(|(_, l)| !l.is_empty());
    // A request whose cost has no bound is refused after the rate limits, as a
    // rate-limited request is told so first; it is charged nothing.
    let (bound, unbounded) = if budgets.is_empty() {
        (None, None)
    } else {
        match cost_bound(limits, ask, input_tokens) {
            Ok(bound) => (bound, None),
            Err(e) => (None, Some(e)),
        }
    };
    let reserve = bound.map(|b| (budgets.as_slice(), b));
    let charged = charge(limits, caller, &subjects, estimated_tokens, reserve, now).await?;
    let counters = &limits.counters;
    let permit = Permit::new(
        counters.clone(),
        subjects,
        estimated_tokens,
        charged.headers,
    );
    if let Some(e) = unbounded {
        return Err(e); // the permit, dropped, gives back what it took
    }
    let reservation = bound.map(|_| Reservation::new(counters.clone(), budgets, charged.held));
    Ok(Admission {
        permit: Some(permit),
        reservation,
        output_cap: charged.output_cap,
        headers: charged.headers,
    })
}

/// Charges the counters, loading budget accounts they do not hold yet.
async fn charge(
    limits: &SpendControl,
    caller: &Caller,
    subjects: &[(Subject, Limits)],
    estimated_tokens: i64,
    reserve: Option<(&PeriodBudgets, CostBound)>,
    now: i64,
) -> Result<Charged, GatewayError> {
    // Accounts just loaded are kept for minutes, so a second attempt succeeds;
    // a third guards against a counters implementation that never keeps them.
    for _ in 0..3 {
        let charge = Charge {
            subjects,
            estimated_tokens,
            reserve,
            now_ms: now,
        };
        match limits.counters.charge(charge).await {
            Ok(charged) => return Ok(charged),
            Err(Refusal::RateLimited(r)) => return Err(GatewayError::RateLimited(r)),
            Err(Refusal::Exhausted(e)) => return Err(exhausted(e)),
            Err(Refusal::Unavailable) => return Err(GatewayError::LimitsUnavailable),
            Err(Refusal::Unloaded(ids)) => {
                for id in ids {
                    load(limits, id, caller, now).await?;
                }
            }
        }
    }
    tracing::error!("budget accounts were loaded but the counters do not hold them");
    Err(GatewayError::Internal)
}

fn exhausted(e: Exhausted) -> GatewayError {
    GatewayError::InsufficientQuota(format!(
        "The {} budget ({}) is exhausted: ${:.6} of ${:.6} remains and this request may cost up to ${:.6}. Ask an administrator to raise it, or wait for the next period.",
        e.scope.kind(),
        e.scope.id(),
        e.remaining.max(0) as f64 / 1e6,
        e.amount as f64 / 1e6,
        e.needed as f64 / 1e6,
    ))
}

/// Holds a request to a key's model restriction. A body the gateway did not
/// read is refused (400: its model cannot be checked), and a request that can
/// run a model but names none is refused like a model not allowed: an
/// upstream may pick a default model for it.
fn check_model(p: &KeyPolicy, ask: &Ask<'_>) -> Result<(), GatewayError> {
    if ask.uninspected_body {
        return Err(GatewayError::BadRequest(
            "This key may only use some models, and the gateway can only check the model of a JSON body: send the request body as JSON.".into(),
        ));
    }
    match ask.model {
        None => Ok(()),
        Some(m) if p.allows_model(m) => Ok(()),
        Some("") => Err(GatewayError::ModelNotAllowed(
            "This key may only use some models, and the request names none: set `model`.".into(),
        )),
        Some(m) => Err(GatewayError::ModelNotAllowed(format!(
            "This key is not allowed to use the model {m:?}."
        ))),
    }
}

/// Methods that neither run a model nor cost anything.
pub(crate) fn costs_nothing(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "DELETE")
}

/// Admission of a request the gateway answers itself and that costs nothing
/// upstream — minting a token (`POST /keyward/v1/tokens`): the caller's
/// networks and endpoints, then its rate limits, which the request counts
/// toward like any other (the same limiter and subjects as [`admit`], so the
/// refusal and its `Retry-After` and `x-ratelimit-*` headers are the same). It
/// names no model and spends no money, so model restrictions and budgets do
/// not apply. The permit counts once committed and gives back when dropped.
pub async fn admit_local(
    limits: &SpendControl,
    caller: &Caller,
    method: &str,
    path: &str,
    client_ip: IpAddr,
    origin: Option<&str>,
) -> Result<Permit, GatewayError> {
    let policies: Vec<&KeyPolicy> = std::iter::once(&caller.key.policy)
        .chain(caller.parent.as_ref().map(|p| &p.policy))
        .collect();
    check_access(&policies, method, path, client_ip)?;
    check_origin(caller, origin)?;
    let project = project(limits, caller).await?;
    let mut subjects = subjects(caller, &project);
    subjects.retain(|(_, l)| !l.is_empty());
    let charged = charge(limits, caller, &subjects, 0, None, limits.clock.now_ms()).await?;
    Ok(Permit::new(
        limits.counters.clone(),
        subjects,
        0,
        charged.headers,
    ))
}

/// The network and endpoint restrictions of every policy above a request.
fn check_access(
    policies: &[&KeyPolicy],
    method: &str,
    path: &str,
    client_ip: IpAddr,
) -> Result<(), GatewayError> {
    for p in policies {
        if !p.allows_ip(client_ip) {
            return Err(GatewayError::IpNotAllowed(format!(
                "This key cannot be used from {client_ip}."
            )));
        }
    }
    for p in policies {
        if !p.allows_endpoint(method, path) {
            return Err(GatewayError::PermissionDenied(format!(
                "This key is not allowed to call {method} {path}."
            )));
        }
    }
    Ok(())
}

/// A request a browser sent (it carries `Origin`) is the page of that origin
/// using the key: allowed only if the key (a token's parent) lists the origin,
/// and a token that lists origins of its own lists it too. The preflight
/// cannot know the key, so this is where a page holding a key that does not
/// list its origin is stopped; a key listing no origin cannot be used from a
/// browser at all.
fn check_origin(caller: &Caller, origin: Option<&str>) -> Result<(), GatewayError> {
    let Some(origin) = origin else {
        return Ok(());
    };
    let root = caller.parent.as_ref().unwrap_or(&caller.key);
    let token_narrows = caller.parent.is_some() && !caller.key.policy.origins.is_empty();
    if root.policy.lists_origin(origin)
        && (!token_narrows || caller.key.policy.lists_origin(origin))
    {
        return Ok(());
    }
    Err(GatewayError::OriginNotAllowed(format!(
        "This key cannot be used from a web page at {origin}: add the origin to the key's allowed origins."
    )))
}

/// Whose rate limits a request counts toward: the key, a token's parent, and
/// the project.
fn subjects(caller: &Caller, project: &Project) -> Vec<(Subject, Limits)> {
    let mut subjects = vec![(
        Subject::Key(caller.key.id.clone()),
        limits_of(&caller.key.policy),
    )];
    if let Some(parent) = &caller.parent {
        subjects.push((Subject::Key(parent.id.clone()), limits_of(&parent.policy)));
    }
    subjects.push((
        Subject::Project(project.id.clone()),
        Limits {
            rpm: project.policy.rpm,
            tpm: project.policy.tpm,
            max_concurrent: project.policy.max_concurrent,
        },
    ));
    subjects
}

fn limits_of(p: &KeyPolicy) -> Limits {
    Limits {
        rpm: p.rpm,
        tpm: p.tpm,
        max_concurrent: p.max_concurrent,
    }
}

/// The cost bound of a request, `None` when it costs nothing.
fn cost_bound(
    limits: &SpendControl,
    ask: &Ask<'_>,
    input_tokens: i64,
) -> Result<Option<CostBound>, GatewayError> {
    if costs_nothing(ask.method) {
        return Ok(None);
    }
    if let Some(fixed) = limits.route_costs.get(ask.path) {
        return Ok(Some(CostBound {
            input_e6: i128::from(fixed.0) * 1_000_000,
            output_price: 0,
            requested_output: Some(0),
            model_max_output: None,
        }));
    }
    let metered = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/embeddings",
    ];
    if !metered.contains(&ask.path) {
        return Err(GatewayError::CostUnbounded(format!(
            "{} {} has no cost bound, so it cannot run under a hard budget; an administrator can give the route a fixed cost in the config.",
            ask.method, ask.path
        )));
    }
    let Some(price) = ask.price else {
        return Err(GatewayError::CostUnbounded(format!(
            "The model {:?} has no price in the gateway's price table, so its cost cannot be bounded under a hard budget.",
            ask.model.unwrap_or_default()
        )));
    };
    let embeddings = ask.path == "/v1/embeddings";
    Ok(Some(CostBound {
        input_e6: i128::from(input_tokens) * i128::from(price.input),
        output_price: if embeddings { 0 } else { price.output },
        requested_output: if embeddings {
            Some(0)
        } else {
            ask.requested_output
        },
        model_max_output: price.max_output_tokens,
    }))
}

async fn project(limits: &SpendControl, caller: &Caller) -> Result<Arc<Project>, GatewayError> {
    let now = limits.clock.now_ms();
    let id = &caller.key.project_id;
    if let Some(p) = limits.projects.get(id, now) {
        return Ok(p);
    }
    let p = limits
        .store
        .get_project(id)
        .await
        .map_err(internal)?
        .ok_or(GatewayError::Internal)?;
    let p = Arc::new(p);
    limits.projects.insert(id.clone(), p.clone(), now);
    Ok(p)
}

/// Makes a budget scope from an id.
type ScopeOf = fn(String) -> BudgetScope;

/// The budgets above a request with the start of their current period.
async fn budgets(
    limits: &SpendControl,
    caller: &Caller,
    now: i64,
) -> Result<Vec<(Arc<Budget>, i64)>, GatewayError> {
    let key = &caller.key;
    let scopes: [Option<(ScopeOf, &str)>; 4] = [
        Some((BudgetScope::Key, key.id.as_str())),
        caller
            .parent
            .as_ref()
            .map(|p| (BudgetScope::Key as _, p.id.as_str())),
        Some((BudgetScope::Project, key.project_id.as_str())),
        Some((BudgetScope::Org, key.org_id.as_str())),
    ];
    let mut missing = Vec::new();
    let mut found = Vec::new();
    for (scope, id) in scopes.into_iter().flatten() {
        match limits.budgets.get(id, now) {
            Some(Some(b)) => found.push(b),
            Some(None) => {}
            None => missing.push(scope(id.to_owned())),
        }
    }
    if !missing.is_empty() {
        let loaded = limits.store.budgets_for(&missing).await.map_err(internal)?;
        for s in missing {
            let b = loaded.iter().find(|b| b.scope == s).cloned().map(Arc::new);
            limits.budgets.insert(s.id().to_owned(), b.clone(), now);
            found.extend(b);
        }
    }
    Ok(found
        .into_iter()
        .map(|b| {
            let start = b.period.start(now);
            (b, start)
        })
        .collect())
}

/// Loads a budget account's spend for its period from storage.
async fn load(
    limits: &SpendControl,
    id: AccountId,
    _caller: &Caller,
    now: i64,
) -> Result<(), GatewayError> {
    // Events still waiting in the batch must count; while they cannot be
    // stored, storage's spend is short of them: refused, not waited for.
    if limits.unwritten.backlog() != Backlog::Flowing {
        return Err(GatewayError::LimitsUnavailable);
    }
    limits.unwritten.flush().await;
    let spent = spent_since(limits, &id.0, id.1).await.map_err(internal)?;
    limits.counters.load(id, spent, now).await;
    Ok(())
}

/// What a budget's scope has spent since `start` (ms; 0 for all time), as
/// stored: the usage of the organization, the project, or the key and the
/// ephemeral tokens derived from it. Also what `GET /api/v1/budgets` shows.
pub(crate) async fn spent_since(
    limits: &SpendControl,
    scope: &BudgetScope,
    start: i64,
) -> Result<i64, keyward_store::StoreError> {
    let from = (start > 0).then_some(start);
    let mut filter = UsageFilter {
        from,
        ..Default::default()
    };
    let mut keys = Vec::new();
    match scope {
        BudgetScope::Org(id) => filter.org = keyward_core::OrgId::parse(id),
        BudgetScope::Project(id) => filter.project = keyward_core::ProjectId::parse(id),
        BudgetScope::Key(id) => {
            let id = keyward_core::KeyId::parse(id).ok_or_else(|| {
                keyward_store::StoreError::Backend(format!("budget scope {id:?} is not a key id"))
            })?;
            // A key's budget also pays for the ephemeral tokens derived from it.
            for child in limits.store.child_keys(&id).await? {
                keys.push(child.id);
            }
            keys.push(id);
        }
    }
    if keys.is_empty() {
        return Ok(limits.store.usage_totals(&filter).await?.cost_micros);
    }
    let mut total = 0;
    for k in keys {
        filter.key = Some(k);
        total += limits.store.usage_totals(&filter).await?.cost_micros;
    }
    Ok(total)
}

fn internal(e: keyward_store::StoreError) -> GatewayError {
    tracing::error!(error = %e, "storage failed during admission");
    GatewayError::Internal
}
