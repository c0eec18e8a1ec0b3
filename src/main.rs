//! The `fluxmedic` binary: thin, everything lives in the library.

use std::{io::Read, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use fluxmedic::{api, cli, controller, input};

#[derive(Parser)]
#[command(
    name = "fluxmedic",
    version,
    about = "Diagnose and safely remediate FluxCD failures"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Yaml,
    Json,
}

impl From<Output> for cli::Output {
    fn from(o: Output) -> Self {
        match o {
            Output::Table => cli::Output::Table,
            Output::Yaml => cli::Output::Yaml,
            Output::Json => cli::Output::Json,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum What {
    #[value(alias = "remediation", alias = "rem")]
    Remediations,
    #[value(alias = "policy", alias = "remediationpolicies", alias = "rempol")]
    Policies,
}

/// How a live command reaches the cluster, as kubectl takes it.
#[derive(clap::Args, Clone)]
struct KubeArgs {
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the pod's
    /// ServiceAccount).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long)]
    context: Option<String>,
}

impl KubeArgs {
    async fn connect(&self) -> Result<cli::Connection, (u8, String)> {
        cli::connect(self.kubeconfig.as_deref(), self.context.as_deref())
            .await
            .map_err(|e| (1, format!("cannot reach the cluster: {e:#}")))
    }
}

/// `fluxmedic diagnose --exit-code`: Flux objects are failing.
const EXIT_FAILING: u8 = 3;

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    kube: KubeArgs,
    /// The operator's namespace (policies here may cover other namespaces).
    #[arg(long, env = "POD_NAMESPACE", default_value = "flux-system")]
    namespace: String,
    /// Only act in these namespaces (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Targets evaluated and acted upon at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Circuit breaker threshold when no policy in the operator's namespace sets one.
    #[arg(long, default_value_t = 20)]
    circuit_breaker: u32,
    /// Closed Remediations kept per target.
    #[arg(long, default_value_t = 5)]
    history_limit: usize,
    /// Seconds between periodic re-evaluations.
    #[arg(long, default_value_t = 5)]
    tick_seconds: u64,
    /// The helm binary used for rollbacks (Helm 4, as helm-controller v1.5+ uses).
    #[arg(long, env = "FLUXMEDIC_HELM", default_value = "helm")]
    helm: PathBuf,
    /// Log flat JSON lines (`level`, `ts`, `msg`, fields), as Flux's controllers do.
    #[arg(long)]
    log_json: bool,
    /// Least severe messages logged (`RUST_LOG`, when set, decides instead).
    #[arg(long, default_value = "info", value_parser = clap::builder::PossibleValuesParser::new(fluxmedic::telemetry::LOG_LEVELS))]
    log_level: String,
    /// Run with others: hold the `fluxmedic-leader` Lease in --namespace to act.
    #[arg(long)]
    leader_elect: bool,
    /// Client-side limit on API writes per second (a storm cannot become a write storm).
    #[arg(long, default_value_t = 20)]
    max_writes_per_second: u32,
    /// Serve one shard of a sharded Flux: only Flux objects matching this label selector
    /// (as the shard's controllers run with `--watch-label-selector`); a Lease per shard.
    #[arg(long)]
    watch_label_selector: Option<String>,
    /// Post occurrences as Flux events to notification-controller's event server (e.g.
    /// http://notification-controller.flux-system.svc.cluster.local./), so Flux Alerts
    /// show them.
    #[arg(long)]
    events_addr: Option<String>,
    /// Seconds a reconcile request may stay unhandled (beyond the object's own timeout)
    /// before its Flux controller counts as not working: escalated at once, and nothing is
    /// done through it meanwhile.
    #[arg(long, default_value_t = 120)]
    controller_timeout_seconds: u64,
    /// Do not check unreachable sources' hosts from here (DNS, TCP, TLS; no credentials
    /// sent) for git-unreachable evidence: for clusters whose egress must stay quiet.
    #[arg(long)]
    no_source_probes: bool,
    /// The namespace Flux's controllers run in as Deployments: their pods are watched
    /// (read-only) so a crash-looping, unschedulable or scaled-down controller is escalated
    /// at once. Empty: not watched (then only unhandled reconcile requests tell).
    #[arg(long, default_value = "flux-system")]
    flux_namespace: String,
    /// Where helm-controller's Deployment cannot be read in --flux-namespace: it runs with
    /// its own rights as this ServiceAccount (`namespace/name`, e.g.
    /// flux-system/helm-controller). Helm actions then run as that ServiceAccount.
    #[arg(long, conflicts_with = "helm_default_service_account")]
    helm_controller_service_account: Option<String>,
    /// Where helm-controller's Deployment cannot be read in --flux-namespace: it runs with
    /// Flux's lockdown `--default-service-account=<name>`. Helm actions on a HelmRelease
    /// without spec.serviceAccountName then run as that ServiceAccount of its namespace.
    #[arg(long)]
    helm_default_service_account: Option<String>,
    /// Allow the DeletePendingRelease action (policies may ask for it only when this is
    /// set; the chart sets it with deletePendingRelease.enabled, with the RBAC it needs).
    #[arg(long)]
    allow_delete_pending_release: bool,
}

#[derive(clap::Args)]
struct ReleaseHoldsArgs {
    #[command(flatten)]
    kube: KubeArgs,
    /// The operator's namespace (its seal key and Deployment).
    #[arg(long, env = "POD_NAMESPACE", default_value = "flux-system")]
    namespace: String,
    /// Only these namespaces (comma-separated; default all), as the operator ran.
    #[arg(long, value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// The operator's shard, as it ran.
    #[arg(long)]
    watch_label_selector: Option<String>,
    /// Scale this Deployment (in --namespace) to 0 and wait for it first.
    #[arg(long)]
    stop_deployment: Option<String>,
    /// Seconds to wait for the replicas to stop.
    #[arg(long, default_value_t = 120)]
    stop_timeout_seconds: u64,
    /// Log flat JSON lines (`level`, `ts`, `msg`, fields), as Flux's controllers do.
    #[arg(long)]
    log_json: bool,
    /// Least severe messages logged (`RUST_LOG`, when set, decides instead).
    #[arg(long, default_value = "info", value_parser = clap::builder::PossibleValuesParser::new(fluxmedic::telemetry::LOG_LEVELS))]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator (uses the kubeconfig or the in-cluster service account).
    Run(RunArgs),
    /// Diagnose Flux failures from a dump (or the live cluster) and show what fluxmedic would do.
    Diagnose {
        #[command(flatten)]
        kube: KubeArgs,
        /// A List or multi-document YAML/JSON (`-` for stdin). Without it: the live cluster.
        #[arg(short = 'f', long = "file")]
        file: Option<String>,
        /// A RemediationPolicy YAML to judge by (default: the built-in default policy),
        /// checked first exactly as the API server checks one (schema, unknown fields, CEL).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// table, yaml or json.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        /// Exit with 3 when a Flux object is failing (a pipeline gate); 0 when all are healthy.
        /// Without it the exit status says only whether the diagnosis could be made.
        #[arg(long)]
        exit_code: bool,
        /// Live: read only this namespace (for credentials scoped to one namespace).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// As for `run`: helm-controller runs unrestricted as this ServiceAccount
        /// (`namespace/name`), the identity its Helm actions would use.
        #[arg(long, conflicts_with = "helm_default_service_account")]
        helm_controller_service_account: Option<String>,
        /// As for `run`: helm-controller runs with `--default-service-account=<name>`.
        #[arg(long)]
        helm_default_service_account: Option<String>,
    },
    /// List Remediations (default) or RemediationPolicies, with what each waits for.
    Get {
        /// remediations (rem) or policies (rempol).
        #[arg(value_enum, default_value = "remediations")]
        what: What,
        /// The namespace (default: the context's).
        #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
        namespace: Option<String>,
        /// Across all namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// table, yaml or json (a List, as `kubectl get -o` prints it).
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        kube: KubeArgs,
    },
    /// Approve the action a Remediation waits for: writes the one annotation that approves
    /// it where it counts (on the Remediation, or on the deciding policy when that policy is
    /// in the operator's namespace) and nothing else.
    Approve {
        #[command(flatten)]
        decision: DecisionArgs,
    },
    /// Reject the action a Remediation waits for: fluxmedic does not ask for it again in this
    /// incident, which stays open (and escalates) until the target recovers.
    Reject {
        #[command(flatten)]
        decision: DecisionArgs,
    },
    /// Print the CustomResourceDefinitions.
    Crds,
    /// Before uninstalling: stop the operator, then resume every HelmRelease fluxmedic holds
    /// suspended (only holds it sealed; a person's suspension is left alone). The chart's
    /// pre-delete hook runs this.
    ReleaseHolds(ReleaseHoldsArgs),
}

#[derive(clap::Args)]
struct DecisionArgs {
    /// The Remediation.
    name: String,
    /// Its namespace (default: the context's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// The request id you read (`status.approval.id`): refused if the Remediation now waits
    /// for another request.
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    kube: KubeArgs,
}

/// A fatal error, where the operator's logs go: a JSON line with `--log-json` (a log
/// pipeline reading JSON must not lose the one line that says why the pod stopped).
fn fatal(json: bool, code: u8, msg: impl std::fmt::Display) -> ExitCode {
    if json {
        tracing::error!("{msg}");
    } else {
        eprintln!("error: {msg}");
    }
    ExitCode::from(code)
}

struct DiagnoseArgs {
    file: Option<String>,
    policy: Option<PathBuf>,
    output: Output,
    namespace: Option<String>,
    kube: KubeArgs,
    helm_controller: Option<fluxmedic::flux::HelmControllerIdentity>,
}

/// Diagnose and print; the number of failing Flux objects.
async fn diagnose(args: DiagnoseArgs) -> Result<usize, (u8, String)> {
    let DiagnoseArgs {
        file,
        policy,
        output,
        namespace,
        kube,
        helm_controller,
    } = args;
    let now = jiff::Timestamp::now().as_second();
    let pol = cli::load_policy(policy.as_deref()).map_err(|e| (2, e))?;
    let (mut snap, warnings) = match file {
        Some(f) => {
            let mut text = String::new();
            if f == "-" {
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| (2, format!("stdin: {e}")))?;
            } else {
                text = std::fs::read_to_string(&f).map_err(|e| (2, format!("{f}: {e}")))?;
            }
            let name = if f == "-" {
                "stdin".to_string()
            } else {
                f.clone()
            };
            let (snap, summary) =
                input::parse_dump(&text, now).map_err(|e| (2, format!("{name}: {e}")))?;
            (snap, summary.warnings)
        }
        None => {
            let client = kube.connect().await?.client;
            let namespace = namespace.filter(|n| !n.trim().is_empty());
            cli::live_snapshot(client, now, namespace.as_deref())
                .await
                .map_err(|e| (1, e.to_string()))?
        }
    };
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    snap.helm_controller = helm_controller;
    let ns = pol.namespace.clone();
    let (report, rows) = cli::evaluate(&snap, &[pol], &ns, 20);
    let text = match output {
        Output::Table => cli::render_table(&report, &rows, snap.objects.len()),
        Output::Json => serde_json::to_string_pretty(&rows).expect("rows serialise") + "\n",
        Output::Yaml => serde_yaml_ng::to_string(&rows).expect("rows serialise"),
    };
    write_stdout(&text).map(|()| rows.len())
}

async fn get(
    what: What,
    namespace: Option<String>,
    all_namespaces: bool,
    output: Output,
    kube: KubeArgs,
) -> Result<(), (u8, String)> {
    let conn = kube.connect().await?;
    let ns = match (all_namespaces, namespace) {
        (true, _) => None,
        (false, Some(ns)) => Some(ns),
        (false, None) => Some(conn.namespace.clone()),
    };
    let listing = match what {
        What::Remediations => cli::Listing::Remediations,
        What::Policies => cli::Listing::Policies,
    };
    let now = jiff::Timestamp::now().as_second();
    let text = cli::get(conn.client, listing, ns.as_deref(), output.into(), now)
        .await
        .map_err(|e| (1, format!("{e:#}")))?;
    write_stdout(&text)
}

async fn decide(args: DecisionArgs, decision: cli::Decision) -> Result<(), (u8, String)> {
    let conn = args.kube.connect().await?;
    let ns = args.namespace.unwrap_or(conn.namespace);
    let said = cli::decide(conn.client, &ns, &args.name, decision, args.id.as_deref())
        .await
        .map_err(|e| (1, format!("{e:#}")))?;
    write_stdout(&(said + "\n"))
}

/// The exit status of a command that printed its own result.
fn exit(res: Result<(), (u8, String)>) -> ExitCode {
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(code)
        }
    }
}

