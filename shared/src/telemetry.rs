//! Tracing set-up (log lines, and spans over OTLP when asked for), and the
//! one helper that keeps secrets out of log lines.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogFormat, Telemetry};
use crate::trace::TraceParent;

/// Whether this process exports its spans (set once by [`init`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber: `RUST_LOG` filter, text or JSON lines on
/// stdout, each tagged with the service name; and, when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
/// is set, the spans exported over OTLP/HTTP (the other standard `OTEL_*`
/// variables apply: protocol, headers, service name, sampler, batching).
/// Call once, first thing in `main`, and hold what it returns until the
/// end: dropping it sends the last spans.
#[must_use = "dropping it stops the span export"]
pub fn init(service: &'static str, config: &Telemetry) -> Export {
    use std::io::IsTerminal;
    let colours = std::io::stdout().is_terminal();
    let (export, failure) = match exporter(service) {
        Ok(provider) => (Export { provider }, None),
        Err(error) => (Export { provider: None }, Some(error)),
    };
    let tracer = export
        .provider
        .as_ref()
        .map(|provider| provider.tracer(service));
    EXPORTING.store(tracer.is_some(), Ordering::Release);
    let subscriber = build(service, config, std::io::stdout, colours, tracer);
    tracing::subscriber::set_global_default(subscriber)
        .expect("init is called once, before anything else logs");
    tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    if let Some(error) = failure {
        tracing::error!(%error, "not exporting spans: the OTLP exporter could not be built");
    }
    export
}

/// The span export of this process, if it has one.
pub struct Export {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Export {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, Ordering::Release);
            if let Err(error) = provider.shutdown() {
                eprintln!("span export: {error}");
            }
        }
    }
}

/// The OTLP/HTTP exporter and its provider, when an endpoint is set.
fn exporter(service: &'static str) -> Result<Option<SdkTracerProvider>, String> {
    let set = |name: &str| std::env::var_os(name).is_some_and(|value| !value.is_empty());
    let wanted = set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value == "true");
    if !wanted || disabled {
        return Ok(None);
    }
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|error| error.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(service);
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// Whether this process exports its spans: where a span would exist only
/// for the export, it is made only then.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Acquire)
}

/// The trace context `span` (this hop) passes on, continuing `incoming`
/// (what the caller sent; `None` starts a trace), with its trace id
/// recorded on the span's `trace_id` field. The one way a hop continues a
/// trace, in the api, the worker and the chat-system.
///
/// With spans exported, `span` becomes the child of `incoming` in the
/// exported trace, and what is passed on names `span`: the next hop's span
/// is its child. Otherwise a fresh id stands for this hop.
pub fn hop(span: &tracing::Span, incoming: Option<TraceParent>) -> TraceParent {
    let passed_on = exported_hop(span, incoming)
        .unwrap_or_else(|| incoming.map_or_else(TraceParent::root, |parent| parent.child()));
    span.record("trace_id", passed_on.trace_id());
    passed_on
}

fn exported_hop(span: &tracing::Span, incoming: Option<TraceParent>) -> Option<TraceParent> {
    if !exporting() {
        return None;
    }
    if let Some(parent) = incoming {
        let (trace_id, parent_id, flags) = parent.ids();
        let remote = SpanContext::new(
            TraceId::from(trace_id),
            SpanId::from(parent_id),
            TraceFlags::new(flags),
            true,
            TraceState::default(),
        );
        let context = opentelemetry::Context::new().with_remote_span_context(remote);
        span.set_parent(context).ok()?;
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    if !own.is_valid() {
        return None;
    }
    TraceParent::from_ids(
        u128::from_be_bytes(own.trace_id().to_bytes()),
        u64::from_be_bytes(own.span_id().to_bytes()),
        own.trace_flags().to_u8(),
    )
}

/// The subscriber [`init`] installs, writing to `writer`: what a test uses
/// to read the lines a binary would print. Every line carries the fields
/// of the spans it is in (`trace_id`, `job_id` ...): in text as
/// `span{field=value}:`, in JSON under `span` and `spans`.
pub fn subscriber<W>(
    service: &'static str,
    config: &Telemetry,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    build(service, config, writer, false, None)
}

/// Text lines get terminal colours only when `colours` (a terminal reads
/// them); files and collectors get plain text. With a `tracer`, spans are
/// also exported. `RUST_LOG` filters the lines only: the export takes the
/// spans of [`EXPORTED_SPANS`] whatever the log level, so `RUST_LOG=warn`
/// keeps logs quiet without emptying the traces.
fn build<W>(
    service: &'static str,
    config: &Telemetry,
    writer: W,
    colours: bool,
    tracer: Option<Tracer>,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&config.rust_log).unwrap_or_else(|error| {
        eprintln!(
            "{service}: ignoring invalid RUST_LOG {:?}: {error}",
            config.rust_log
        );
        EnvFilter::new("info")
    });
    let lines = tracing_subscriber::fmt::layer()
        .with_target(true)
        .with_ansi(colours)
        .with_writer(writer);
    let registry = tracing_subscriber::registry();
    match config.log_format {
        LogFormat::Json => Box::new(
            registry
                .with(lines.json().flatten_event(true).with_filter(filter))
                .with(spans(tracer)),
        ),
        LogFormat::Text => Box::new(registry.with(lines.with_filter(filter)).with(spans(tracer))),
    }
}

