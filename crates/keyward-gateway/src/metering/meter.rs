//! Metering one request: a [`RequestMeter`] travels with the request and turns
//! into exactly one usage event, whether the response completes, fails, or the
//! client hangs up ([`MeteredBody`] reports on drop).

use crate::limits::admission::Admission;
use crate::metering::sse_tap::SseTap;
use crate::metering::usage_parse::read;
use crate::metering::Metering;
use crate::upstream::{UpstreamBody, UpstreamError};
use bytes::Bytes;
use hyper::body::{Body, Frame};
use keyward_core::{Micros, ModelPrice, TokenUsage};
use keyward_store::{KeyRecord, UsageEvent};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

/// The largest non-streamed response kept in memory to read its usage; larger
/// responses are forwarded but counted as incomplete.
const MAX_JSON_TAP: usize = 16 * 1024 * 1024;

/// Who asked, for what, and when: known before the request's body is read.
pub struct Arrival {
    /// The key that made the request.
    pub key: Arc<KeyRecord>,
    /// Request path (or a stand-in when the path itself was refused).
    pub endpoint: String,
    /// Arrival time, ms since the epoch.
    pub at_ms: i64,
    /// Arrival instant, for latency.
    pub started: Instant,
    /// Client address.
    pub client_ip: Option<String>,
}

/// What the request's body said, as far as it was read.
#[derive(Default)]
pub struct Asked {
    /// Model named by the request, or empty.
    pub model: String,
    /// Price of the model, when known.
    pub price: Option<ModelPrice>,
    /// Whether the request asked for a stream.
    pub stream: bool,
    /// Input tokens to charge if the upstream never reports usage: an upper bound
    /// from the request body's size (a token is at least one byte).
    pub input_estimate: i64,
}

/// Everything needed to write the request's usage event. Built once, when the
/// request was admitted or refused; only the upstream's answer is added later
/// ([`RequestMeter::answered`]).
pub struct RequestMeter {
    metering: Arc<Metering>,
    admission: Option<Admission>,
    key: Arc<KeyRecord>,
    endpoint: String,
    /// Replaced by the response's model when the request named none.
    model: String,
    price: Option<ModelPrice>,
    at_ms: i64,
    started: Instant,
    /// Time to the upstream's headers; -1 while there is no answer.
    upstream_latency_ms: i64,
    /// Status sent to the client.
    status: u16,
    client_ip: Option<String>,
    streamed: bool,
    input_estimate: i64,
}

impl RequestMeter {
    /// A meter for a request that arrived, asked for `asked`, and holds
    /// `admission` (none when it was refused before admission).
    pub fn new(
        metering: Arc<Metering>,
        arrival: Arrival,
        asked: Asked,
        admission: Option<Admission>,
    ) -> Self {
        Self {
            metering,
            admission,
            key: arrival.key,
            endpoint: arrival.endpoint,
            model: asked.model,
            price: asked.price,
            at_ms: arrival.at_ms,
            started: arrival.started,
            upstream_latency_ms: -1,
            status: 0,
            client_ip: arrival.client_ip,
            streamed: asked.stream,
            input_estimate: asked.input_estimate,
        }
    }

    /// The request's hold on rate limits and budgets, while it has one.
    pub fn admission_mut(&mut self) -> Option<&mut Admission> {
        self.admission.as_mut()
    }

    /// The upstream answered with `status` after `latency_ms`.
    pub fn answered(&mut self, status: u16, latency_ms: i64) {
        self.status = status;
        self.upstream_latency_ms = latency_ms;
    }

    /// Writes the event of a request that never got an upstream answer: it was
    /// refused with `status`, and costs nothing.
    pub fn refused(mut self, status: u16) {
        self.status = status;
        self.finish(None, 0, None);
    }
}

