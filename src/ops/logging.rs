//! Log output: `RUST_LOG`-style filters, plain or JSON (`LOG_FORMAT=json`) lines on stdout,
//! with a filter that the admin API can change at runtime. The data workers write their lines
//! in batches ([`batch`]).

pub mod batch;

use std::sync::Arc;

use parking_lot::Mutex;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::LogConfig;

/// Changes the active log filter.
#[derive(Clone)]
pub struct LogHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    default: Arc<str>,
    // The directives currently applied (for display and appending).
    current: Arc<Mutex<String>>,
}

impl LogHandle {
    /// The active filter directives.
    pub fn current(&self) -> String {
        self.current.lock().clone()
    }

    /// Appends directives (`debug`, `ztun=debug,access=info`) to the active filter.
    pub fn append(&self, directives: &str) -> Result<String, String> {
        let next = format!("{},{}", self.current(), directives);
        self.set(&next)
    }

    /// Restores the startup filter.
    pub fn reset(&self) -> Result<String, String> {
        let d = self.default.clone();
        self.set(&d)
    }

    fn set(&self, directives: &str) -> Result<String, String> {
        let filter = EnvFilter::try_new(directives)
            .map_err(|e| format!("invalid filter {directives:?}: {e}"))?;
        self.handle.reload(filter).map_err(|e| e.to_string())?;
        *self.current.lock() = directives.to_string();
        Ok(directives.to_string())
    }
}

/// Installs the global subscriber.
pub fn init(cfg: &LogConfig) -> anyhow::Result<LogHandle> {
    let filter = EnvFilter::try_new(&cfg.filter)
        .map_err(|e| anyhow::anyhow!("RUST_LOG {:?}: {e}", cfg.filter))?;
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(batch::Stdout)
        .with_ansi(false);
    let res = if cfg.json {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.event_format(JsonFormat))
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.event_format(PlainFormat))
            .try_init()
    };
    res.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
    Ok(LogHandle {
        handle,
        default: cfg.filter.as_str().into(),
        current: Arc::new(Mutex::new(cfg.filter.clone())),
    })
}

/// ztunnel's plain line format, so existing log pipelines parse ztun unchanged:
/// `<RFC 3339 time, µs>\t<level>\t<target>[:<span>{fields}]…\t<message> <k=v …>`.
struct PlainFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for PlainFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let now = time::OffsetDateTime::now_utc();
        let meta = event.metadata();
        write!(
            writer,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z\t{}\t{}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.microsecond(),
            meta.level().as_str().to_ascii_lowercase(),
            meta.target(),
        )?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, ":{}", span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<tracing_subscriber::fmt::FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{{{fields}}}")?;
                    }
                }
            }
        }
        writer.write_char('\t')?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// ztunnel's JSON line format: `{"level":"info","time":"…","scope":"<target>","message":"…",
/// <fields>}`, plus `spans` (name and fields, root first) when the event is inside spans.
struct JsonFormat;

/// Collects an event's fields into a JSON object.
struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            serde_json::Value::String(format!("{value:?}")),
        );
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(
            field.name().to_string(),
            serde_json::Value::String(value.to_string()),
        );
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let now = time::OffsetDateTime::now_utc();
        let mut obj = serde_json::Map::new();
        obj.insert(
            "level".into(),
            meta.level().as_str().to_ascii_lowercase().into(),
        );
        obj.insert(
            "time".into(),
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                now.year(),
                u8::from(now.month()),
                now.day(),
                now.hour(),
                now.minute(),
                now.second(),
                now.microsecond()
            )
            .into(),
        );
        obj.insert("scope".into(), meta.target().into());
        event.record(&mut JsonVisitor(&mut obj));
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<serde_json::Value> = scope
                .from_root()
                .map(|span| {
                    let ext = span.extensions();
                    let fields = ext
                        .get::<tracing_subscriber::fmt::FormattedFields<N>>()
                        .map(|f| f.to_string())
                        .unwrap_or_default();
                    serde_json::json!({ "name": span.name(), "fields": fields })
                })
                .collect();
            if !spans.is_empty() {
                obj.insert("spans".into(), spans.into());
            }
        }
        let line = serde_json::to_string(&obj).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{line}")
    }
}