/// What is exported when spans are: the spans (and the events in them) of
/// the three binaries at INFO and above (a create's request, job, bulk
/// write and record spans), and only warnings of their dependencies.
pub const EXPORTED_SPANS: &str = "warn,api=info,worker=info,chat_system=info,shared=info";

/// The layer that turns `tracing` spans into exported ones, with its own
/// filter ([`EXPORTED_SPANS`]); none without a tracer, so that nothing is
/// enabled for it (a `None` layer takes no part in the callsites' interest).
fn spans<S>(tracer: Option<Tracer>) -> Option<impl Layer<S>>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    // The spans carry what matters (route, token, job, number, trace); not
    // source locations, thread names, or busy/idle times, which cost two
    // clock reads on every poll of the request's future.
    tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(EnvFilter::new(EXPORTED_SPANS))
    })
}

/// An error and its causes on one line (`a: b: c`): how every log line
/// and error header shows an error (`error = %Chain(&error)`).
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(formatter, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// An application token is a credential: logs only ever get its first
/// characters, enough to correlate lines without being able to replay it.
pub fn short_token(token: &str) -> String {
    let prefix: String = token.chars().take(6).collect();
    if prefix.len() < token.len() {
        format!("{prefix}…")
    } else {
        prefix
    }
}

/// The process-wide Prometheus recorder, installed on first use. Latency
/// histograms (metric names ending in `_seconds`) get buckets from 0.25 ms
/// to 5 s, fine enough to see a p99 under 10 ms; the worker's store lag
/// (from a job's creation to its record stored, which a backlog stretches
/// to minutes) from 1 ms to 10 minutes; sizes (`_jobs`, `_records`,
/// `_deliveries`, `_size`) from 1 to 4096. Every other histogram would be a
/// summary, which cannot be summed across processes.
pub fn metrics() -> metrics_exporter_prometheus::PrometheusHandle {
    use std::sync::OnceLock;

    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            const BUCKETS: &[f64] = &[
                0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0,
            ];
            const LAG: &[f64] = &[
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
                3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0,
                600.0,
            ];
            const SIZES: &[f64] = &[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full("worker_store_lag_seconds".into()),
                        LAG,
                    )
                })
                .and_then(|builder| {
                    builder.set_buckets_for_metric(Matcher::Suffix("_jobs".into()), SIZES)
                })
                .and_then(|builder| {
                    builder.set_buckets_for_metric(Matcher::Suffix("_records".into()), SIZES)
                })
                .and_then(|builder| {
                    builder.set_buckets_for_metric(Matcher::Suffix("_deliveries".into()), SIZES)
                })
                .and_then(|builder| {
                    builder.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZES)
                })
                .expect("the bucket lists are not empty")
                .install_recorder()
                .inspect(|handle| keep_up(handle.clone()))
                .expect("the only place that installs a metrics recorder")
        })
        .clone()
}

/// How often the recorder folds its histograms' samples into their
/// buckets. The recorder keeps every sample until then, and without a
/// scrape it would keep them for good: 24 bytes per create, 20 MiB in the
/// bench's minute of api load.
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(1);

fn keep_up(handle: metrics_exporter_prometheus::PrometheusHandle) {
    let upkeep = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP);
                handle.run_upkeep();
            }
        });
    if let Err(error) = upkeep {
        tracing::warn!(%error, "no metrics upkeep thread: histogram samples wait for a scrape");
    }
}

/// One metric a binary exports: its reference line in code. Each binary
/// lists its own (`api::telemetry::METRICS` ...) and [`register`]s them at
/// start; `docs/METRICS.md` says what each means, and a test holds the two
/// and `/metrics` together.
pub struct Metric {
    pub name: &'static str,
    pub kind: MetricKind,
    pub help: &'static str,
    /// The series registered at zero on start: `&[&[]]` for a metric
    /// without labels, every value of a closed label set, nothing for
    /// labels with open values (a route and a status).
    pub start: &'static [&'static [(&'static str, &'static str)]],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Describes every metric of `table` to the recorder and registers its
/// start series at zero: an alert on `increase()` sees the first dead
/// letter, and a dashboard shows 0 rather than no data.
pub fn register(table: &[Metric]) {
    let _ = metrics();
    for metric in table {
        match metric.kind {
            MetricKind::Counter => {
                ::metrics::describe_counter!(metric.name, metric.help);
                for labels in metric.start {
                    ::metrics::counter!(metric.name, *labels).increment(0);
                }
            }
            MetricKind::Gauge => {
                ::metrics::describe_gauge!(metric.name, metric.help);
                for labels in metric.start {
                    ::metrics::gauge!(metric.name, *labels).increment(0.0);
                }
            }
            MetricKind::Histogram => {
                ::metrics::describe_histogram!(metric.name, metric.help);
                for labels in metric.start {
                    let _ = ::metrics::histogram!(metric.name, *labels);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Chain, short_token};

    #[test]
    fn an_error_is_shown_with_its_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);

        let error = Outer(std::io::Error::other("inner"));

        assert_eq!(Chain(&error).to_string(), "outer: inner");
    }

    #[test]
    fn tokens_are_cut_to_six_characters() {
        assert_eq!(short_token("abcdef0123456789"), "abcdef…");
        assert_eq!(short_token("abc"), "abc");
        assert_eq!(short_token("ééééééé"), "éééééé…");
    }
}
