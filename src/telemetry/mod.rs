//! Metrics (prometheus-client, OpenMetrics text on /metrics) and logging setup.

pub mod logs;
pub mod process;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaseLabels {
    pub case: String,
}

/// A case in a namespace: alerts route per namespace (each team its own).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaseNamespaceLabels {
    pub case: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    pub category: String,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    ]
    .into_iter()
}

/// All fluxmedic metrics, prefixed `fluxmedic_`.
pub struct Metrics {
    pub registry: Registry,
    pub incidents: Family<CaseNamespaceLabels, Counter>,
    pub actions: Family<ActionLabels, Counter>,
    pub blocked: Family<ReasonLabels, Counter>,
    pub escalations: Family<CaseNamespaceLabels, Counter>,
    pub errors: Family<CategoryLabels, Counter>,
    pub time_to_detect: Histogram,
    pub time_to_recover: Family<CaseLabels, Histogram>,
    pub failing_targets: Gauge,
    /// Open incidents, by case and the namespace of the target.
    pub open_incidents: Family<CaseNamespaceLabels, Gauge>,
    pub circuit_breaker_open: Family<NamespaceLabels, Gauge>,
    pub passes: Counter,
    pub leader: Gauge,
    pub pass_duration: Histogram,
    pub events_dropped: Counter,
    pub records_edited: Family<NamespaceLabels, Counter>,
    /// 1 per Flux kind the API server does not serve in a version fluxmedic reads.
    pub flux_api_missing: Family<KindLabels, Gauge>,
    /// Flux events posted to notification-controller, by outcome (sent, failed, dropped).
    pub notifications: Family<OutcomeLabels, Counter>,
    /// 1 for a Flux controller that leaves reconcile requests unhandled, else 0.
    pub flux_controller_down: Family<ControllerLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

impl Default for Metrics {
    fn default() -> Self {
        // The process_* metrics without a prefix, as every Prometheus client exports them;
        // fluxmedic's own under `fluxmedic_`.
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("fluxmedic");
        let build = prometheus_client::metrics::info::Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION")),
            (
                "revision",
                option_env!("FLUXMEDIC_REVISION").unwrap_or("unknown"),
            ),
        ]);
        registry.register(
            "build",
            "fluxmedic's version (1 while it runs: absent() of it is an operator that is gone)",
            build,
        );
        let incidents = Family::<CaseNamespaceLabels, Counter>::default();
        let actions = Family::<ActionLabels, Counter>::default();
        let blocked = Family::<ReasonLabels, Counter>::default();
        let escalations = Family::<CaseNamespaceLabels, Counter>::default();
        let errors = Family::<CategoryLabels, Counter>::default();
        let time_to_detect = Histogram::new(latency_buckets());
        let time_to_recover = Family::<CaseLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets()) as Histogram
        });
        let failing_targets = Gauge::default();
        let open_incidents = Family::<CaseNamespaceLabels, Gauge>::default();
        let circuit_breaker_open = Family::<NamespaceLabels, Gauge>::default();
        let passes = Counter::default();
        let leader = Gauge::default();
        let pass_duration = Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        let events_dropped = Counter::default();
        let records_edited = Family::<NamespaceLabels, Counter>::default();
        let flux_api_missing = Family::<KindLabels, Gauge>::default();
        let notifications = Family::<OutcomeLabels, Counter>::default();
        let flux_controller_down = Family::<ControllerLabels, Gauge>::default();
        registry.register(
            "incidents",
            "Incidents opened, by case and namespace (of the target)",
            incidents.clone(),
        );
        registry.register(
            "actions",
            "Remediation actions, by action and outcome",
            actions.clone(),
        );
        registry.register(
            "actions_blocked",
            "Planned actions not taken, by reason",
            blocked.clone(),
        );
        registry.register(
            "escalations",
            "Incidents escalated to a person, by case and namespace",
            escalations.clone(),
        );
        registry.register(
            "errors",
            "Errors while remediating, by category",
            errors.clone(),
        );
        registry.register(
            "time_to_detect_seconds",
            "From the target going not-ready to its Remediation being recorded",
            time_to_detect.clone(),
        );
        registry.register(
            "time_to_recover_seconds",
            "From detection to the target being Ready again, by case",
            time_to_recover.clone(),
        );
        registry.register(
            "failing_targets",
            "Flux objects failing now",
            failing_targets.clone(),
        );
        registry.register(
            "open_incidents",
            "Remediations open now, by case and the namespace of the target",
            open_incidents.clone(),
        );
        registry.register(
            "circuit_breaker_open",
            "1 while the circuit breaker is open",
            circuit_breaker_open.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease (or runs without election)",
            leader.clone(),
        );
        registry.register(
            "evaluations",
            "Evaluation passes over the whole snapshot",
            passes.clone(),
        );
        registry.register(
            "evaluation_duration_seconds",
            "Duration of an evaluation pass",
            pass_duration.clone(),
        );
        registry.register(
            "events_dropped",
            "Events not published because the Event queue was full",
            events_dropped.clone(),
        );
        registry.register(
            "records_edited",
            "Remediations found changed outside fluxmedic (frozen, never acted upon)",
            records_edited.clone(),
        );
        registry.register(
            "flux_api_missing",
            "1 for each Flux kind not served in a version fluxmedic reads (not watched)",
            flux_api_missing.clone(),
        );
        registry.register(
            "notifications",
            "Flux events posted to notification-controller, by outcome",
            notifications.clone(),
        );
        registry.register(
            "flux_controller_down",
            "1 for a Flux controller that leaves reconcile requests unhandled (not processing its objects)",
            flux_controller_down.clone(),
        );
        Metrics {
            registry: root,
            flux_controller_down,
            records_edited,
            flux_api_missing,
            notifications,
            incidents,
            actions,
            blocked,
            escalations,
            errors,
            time_to_detect,
            time_to_recover,
            failing_targets,
            open_incidents,
            circuit_breaker_open,
            passes,
            leader,
            pass_duration,
            events_dropped,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("encoding metrics into a String cannot fail");
        out
    }

    pub fn error(&self, category: &str) {
        self.errors
            .get_or_create(&CategoryLabels {
                category: category.into(),
            })
            .inc();
    }

    pub fn action(&self, action: &str, outcome: &str) {
        self.actions
            .get_or_create(&ActionLabels {
                action: action.into(),
                outcome: outcome.into(),
            })
            .inc();
    }
}

/// Logging: `level` (error, warn, info, debug, trace; the API client's own messages at warn
/// at most), or the `RUST_LOG` filter when set; flat JSON like Flux's controllers with
/// `--log-json` ([`logs::FlatJson`]).
pub fn init_logging(json: bool, level: &str) {
    let deps = match level {
        "error" => "error",
        "trace" => "debug",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},kube={deps},tower={deps},hyper={deps},h2={deps},rustls={deps}"
        ))
    });
    // Colour codes only on a terminal: `kubectl logs` shows them as garbage.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        let _ = builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(logs::FlatJson)
            .try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// The levels `--log-level` takes.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