/// `--helm-controller-service-account` / `--helm-default-service-account`, checked.
fn helm_identity_flags(
    unrestricted: Option<String>,
    lockdown: Option<String>,
) -> Result<Option<fluxmedic::flux::HelmControllerIdentity>, String> {
    use fluxmedic::flux::{HelmControllerIdentity, ServiceAccountRef};
    let unrestricted = unrestricted.filter(|s| !s.trim().is_empty());
    let lockdown = lockdown
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    match (unrestricted, lockdown) {
        (Some(sa), None) => ServiceAccountRef::parse(&sa)
            .map(|service_account| Some(HelmControllerIdentity::Unrestricted { service_account }))
            .ok_or_else(|| {
                format!("--helm-controller-service-account must be namespace/name, got {sa:?}")
            }),
        (None, Some(name)) if ServiceAccountRef::parse(&format!("x/{name}")).is_some() => {
            Ok(Some(HelmControllerIdentity::Lockdown {
                default_service_account: name,
            }))
        }
        (None, Some(name)) => Err(format!(
            "--helm-default-service-account must be a ServiceAccount name, got {name:?}"
        )),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(
            "give --helm-controller-service-account or --helm-default-service-account, not both"
                .into(),
        ),
    }
}

/// Write to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(text: &str) -> Result<(), (u8, String)> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err((1, format!("stdout: {e}"))),
        _ => Ok(()),
    }
}

