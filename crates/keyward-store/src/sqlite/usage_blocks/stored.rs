//! The JSON of a block's events: an array of positional arrays, the fields in
//! the order of [`StoredEvent`] (and of `migrations/sqlite/0004_usage_blocks.sql`'s
//! comment, which shows how to read them with SQL).
//!
//! Kept free of the rest of the crate but [`UsageEvent`] so that
//! `benches/usage_blocks.rs` can compile it next to the hand-written encoder it
//! replaced.

use crate::UsageEvent;
use keyward_core::{KeyId, Micros, OrgId, ProjectId};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Cow;

/// One event as stored. Field order is the stored format: a new field goes
/// last (and must be optional for old rows), none is ever moved.
///
/// Decision: `Deserialize` is derived (serde reads a struct from an array in
/// field order), `Serialize` is written below because the derived one would
/// write an object, and every stored block holds arrays.
#[derive(Deserialize)]
pub(crate) struct StoredEvent<'a> {
    key_id: Cow<'a, str>,
    project_id: Cow<'a, str>,
    org_id: Cow<'a, str>,
    at: i64,
    endpoint: Cow<'a, str>,
    model: Cow<'a, str>,
    status: u16,
    input_tokens: i64,
    cached_input_tokens: i64,
    output_tokens: i64,
    reasoning_tokens: i64,
    cost_micros: i64,
    upstream_latency_ms: i64,
    total_latency_ms: i64,
    client_ip: Option<Cow<'a, str>>,
    streamed: bool,
    incomplete: bool,
}

/// Number of fields of [`StoredEvent`].
const FIELDS: usize = 17;

impl Serialize for StoredEvent<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(FIELDS)?;
        t.serialize_element(&self.key_id)?;
        t.serialize_element(&self.project_id)?;
        t.serialize_element(&self.org_id)?;
        t.serialize_element(&self.at)?;
        t.serialize_element(&self.endpoint)?;
        t.serialize_element(&self.model)?;
        t.serialize_element(&self.status)?;
        t.serialize_element(&self.input_tokens)?;
        t.serialize_element(&self.cached_input_tokens)?;
        t.serialize_element(&self.output_tokens)?;
        t.serialize_element(&self.reasoning_tokens)?;
        t.serialize_element(&self.cost_micros)?;
        t.serialize_element(&self.upstream_latency_ms)?;
        t.serialize_element(&self.total_latency_ms)?;
        t.serialize_element(&self.client_ip)?;
        t.serialize_element(&self.streamed)?;
        t.serialize_element(&self.incomplete)?;
        t.end()
    }
}

impl<'a> From<&'a UsageEvent> for StoredEvent<'a> {
    fn from(e: &'a UsageEvent) -> Self {
        StoredEvent {
            key_id: Cow::Borrowed(e.key_id.as_str()),
            project_id: Cow::Borrowed(e.project_id.as_str()),
            org_id: Cow::Borrowed(e.org_id.as_str()),
            at: e.at,
            endpoint: Cow::Borrowed(&e.endpoint),
            model: Cow::Borrowed(&e.model),
            status: e.status,
            input_tokens: e.input_tokens,
            cached_input_tokens: e.cached_input_tokens,
            output_tokens: e.output_tokens,
            reasoning_tokens: e.reasoning_tokens,
            cost_micros: e.cost_micros.0,
            upstream_latency_ms: e.upstream_latency_ms,
            total_latency_ms: e.total_latency_ms,
            client_ip: e.client_ip.as_deref().map(Cow::Borrowed),
            streamed: e.streamed,
            incomplete: e.incomplete,
        }
    }
}

impl From<StoredEvent<'_>> for UsageEvent {
    fn from(s: StoredEvent<'_>) -> Self {
        UsageEvent {
            key_id: KeyId::from_trusted(s.key_id.into_owned()),
            project_id: ProjectId::from_trusted(s.project_id.into_owned()),
            org_id: OrgId::from_trusted(s.org_id.into_owned()),
            at: s.at,
            endpoint: s.endpoint.into_owned(),
            model: s.model.into_owned(),
            status: s.status,
            input_tokens: s.input_tokens,
            cached_input_tokens: s.cached_input_tokens,
            output_tokens: s.output_tokens,
            reasoning_tokens: s.reasoning_tokens,
            cost_micros: Micros(s.cost_micros),
            upstream_latency_ms: s.upstream_latency_ms,
            total_latency_ms: s.total_latency_ms,
            client_ip: s.client_ip.map(Cow::into_owned),
            streamed: s.streamed,
            incomplete: s.incomplete,
        }
    }
}

/// A block's body: the events as a JSON array of [`StoredEvent`]s.
pub(crate) fn encode_body(events: &[UsageEvent]) -> serde_json::Result<String> {
    /// Serializes the events as a sequence without collecting them first.
    struct Body<'a>(&'a [UsageEvent]);
    impl Serialize for Body<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_seq(self.0.iter().map(StoredEvent::from))
        }
    }
    serde_json::to_string(&Body(events))
}

/// The events of a block's body, in stored order.
pub(crate) fn decode_body(body: &str) -> serde_json::Result<Vec<UsageEvent>> {
    let stored: Vec<StoredEvent<'_>> = serde_json::from_str(body)?;
    Ok(stored.into_iter().map(UsageEvent::from).collect())
}
