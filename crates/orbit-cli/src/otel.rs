//! Exports runs' traces (see `orbit_engine::traces`) over OTLP/HTTP with protobuf, configured by
//! the standard `OTEL_*` variables; off unless an endpoint is set. The spans arrive finished,
//! with ids of their own, so they go straight to the SDK's batch processor: no tracer, no
//! context to carry.

use anyhow::Context as _;
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks, SpanProcessor as _};
use orbit_engine::traces::{Attr, SpanRecord};
use std::sync::Arc;

/// The exporter, flushed when the command ends.
pub struct Traces(Arc<BatchSpanProcessor<Tokio>>);

impl Traces {
    /// Sends what is still buffered. Call from outside the runtime, while it still runs.
    pub fn shutdown(self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("warning: traces not all exported: {e}");
        }
    }
}

fn set(name: &str) -> Option<String> {
    crate::settings::var(name)
}

/// Starts exporting when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set and
/// neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says otherwise. Must run
/// inside the runtime.
pub fn install() -> anyhow::Result<Option<Traces>> {
    if set("OTEL_EXPORTER_OTLP_ENDPOINT")
        .or_else(|| set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .is_none()
        || std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(p) = set(name).filter(|p| p != "http/protobuf") {
            // gRPC would bring a second HTTP/2 stack into the binary for what a collector's
            // OTLP/HTTP port (4318) takes as well.
            return Err(crate::settings::invalid(
                name,
                &p,
                "Orbit exports OTLP over HTTP with protobuf only: use `http/protobuf` and the collector's OTLP/HTTP endpoint (port 4318)",
            )
            .into());
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .context("OpenTelemetry exporter")?;
    let mut processor = BatchSpanProcessor::builder(exporter, Tokio).build();
    let resource = Resource::builder()
        .with_service_name(set("OTEL_SERVICE_NAME").unwrap_or_else(|| "orbit".into()))
        .build();
    processor.set_resource(&resource);
    let processor = Arc::new(processor);
    let scope = InstrumentationScope::builder("orbit")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let sink = processor.clone();
    orbit_engine::traces::install(move |span| sink.on_end(span_data(span, &scope)));
    Ok(Some(Traces(processor)))
}

fn context(trace: u128, span: u64) -> SpanContext {
    SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    )
}

fn span_data(span: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let mut links = SpanLinks::default();
    if let Some((trace, id)) = span.link {
        links.links.push(Link::with_context(context(trace, id)));
    }
    SpanData {
        span_context: context(span.trace, span.id),
        parent_span_id: span.parent.map_or(SpanId::INVALID, SpanId::from),
        parent_span_is_remote: span.server,
        span_kind: if span.server {
            SpanKind::Server
        } else {
            SpanKind::Internal
        },
        name: span.name,
        start_time: span.start,
        end_time: span.end,
        attributes: span
            .attributes
            .into_iter()
            .map(|(k, v)| match v {
                Attr::Str(s) => KeyValue::new(k, s),
                Attr::Int(i) => KeyValue::new(k, i),
            })
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links,
        status: span.error.map_or(Status::Unset, Status::error),
        instrumentation_scope: scope.clone(),
    }
}