/// `release-holds`: resume every HelmRelease fluxmedic holds (the chart's pre-delete hook).
fn release_holds(rt: &tokio::runtime::Runtime, args: ReleaseHoldsArgs) -> ExitCode {
    let ReleaseHoldsArgs {
        kube,
        namespace,
        watch_namespaces,
        watch_label_selector,
        stop_deployment,
        stop_timeout_seconds,
        log_json,
        log_level,
    } = args;
    fluxmedic::telemetry::init_logging(log_json, &log_level);
    let opts = controller::uninstall::Options {
        namespace,
        watch_namespaces: watch_namespaces
            .into_iter()
            .filter(|n| !n.trim().is_empty())
            .collect(),
        watch_label_selector: watch_label_selector.filter(|s| !s.trim().is_empty()),
        deployment: stop_deployment.filter(|s| !s.trim().is_empty()),
        stop_timeout: Duration::from_secs(stop_timeout_seconds.clamp(1, 3600)),
    };
    let res = rt.block_on(async {
        let conn = cli::connect(kube.kubeconfig.as_deref(), kube.context.as_deref());
        controller::uninstall::release_holds(conn.await?.client, &opts).await
    });
    match res {
        Ok(r) if r.failed.is_empty() => {
            println!(
                "resumed {} HelmRelease(s) fluxmedic held: {:?}",
                r.resumed.len(),
                r.resumed
            );
            ExitCode::SUCCESS
        }
        Ok(r) => fatal(
            log_json,
            1,
            format!(
                "could not resume: {:?} (resumed: {:?})",
                r.failed, r.resumed
            ),
        ),
        Err(e) => fatal(log_json, 1, format!("{e:#}")),
    }
}