impl RequestMeter {
    /// Writes the event. `usage` is what the upstream reported; when absent and
    /// the upstream accepted the request (2xx) as a stream or with `produced`
    /// tokens seen, the request is charged for those plus its input estimate and
    /// marked incomplete, never silently zero.
    ///
    /// Decision: a request the upstream refused (4xx/5xx) and that reported no
    /// usage costs nothing and is not incomplete: no model ran.
    ///
    /// Decision: a request whose model has no price is metered with its tokens
    /// and a cost of 0, and is never silent about it: it is counted in
    /// `keyward_unpriced_requests_total` and logged at WARN with its model (at
    /// most one line a minute). Under a hard budget such a request is refused
    /// before it is forwarded (`cost_not_bounded`).
    pub fn finish(mut self, usage: Option<TokenUsage>, produced: i64, model: Option<&str>) {
        if let Some(m) = model.filter(|m| !m.is_empty()) {
            if self.model.is_empty() {
                self.model = m.to_owned();
            }
            // The model that answered has a price where the requested alias
            // had none (only looked up then: the usual request is priced).
            if self.price.is_none() {
                self.price = self.metering.prices.get(m).copied();
            }
        }
        let accepted = self.upstream_latency_ms >= 0 && (200..300).contains(&self.status);
        let incomplete = usage.is_none() && accepted && (self.streamed || produced > 0);
        let usage = usage.unwrap_or(if incomplete {
            TokenUsage {
                input: self.input_estimate,
                output: produced,
                ..Default::default()
            }
        } else {
            TokenUsage::default()
        });
        let cost = match self.price {
            Some(p) => p.cost(&usage),
            None => {
                if usage.input + usage.output > 0 {
                    self.unpriced();
                }
                Micros::ZERO
            }
        };
        if let Some(admission) = self.admission.take() {
            if let Some(permit) = admission.permit {
                permit.finish(usage.input + usage.output);
            }
            if let Some(reservation) = admission.reservation {
                let crossed = reservation.settle(cost.0);
                if !crossed.is_empty() {
                    (self.metering.budget_alerts)(crossed);
                }
            }
        }
        self.metering.usage.record(UsageEvent {
            key_id: self.key.id.clone(),
            project_id: self.key.project_id.clone(),
            org_id: self.key.org_id.clone(),
            at: self.at_ms,
            endpoint: self.endpoint,
            model: self.model,
            status: self.status,
            input_tokens: usage.input,
            cached_input_tokens: usage.cached_input,
            output_tokens: usage.output,
            reasoning_tokens: usage.reasoning,
            cost_micros: cost,
            upstream_latency_ms: self.upstream_latency_ms.max(0),
            total_latency_ms: self.started.elapsed().as_millis() as i64,
            client_ip: self.client_ip,
            streamed: self.streamed,
            incomplete,
        });
    }
}

impl RequestMeter {
    /// Says that this request, which used tokens, is metered at $0.
    #[cold]
    fn unpriced(&self) {
        let metrics = &self.metering.metrics;
        metrics.unpriced_requests.inc();
        if metrics.unpriced_warning_due(self.metering.clock.now_ms()) {
            // The model name comes from the request: bounded, and quoted by `?`.
            let model: String = self.model.chars().take(100).collect();
            tracing::warn!(
                model = ?model,
                endpoint = %self.endpoint,
                "a request used tokens of a model with no price and was metered at $0; add the model to the price table (keyward_unpriced_requests_total counts them)"
            );
        }
    }
}

enum Tap {
    Sse(SseTap),
    Json { copy: Vec<u8>, overflow: bool },
}

/// The upstream's response body on its way to the client, watched for usage.
pub struct MeteredBody {
    inner: UpstreamBody,
    tap: Tap,
    meter: Option<RequestMeter>,
    ended: bool,
}

impl MeteredBody {
    /// Wraps an SSE body; `strip_usage_chunk` as in [`SseTap::new`]. The
    /// request is metered as streamed, whatever it asked for.
    pub fn sse(inner: UpstreamBody, mut meter: RequestMeter, strip_usage_chunk: bool) -> Self {
        meter.streamed = true;
        Self {
            inner,
            tap: Tap::Sse(SseTap::new(strip_usage_chunk)),
            meter: Some(meter),
            ended: false,
        }
    }

    /// Wraps any other body; usage is read from it as JSON at the end.
    pub fn json(inner: UpstreamBody, meter: RequestMeter) -> Self {
        let copy = Vec::with_capacity(inner.size_hint().lower().min(64 * 1024) as usize);
        Self {
            inner,
            tap: Tap::Json {
                copy,
                overflow: false,
            },
            meter: Some(meter),
            ended: false,
        }
    }

    fn settle(&mut self) {
        let Some(meter) = self.meter.take() else {
            return;
        };
        match &self.tap {
            Tap::Sse(tap) => meter.finish(tap.usage, tap.text_events, None),
            Tap::Json { copy, overflow } => {
                // hyper may drop a body of known length right after its last byte,
                // without polling for the end: a copy that parses is complete.
                let found = if *overflow { None } else { read(copy) };
                let (usage, model) = found.map_or((None, None), |f| (f.usage, f.model));
                meter.finish(usage, 0, model.as_deref());
            }
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(other) => return Poll::Ready(Some(Ok(other))),
                    };
                    match &mut this.tap {
                        Tap::Sse(tap) => {
                            let out = tap.push(data);
                            if out.is_empty() {
                                continue;
                            }
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                        Tap::Json { copy, overflow } => {
                            if !*overflow && copy.len() + data.len() <= MAX_JSON_TAP {
                                copy.extend_from_slice(&data);
                            } else {
                                *overflow = true;
                                copy.clear();
                            }
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                    }
                }
                Some(Err(e)) => {
                    // The upstream broke off: charge what was seen; the client sees
                    // a truncated response, not a clean end.
                    this.ended = true;
                    this.settle();
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.ended = true;
                    let rest = match &mut this.tap {
                        Tap::Sse(tap) => tap.finish(),
                        Tap::Json { .. } => Bytes::new(),
                    };
                    this.settle();
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

impl Drop for MeteredBody {
    /// The client hung up (or the server is shutting down): dropping `inner`
    /// closes the upstream connection, and what was seen is charged.
    fn drop(&mut self) {
        self.settle();
    }
}
