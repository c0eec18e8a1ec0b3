//! Logs as Flux's controllers write them: one flat JSON object per line with `level`
//! (lowercase), `ts` (RFC 3339, UTC), `msg` and the event's fields beside them, so the same
//! log pipeline reads both.

use std::fmt::Write as _;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, format};
use tracing_subscriber::registry::LookupSpan;

/// The flat JSON event format (`--log-json`).
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut fields = Map::new();
        // The fields of the spans the event is in (outermost first), then its own.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<FormattedFields<N>>()
                    && let Ok(Value::Object(m)) = serde_json::from_str(&f.fields)
                {
                    fields.extend(m);
                }
            }
        }
        let mut visitor = Fields(&mut fields);
        event.record(&mut visitor);
        let msg = fields
            .remove("message")
            .unwrap_or(Value::String(String::new()));
        writeln!(
            writer,
            "{}",
            line(
                meta.level(),
                &jiff::Timestamp::now(),
                meta.target(),
                msg,
                fields
            )
        )
    }
}

/// One log line: `level`, `ts`, `logger`, `msg` first (as zap writes them), then the fields.
fn line(
    level: &tracing::Level,
    ts: &jiff::Timestamp,
    logger: &str,
    msg: Value,
    fields: Map<String, Value>,
) -> String {
    let mut out = String::from("{");
    let mut put = |k: &str, v: &Value| {
        if out.len() > 1 {
            out.push(',');
        }
        let _ = write!(out, "{}:{}", Value::String(k.into()), v);
    };
    put("level", &Value::String(level.as_str().to_ascii_lowercase()));
    put("ts", &Value::String(format!("{ts:.3}")));
    put("logger", &Value::String(logger.into()));
    put("msg", &msg);
    for (k, v) in &fields {
        if !matches!(k.as_str(), "level" | "ts" | "logger" | "msg") {
            put(k, v);
        }
    }
    out.push('}');
    out
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().into(), Value::String(v.into()));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.insert(f.name().into(), Value::Bool(v));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
        self.0.insert(f.name().into(), Value::String(v.to_string()));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.0
            .insert(f.name().into(), Value::String(format!("{v:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(json: bool, f: impl FnOnce()) -> String {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let make = move || Sink(sink.clone());
        let sub = tracing_subscriber::fmt().with_writer(make).with_ansi(false);
        if json {
            let sub = sub
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(FlatJson)
                .finish();
            tracing::subscriber::with_default(sub, f);
        } else {
            tracing::subscriber::with_default(sub.finish(), f);
        }
        String::from_utf8(buf.lock().unwrap().clone()).unwrap()
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_is_flat_like_a_flux_controllers() {
        let out = captured(true, || {
            let span = tracing::info_span!("reconcile", namespace = "apps");
            let _g = span.enter();
            tracing::warn!(target: "fluxmedic::engine", attempts = 3u32, ok = false, "giving up on \"web\"");
        });
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["msg"], "giving up on \"web\"");
        assert_eq!(v["logger"], "fluxmedic::engine");
        assert_eq!(v["attempts"], 3);
        assert_eq!(v["ok"], false);
        assert_eq!(v["namespace"], "apps", "span fields flattened");
        assert!(
            v.get("fields").is_none() && v.get("message").is_none(),
            "{out}"
        );
        let ts: jiff::Timestamp = v["ts"].as_str().unwrap().parse().unwrap();
        assert!((jiff::Timestamp::now() - ts).get_seconds().abs() < 60);
        assert!(out.starts_with(r#"{"level":"warn","ts":""#), "{out}");
    }

    #[test]
    fn a_field_cannot_pose_as_the_level_or_message() {
        let out = captured(true, || {
            tracing::error!(level = "info", msg = "all good", "real message");
        });
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "real message");
        assert_eq!(out.matches("\"level\"").count(), 1, "{out}");
    }
}