/// `run`: the operator.
fn run(rt: &tokio::runtime::Runtime, args: RunArgs) -> ExitCode {
    let RunArgs {
        kube,
        namespace,
        watch_namespaces,
        metrics_addr,
        concurrency,
        circuit_breaker,
        history_limit,
        tick_seconds,
        helm,
        log_json,
        log_level,
        leader_elect,
        max_writes_per_second,
        watch_label_selector,
        events_addr,
        controller_timeout_seconds,
        no_source_probes,
        flux_namespace,
        helm_controller_service_account,
        helm_default_service_account,
        allow_delete_pending_release,
    } = args;
    fluxmedic::telemetry::init_logging(log_json, &log_level);
    // notification-controller's event server speaks plain HTTP inside the cluster.
    if let Some(a) = events_addr.as_deref().filter(|a| !a.trim().is_empty())
        && !a.starts_with("http://")
    {
        return fatal(
            log_json,
            2,
            format!(
                "--events-addr must be an http:// URL (notification-controller's event server), got {a:?}"
            ),
        );
    }
    let helm_controller = match helm_identity_flags(
        helm_controller_service_account,
        helm_default_service_account,
    ) {
        Ok(h) => h,
        Err(msg) => return fatal(log_json, 2, msg),
    };
    let opts = controller::Options {
        helm_controller,
        allow_delete_pending_release,
        namespace,
        watch_namespaces,
        metrics_addr,
        concurrency: concurrency.max(1),
        circuit_breaker,
        history_limit,
        debounce: Duration::from_millis(100),
        tick: Duration::from_secs(tick_seconds.max(1)),
        helm_bin: helm,
        leader_elect,
        max_writes_per_second,
        watch_label_selector: watch_label_selector.filter(|s| !s.trim().is_empty()),
        events_addr: events_addr.filter(|s| !s.trim().is_empty()),
        controller_timeout: Duration::from_secs(controller_timeout_seconds.max(1)),
        source_probes: !no_source_probes,
        flux_namespace: Some(flux_namespace.trim().to_string()).filter(|s| !s.is_empty()),
        identity: std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("fluxmedic-{}", std::process::id())),
    };
    let res = rt.block_on(async {
        let config = cli::config(kube.kubeconfig.as_deref(), kube.context.as_deref());
        controller::run(config.await?, opts).await
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(log_json, 1, format!("{e:#}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.command {
        Command::Crds => {
            let all: String = api::crd_documents()
                .into_iter()
                .map(|(_, doc)| format!("---\n{doc}"))
                .collect();
            match write_stdout(&all) {
                Ok(()) => ExitCode::SUCCESS,
                Err((code, _)) => ExitCode::from(code),
            }
        }
        Command::Diagnose {
            kube,
            file,
            policy,
            output,
            exit_code,
            namespace,
            helm_controller_service_account,
            helm_default_service_account,
        } => {
            let res = helm_identity_flags(
                helm_controller_service_account,
                helm_default_service_account,
            )
            .map_err(|e| (2, e))
            .and_then(|helm_controller| {
                rt.block_on(diagnose(DiagnoseArgs {
                    file,
                    policy,
                    output,
                    namespace,
                    kube,
                    helm_controller,
                }))
            });
            match res {
                Ok(failing) if exit_code && failing > 0 => ExitCode::from(EXIT_FAILING),
                res => exit(res.map(|_| ())),
            }
        }
        Command::Get {
            what,
            namespace,
            all_namespaces,
            output,
            kube,
        } => exit(rt.block_on(get(what, namespace, all_namespaces, output, kube))),
        Command::Approve { decision } => {
            exit(rt.block_on(decide(decision, cli::Decision::Approve)))
        }
        Command::Reject { decision } => exit(rt.block_on(decide(decision, cli::Decision::Reject))),
        Command::ReleaseHolds(args) => release_holds(&rt, args),
        Command::Run(args) => run(&rt, args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `fluxmedic <command> --help` explains every flag and argument.
    #[test]
    fn every_flag_has_help_text() {
        let cli = super::Cli::command();
        for cmd in cli.get_subcommands() {
            for arg in cmd.get_arguments() {
                assert!(
                    arg.get_help()
                        .is_some_and(|h| !h.to_string().trim().is_empty()),
                    "fluxmedic {} --{}: no help text",
                    cmd.get_name(),
                    arg.get_id()
                );
            }
        }
        super::Cli::command().debug_assert();
    }
}
