//! Logs and traces. Logs: human or JSON lines on stderr, filtered by `--log`. Traces: when the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, `tracing`
//! spans go out over OTLP/gRPC through tracing-opentelemetry — one trace per call (see the b2bua's
//! dialog spans). Export runs in a bounded batch queue on the runtime: when the collector is slow or
//! gone, spans are dropped (the SDK reports it), calls never wait. Shutdown flushes with a time limit.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use clap::{Args, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Logging flags.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "MEDPOOL_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info,medpool_b2bua=debug`).
    #[arg(long, env = "MEDPOOL_LOG", default_value = "info")]
    pub log: String,
}

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// Changes the log filter at run time (the admin API's SetLogLevel). The syntax is `--log`'s.
pub fn set_log_filter(filter: &str) -> Result<(), String> {
    let f = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    let handle = LOG_FILTER
        .get()
        .ok_or_else(|| "logging is not initialised".to_owned())?;
    handle.reload(f).map_err(|e| e.to_string())
}

/// What must be flushed at shutdown.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
}

/// Starts logging, and trace export when OTLP is configured. Call inside the tokio runtime.
pub fn init(log: &LogArgs, node: &str) -> Telemetry {
    let filter = || {
        tracing_subscriber::EnvFilter::try_new(&log.log)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (reloadable, handle) = tracing_subscriber::reload::Layer::new(filter());
    let _ = LOG_FILTER.set(handle);
    let fmt = match log.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(reloadable);
    let mut provider = None;
    let otel = if otlp_configured() {
        match build_provider(node) {
            Ok(p) => {
                let tracer = p.tracer("medpool");
                provider = Some(p);
                // Only medpool's own spans: never the exporter's (it would trace itself) or the network stack's.
                let targets = tracing_subscriber::filter::Targets::new()
                    .with_target("medpool", tracing::Level::INFO)
                    .with_target("medpool_b2bua", tracing::Level::DEBUG)
                    .with_target("medpool_cluster", tracing::Level::INFO);
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(targets),
                )
            }
            Err(e) => {
                eprintln!("medpool: OTLP trace export disabled: {e}");
                None
            }
        }
    } else {
        None
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry { provider }
}

fn build_provider(node: &str) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let batch = opentelemetry_sdk::trace::BatchConfigBuilder::default()
        .with_max_queue_size(8192)
        .build();
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .with_batch_config(batch)
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("medpool")
        .with_attribute(opentelemetry::KeyValue::new(
            "medpool.node",
            node.to_owned(),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

impl Telemetry {
    /// Flushes spans, waiting at most `limit` (a collector that never answers does not hold the
    /// process).
    pub async fn shutdown(self, limit: Duration) {
        if let Some(p) = self.provider {
            let flush = tokio::task::spawn_blocking(move || p.shutdown());
            if tokio::time::timeout(limit, flush).await.is_err() {
                eprintln!(
                    "medpool: trace export did not finish within {limit:?}; remaining spans dropped"
                );
            }
        }
    }
}
