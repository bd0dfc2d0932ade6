//! Spans over OTLP/HTTP, when `[otlp] endpoint` names a collector: one span per
//! webhook request, with the ids every published message carries in its
//! `traceparent` (the provider's trace, the relay's span), so a trace shows the
//! provider's call, the relay's handling and the consumer. Unset, nothing runs:
//! no thread, no connection, no collector needed.
//!
//! Spans queue in the SDK's batch processor (bounded: past its queue they are
//! dropped, never held) and are sent from its own thread, off the request path.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::event::trace::TraceContext;

/// What one request's span records.
pub struct RequestSpan<'a> {
    pub trace: &'a TraceContext,
    pub source: &'a str,
    pub status: u16,
    pub event_id: Option<&'a str>,
    pub request_id: &'a str,
    pub started: SystemTime,
}

/// The tracer, and the provider that owns the export thread.
pub struct Spans {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Spans {
    /// Builds the exporter and its batch thread. Blocking: call it off the async
    /// workers (the HTTP client is a blocking one).
    pub fn start(endpoint: &str, service_name: &str, timeout: Duration) -> Result<Spans, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_timeout(timeout)
            .with_headers(Default::default())
            .build()
            .map_err(|e| format!("otlp.endpoint: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_string())
                    .build(),
            )
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "hookrelay");
        Ok(Spans { provider, tracer })
    }

    /// Records one finished request as a server span, its ids those of `trace`.
    pub fn record(&self, r: &RequestSpan<'_>) {
        let (trace_id, span_id, parent, flags) = r.trace.ids();
        let trace_id = TraceId::from(trace_id);
        let flags = TraceFlags::new(flags);
        let parent_cx = match parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                SpanId::from(p),
                flags,
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let mut attributes = vec![
            KeyValue::new("hookrelay.source", r.source.to_string()),
            KeyValue::new("http.response.status_code", i64::from(r.status)),
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("hookrelay.request_id", r.request_id.to_string()),
        ];
        if let Some(id) = r.event_id {
            attributes.push(KeyValue::new("hookrelay.event_id", id.to_string()));
        }
        let builder = SpanBuilder::from_name(Cow::Borrowed("webhook"))
            .with_kind(SpanKind::Server)
            .with_trace_id(trace_id)
            .with_span_id(SpanId::from(span_id))
            .with_start_time(r.started)
            .with_attributes(attributes);
        let mut span = self.tracer.build_with_context(builder, &parent_cx);
        if r.status >= 500 {
            opentelemetry::trace::Span::set_status(
                &mut span,
                Status::error(format!("answered {}", r.status)),
            );
        }
        opentelemetry::trace::Span::end(&mut span);
    }

    /// Sends what is queued, within the exporter's timeout. Blocking.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "otlp: spans not all sent at shutdown");
        }
    }
}
