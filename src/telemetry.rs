//! Logging and, when `traces.otlp_endpoint` is set, OpenTelemetry trace export. Every
//! request's span carries its request id, so every line logged while serving it does too.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogConfig, LogFormat, OtlpConfig, OtlpProtocol, TracesConfig};

/// Set when spans are exported: only then do request spans carry OpenTelemetry fields
/// and follow a caller's `traceparent` (the hot path pays nothing otherwise).
static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
#[error("traces.otlp_endpoint: cannot set up the exporter: {0}")]
pub struct TelemetryError(String);

/// Owns the span exporter; [`Telemetry::shutdown`] sends what is still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued (bounded by the exporter's timeout).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The SDK's shutdown blocks until its export thread is done.
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "could not send the last spans");
            }
        }
    }
}

/// Installs the global subscriber: logs per `log`, spans to a collector per `traces`.
/// Called once, by the binary, inside the runtime; tests use [`init_for_tests`].
pub fn init(log: &LogConfig, traces: &TracesConfig) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_new(&log.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match log.format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => fmt.compact().with_filter(filter).boxed(),
    };
    let (otel, provider) = match &traces.otlp {
        Some(cfg) => {
            let provider = tracer_provider(cfg)?;
            // Only our own spans: the exporter's HTTP client must not trace itself.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("gatehouse"))
                .with_filter(Targets::new().with_target("gatehouse", LevelFilter::INFO));
            let _ = PROPAGATOR.set(TraceContextPropagator::new());
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    // try_init: a second call (tests) is harmless.
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    if let Some(cfg) = &traces.otlp {
        tracing::info!(
            endpoint = %cfg.endpoint,
            sample_ratio = cfg.sample_ratio,
            "exporting traces over OTLP"
        );
    }
    Ok(Telemetry { provider })
}

fn tracer_provider(cfg: &OtlpConfig) -> Result<SdkTracerProvider, TelemetryError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| TelemetryError("not inside the async runtime".into()))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OnRuntime { http, runtime })
        .with_endpoint(&cfg.endpoint)
        .with_protocol(match cfg.protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        })
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        )
        .build())
}

/// Sends exports with our reqwest client. The SDK's batch processor runs on its own
/// thread, outside tokio, so each request is run on the runtime and awaited from there.
#[derive(Debug)]
struct OnRuntime {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let http = self.http.clone();
        let send = async move {
            let (parts, body) = request.into_parts();
            let res = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let mut out = Response::builder().status(res.status());
            if let Some(h) = out.headers_mut() {
                *h = res.headers().clone();
            }
            Ok::<_, HttpError>(out.body(res.bytes().await?)?)
        };
        self.runtime.spawn(send).await?
    }
}

/// Whether spans are exported (and request spans should carry OpenTelemetry fields).
pub fn exporting() -> bool {
    PROPAGATOR.get().is_some()
}

/// Makes `span` a child of the caller's W3C `traceparent`, when there is one and spans
/// are exported.
pub fn follow_caller(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if let Some(p) = PROPAGATOR.get() {
        let cx = p.extract(&opentelemetry_http::HeaderExtractor(headers));
        let _ = span.set_parent(cx);
    }
}

/// Names the current request span after the route the router matched, and sets its
/// `http.route` (spans exported only). The span is already started by then, so the name
/// goes to the OpenTelemetry span itself: recording `otel.name` late is ignored.
pub fn name_request_span(method: &axum::http::Method, route: &str) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !exporting() {
        return;
    }
    let span = tracing::Span::current();
    span.record("http.route", route);
    span.context()
        .span()
        .update_name(format!("{method} {route}"));
}

/// Logs to the test harness's captured output when `TEST_LOG` is set.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("debug,sqlx=warn,hyper=info"))
            .with_test_writer()
            .try_init();
    }
}
