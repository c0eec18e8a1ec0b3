//! Whether Flux's controllers are working, read from what they do: a reconcile request
//! (`reconcile.fluxcd.io/requestedAt`, a timestamp token) that a controller has not handled
//! (`status.lastHandledReconcileAt`) long after it was made means the controller is not
//! processing its objects: down, wedged, or not running for that shard. Where the controllers
//! run as Deployments in the Flux namespace, their pods say it sooner: crash-looping, unable to
//! start, scaled to zero, or no replica available for long. Pure: from a snapshot.

use std::{collections::BTreeMap, fmt, time::Duration};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};

use super::Snapshot;
use crate::flux::{FluxKind, ObjectKey};

/// The Flux controller that reconciles `kind`.
pub fn controller_of(kind: FluxKind) -> &'static str {
    match kind {
        FluxKind::Kustomization => "kustomize-controller",
        FluxKind::HelmRelease => "helm-controller",
        _ => "source-controller",
    }
}

/// A reconcile request a controller has left unhandled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unhandled {
    pub object: ObjectKey,
    /// Seconds since the request was made.
    pub waited: i64,
}

impl fmt::Display for Unhandled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} has not handled the reconcile request on {} made {}s ago: it is not processing its objects",
            controller_of(self.object.kind),
            self.object,
            self.waited
        )
    }
}

/// Seconds since the reconcile request on `o` was made, if its controller has not handled it
/// yet (`None`: handled, none made, suspended, or a token that is not a timestamp).
pub fn pending_request(o: &crate::flux::FluxObject, now: i64) -> Option<i64> {
    if o.suspended {
        return None;
    }
    let token = o
        .reconcile_annotations
        .get("reconcile.fluxcd.io/requestedAt")?;
    if o.last_handled_reconcile_at.as_ref() == Some(token) {
        return None;
    }
    let at = token.parse::<jiff::Timestamp>().ok()?;
    Some(now.saturating_sub(at.as_second()).max(0))
}

/// The controllers with a reconcile request older than `bound` still unhandled, each with
/// its oldest one. Suspended objects are skipped (their requests wait by design), and so are
/// tokens that are not timestamps (fluxmedic and the flux CLI write RFC 3339 times).
pub fn unresponsive(snap: &Snapshot, bound: Duration) -> BTreeMap<&'static str, Unhandled> {
    let mut out: BTreeMap<&'static str, Unhandled> = BTreeMap::new();
    for o in snap.objects.values() {
        let Some(waited) = pending_request(o, snap.now) else {
            continue;
        };
        // A controller busy with a long action on this object is working: the object's own
        // timeout (a Helm action's, a fetch's) comes on top of the bound.
        let own = o
            .helm
            .as_ref()
            .map(|h| h.timeout)
            .or(o.timeout)
            .unwrap_or_default();
        let bound = i64::try_from(bound.saturating_add(own).as_secs()).unwrap_or(i64::MAX);
        if waited <= bound {
            continue;
        }
        let c = controller_of(o.key.kind);
        if out.get(c).is_none_or(|u| u.waited < waited) {
            out.insert(
                c,
                Unhandled {
                    object: o.key.clone(),
                    waited,
                },
            );
        }
    }
    out
}

/// The Flux controllers fluxmedic depends on.
pub const CONTROLLERS: [&str; 3] = [
    "source-controller",
    "kustomize-controller",
    "helm-controller",
];

/// A container restarted this often, last within [`RECENT_CRASH`], is crash-looping even in
/// the seconds it runs between two crashes.
const CRASH_RESTARTS: i32 = 3;
const RECENT_CRASH: i64 = 600;

/// Waiting reasons of a container that will not run until something changes.
const CANNOT_START: [&str; 7] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// What fluxmedic keeps of a Deployment in the Flux namespace that runs a Flux controller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeploymentState {
    pub namespace: String,
    pub name: String,
    /// The Flux controller it runs.
    pub controller: &'static str,
    pub replicas: i32,
    pub available: i32,
    /// Since when its `Available` condition is False (unix seconds).
    pub unavailable_since: Option<i64>,
    /// Its pod selector (`matchLabels`; a Deployment with none matches no pod here).
    pub match_labels: BTreeMap<String, String>,
    /// The controller's `--watch-label-selector` (a shard), if any.
    pub watch_selector: Option<String>,
    /// The ServiceAccount its pods run as (`serviceAccountName`, else `default`).
    pub service_account: String,
    /// helm-controller's `--default-service-account` (Flux's multi-tenancy lockdown): the
    /// ServiceAccount, in each HelmRelease's namespace, it impersonates for a HelmRelease
    /// without `spec.serviceAccountName`. `None` (or empty) = it acts with its own rights.
    pub default_service_account: Option<String>,
}

/// What fluxmedic keeps of a pod in the Flux namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodState {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    /// Containers waiting for a reason in [`CANNOT_START`], described.
    pub cannot_start: Vec<String>,
    /// Containers restarted [`CRASH_RESTARTS`] times or more: (description, when the last run ended).
    pub restarting: Vec<(String, Option<i64>)>,
}

fn ts(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_second()
}

/// Which Flux controller a Deployment runs: `app.kubernetes.io/component` as in Flux's
/// manifests, else its name (`source-controller`, or a shard's `source-controller-shard1`).
fn controller_of_deployment(d: &Deployment) -> Option<&'static str> {
    let component = d
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/component"));
    let name = d.metadata.name.as_deref().unwrap_or_default();
    CONTROLLERS.into_iter().find(|c| {
        component.is_some_and(|v| v == c)
            || name == *c
            || name.strip_prefix(c).is_some_and(|r| r.starts_with('-'))
    })
}

/// The value of `--<flag>` (as `--flag=v` or `--flag v`) a controller's containers run with.
fn flag(d: &Deployment, flag: &str) -> Option<String> {
    let containers = d.spec.as_ref()?.template.spec.as_ref()?.containers.iter();
    let long = format!("--{flag}");
    let with_value = format!("--{flag}=");
    for c in containers {
        let args = c.args.iter().flatten().chain(c.command.iter().flatten());
        let mut next = false;
        for a in args {
            if next {
                return Some(a.trim().to_string());
            }
            if let Some(v) = a.strip_prefix(&with_value) {
                return Some(v.trim().to_string());
            }
            next = *a == long;
        }
    }
    None
}

impl DeploymentState {
    /// A Deployment in the Flux namespace, if it runs a Flux controller.
    pub fn from_deployment(d: &Deployment) -> Option<DeploymentState> {
        let controller = controller_of_deployment(d)?;
        let spec = d.spec.as_ref();
        let status = d.status.as_ref();
        let unavailable_since = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Available"))
            .filter(|c| c.status == "False")
            .and_then(|c| c.last_transition_time.as_ref().map(ts));
        Some(DeploymentState {
            namespace: d.metadata.namespace.clone().unwrap_or_default(),
            name: d.metadata.name.clone().unwrap_or_default(),
            controller,
            replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
            available: status.and_then(|s| s.available_replicas).unwrap_or(0),
            unavailable_since,
            match_labels: spec
                .and_then(|s| s.selector.match_labels.clone())
                .unwrap_or_default(),
            watch_selector: flag(d, "watch-label-selector"),
            service_account: spec
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|p| p.service_account_name.clone().or(p.service_account.clone()))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".into()),
            default_service_account: flag(d, "default-service-account").filter(|n| !n.is_empty()),
        })
    }

    fn owns(&self, pod: &PodState) -> bool {
        !self.match_labels.is_empty()
            && self
                .match_labels
                .iter()
                .all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

impl PodState {
    pub fn from_pod(p: &Pod) -> PodState {
        let status = p.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let mut out = PodState {
            name: p.metadata.name.clone().unwrap_or_default(),
            labels: p.metadata.labels.clone().unwrap_or_default(),
            ready,
            ..Default::default()
        };
        let statuses = status.into_iter().flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        });
        for c in statuses {
            let last = c.last_state.as_ref().and_then(|l| l.terminated.as_ref());
            let exit = last
                .map(|t| {
                    let why = t.reason.as_deref().unwrap_or("");
                    format!("; last exit code {} {why}", t.exit_code)
                        .trim_end()
                        .to_string()
                })
                .unwrap_or_default();
            let what = |state: &str| {
                super::bounded(&format!(
                    "container {} {state} ({} restarts{exit})",
                    c.name, c.restart_count
                ))
            };
            let state = c.state.as_ref();
            let exited = state
                .and_then(|s| s.terminated.as_ref())
                .filter(|t| t.exit_code != 0);
            if let Some(w) = state
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                .filter(|r| CANNOT_START.contains(r))
            {
                out.cannot_start.push(what(&format!("is in {w}")));
            } else if let Some(t) = exited {
                // Between a crash and kubelet's back-off: not running now either.
                out.cannot_start.push(super::bounded(&format!(
                    "container {} exited with code {} {} ({} restarts)",
                    c.name,
                    t.exit_code,
                    t.reason.as_deref().unwrap_or(""),
                    c.restart_count
                )));
            } else if c.restart_count >= CRASH_RESTARTS {
                out.restarting.push((
                    what("keeps restarting"),
                    last.and_then(|t| t.finished_at.as_ref().map(ts)),
                ));
            }
        }
        out
    }

    /// Why this pod does not run its controller now, if it does not.
    fn trouble(&self, now: i64) -> Option<&str> {
        self.cannot_start
            .first()
            .or_else(|| {
                self.restarting
                    .iter()
                    .find(|(_, at)| at.is_some_and(|t| now.saturating_sub(t) < RECENT_CRASH))
                    .map(|(w, _)| w)
            })
            .map(String::as_str)
    }
}

/// Whether the controllers of this Deployment serve the objects fluxmedic serves: all of them
/// when fluxmedic runs unsharded, else only the shard with the same selector.
fn same_shard(d: &DeploymentState, own: Option<&str>) -> bool {
    let norm = |s: &str| s.split(',').map(str::trim).collect::<Vec<_>>().join(",");
    match own {
        None => true,
        Some(own) => d.watch_selector.as_deref().map(norm) == Some(norm(own)),
    }
}

/// Whether a controller started with `--watch-label-selector=<selector>` watches an object
/// with `labels` (`None`: the selector cannot be read). The string form Kubernetes clients
/// take: terms joined by commas, each `key`, `!key`, `key=v`, `key==v`, `key!=v`,
/// `key in (a,b)` or `key notin (a,b)`.
pub fn selector_matches(selector: &str, labels: &BTreeMap<String, String>) -> Option<bool> {
    let mut terms = vec![];
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return None;
        }
    }
    terms.push(&selector[start..]);
    let mut all = true;
    for term in terms.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
        all &= term_matches(term, labels)?;
    }
    Some(all)
}

fn term_matches(term: &str, labels: &BTreeMap<String, String>) -> Option<bool> {
    let valid_key = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    };
    let set = |rest: &str| -> Option<Vec<String>> {
        let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
        Some(inner.split(',').map(|v| v.trim().to_string()).collect())
    };
    if let Some(key) = term.strip_prefix('!') {
        return valid_key(key.trim()).then(|| !labels.contains_key(key.trim()));
    }
    for (op, negate) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = term.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            if !valid_key(k) {
                return None;
            }
            let equal = labels.get(k).is_some_and(|l| l == v);
            return Some(equal != negate);
        }
    }
    for (op, negate) in [(" notin ", true), (" in ", false)] {
        if let Some((k, rest)) = term.split_once(op) {
            let (k, values) = (k.trim(), set(rest)?);
            if !valid_key(k) {
                return None;
            }
            let within = labels.get(k).is_some_and(|l| values.contains(l));
            return Some(if negate { !within } else { within });
        }
    }
    valid_key(term).then(|| labels.contains_key(term))
}

/// Why the Flux controller a Deployment runs is not working, if it is not: scaled to zero,
/// every pod crash-looping or unable to start (at once: no grace), or no replica available
/// for longer than `grace` (pending, unschedulable, failing its probes).
pub fn deployment_down(
    d: &DeploymentState,
    pods: &[PodState],
    now: i64,
    grace: Duration,
) -> Option<String> {
    let id = format!("Deployment {}/{}", d.namespace, d.name);
    if d.replicas <= 0 {
        return Some(format!("{id} is scaled to 0 replicas"));
    }
    let own: Vec<&PodState> = pods.iter().filter(|p| d.owns(p)).collect();
    let troubled: Vec<(&str, &str)> = own
        .iter()
        .filter_map(|p| p.trouble(now).map(|t| (p.name.as_str(), t)))
        .collect();
    let working = own
        .iter()
        .filter(|p| p.ready && p.trouble(now).is_none())
        .count();
    if let Some((pod, why)) = troubled.first()
        && working == 0
    {
        return Some(format!(
            "{id} has {} of {} replicas available: pod {pod} {why}",
            d.available.max(0),
            d.replicas
        ));
    }
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    match d.unavailable_since {
        Some(since) if d.available <= 0 && now.saturating_sub(since) > grace => Some(format!(
            "{id} has had no available replica for {}s",
            now.saturating_sub(since)
        )),
        _ => None,
    }
}

/// The Flux controllers whose Deployments say they are not working, each with why (the first
/// such Deployment of a controller; only the shard fluxmedic serves counts).
pub fn workloads_down(
    deployments: &[DeploymentState],
    pods: &[PodState],
    own_selector: Option<&str>,
    now: i64,
    grace: Duration,
) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    for d in deployments.iter().filter(|d| same_shard(d, own_selector)) {
        if out.contains_key(d.controller) {
            continue;
        }
        if let Some(why) = deployment_down(d, pods, now, grace) {
            out.insert(d.controller, why);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn source(
        requested: Option<&str>,
        handled: Option<&str>,
        suspend: bool,
    ) -> crate::flux::FluxObject {
        let mut ann = serde_json::Map::new();
        if let Some(r) = requested {
            ann.insert("reconcile.fluxcd.io/requestedAt".into(), json!(r));
        }
        crate::flux::from_value(
            &json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": "repo", "namespace": "apps", "annotations": ann},
            "spec": {"suspend": suspend}, "status": {"lastHandledReconcileAt": handled}}),
        )
        .unwrap()
    }

    #[test]
    fn an_old_unhandled_request_means_its_controller_is_not_working() {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let ago = |s: i64| (now - jiff::SignedDuration::from_secs(s)).to_string();
        let bound = Duration::from_secs(120);
        let check = |o| unresponsive(&Snapshot::new([o], now.as_second()), bound);
        // Handled, or too recent to tell: fine.
        assert!(check(source(Some(&ago(600)), Some(&ago(600)), false)).is_empty());
        assert!(check(source(Some(&ago(30)), Some(&ago(600)), false)).is_empty());
        // Unhandled for 10 minutes: source-controller is not working.
        let down = check(source(Some(&ago(600)), Some(&ago(900)), false));
        assert_eq!(down["source-controller"].waited, 600);
        assert!(
            down["source-controller"]
                .to_string()
                .contains("not processing")
        );
        // Suspended: requests wait by design. Not a timestamp: not ours to judge.
        assert!(check(source(Some(&ago(600)), None, true)).is_empty());
        assert!(check(source(Some("manual-1"), None, false)).is_empty());
        // An object with a long timeout of its own may keep its controller busy that long.
        let mut slow = source(Some(&ago(300)), None, false);
        slow.timeout = Some(Duration::from_secs(600));
        assert!(check(slow.clone()).is_empty());
        slow.timeout = Some(Duration::from_secs(120));
        assert!(!check(slow).is_empty(), "120s + 120s < 300s");
    }

    #[test]
    fn watch_label_selectors_are_read_as_the_controllers_read_them() {
        let labels: BTreeMap<String, String> = [
            ("sharding.fluxcd.io/key".to_string(), "shard1".to_string()),
            ("team".to_string(), "a".to_string()),
        ]
        .into();
        let none = BTreeMap::new();
        let m = |s: &str, l: &BTreeMap<String, String>| selector_matches(s, l);
        assert_eq!(m("sharding.fluxcd.io/key=shard1", &labels), Some(true));
        assert_eq!(m("sharding.fluxcd.io/key==shard1", &labels), Some(true));
        assert_eq!(m("sharding.fluxcd.io/key=shard2", &labels), Some(false));
        assert_eq!(m("!sharding.fluxcd.io/key", &labels), Some(false));
        assert_eq!(m("!sharding.fluxcd.io/key", &none), Some(true));
        assert_eq!(m("sharding.fluxcd.io/key!=shard1", &labels), Some(false));
        assert_eq!(m("sharding.fluxcd.io/key!=shard1", &none), Some(true));
        assert_eq!(
            m("sharding.fluxcd.io/key in (shard1, shard2),team", &labels),
            Some(true)
        );
        assert_eq!(
            m("sharding.fluxcd.io/key notin (shard1,shard2)", &labels),
            Some(false)
        );
        assert_eq!(
            m("team, sharding.fluxcd.io/key=shard1", &labels),
            Some(true)
        );
        assert_eq!(
            m("", &none),
            Some(true),
            "an empty selector watches everything"
        );
        for unreadable in ["a in (b", "a in b)", "=x", "a b=c", "k in ((x))"] {
            assert_eq!(m(unreadable, &labels), None, "{unreadable}");
        }
    }

    #[test]
    fn the_deployment_says_which_identity_helm_controller_uses() {
        let d = deployment(
            "helm-controller",
            1,
            1,
            &[
                "--watch-all-namespaces",
                "--default-service-account=default",
            ],
            None,
        );
        assert_eq!(d.default_service_account.as_deref(), Some("default"));
        assert_eq!(
            d.service_account, "default",
            "no serviceAccountName: default"
        );
        let d = deployment(
            "helm-controller",
            1,
            1,
            &["--default-service-account", "tenant"],
            None,
        );
        assert_eq!(d.default_service_account.as_deref(), Some("tenant"));
        let d = deployment(
            "helm-controller",
            1,
            1,
            &["--default-service-account="],
            None,
        );
        assert_eq!(d.default_service_account, None, "empty means unrestricted");
    }

    const NOW: i64 = 1_800_000_000;

    fn at(ago: i64) -> String {
        jiff::Timestamp::from_second(NOW - ago).unwrap().to_string()
    }

    /// A Deployment as `flux install` writes it (labels, selector, args), with a status.
    fn deployment(
        name: &str,
        replicas: i32,
        available: i32,
        args: &[&str],
        unavailable_for: Option<i64>,
    ) -> DeploymentState {
        let component = name.split("-shard").next().unwrap();
        let mut conditions = vec![];
        if let Some(s) = unavailable_for {
            conditions.push(json!({"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                "message": "Deployment does not have minimum availability.", "lastTransitionTime": at(s), "lastUpdateTime": at(s)}));
        }
        let d: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "flux-system",
                "labels": {"app.kubernetes.io/component": component, "app.kubernetes.io/instance": "flux-system", "control-plane": "controller"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "manager", "image": "ghcr.io/fluxcd/x:v1", "args": args}]}}},
            "status": {"replicas": replicas, "availableReplicas": available, "conditions": conditions}
        }))
        .unwrap();
        DeploymentState::from_deployment(&d).unwrap()
    }

    /// A pod of `app` as kubelet reports it: `waiting` (a reason), restarts, the last exit.
    fn pod(
        name: &str,
        app: &str,
        ready: bool,
        waiting: Option<&str>,
        restarts: i32,
        last_exit_ago: Option<i64>,
    ) -> PodState {
        let state = match waiting {
            Some(r) => {
                json!({"waiting": {"reason": r, "message": format!("back-off 2m40s restarting failed container=manager pod={name}_flux-system(0d5c)")}})
            }
            None => json!({"running": {"startedAt": at(5)}}),
        };
        let last = match last_exit_ago {
            Some(s) => {
                json!({"terminated": {"exitCode": 1, "reason": "Error", "startedAt": at(s + 2), "finishedAt": at(s), "containerID": "containerd://abc"}})
            }
            None => json!({}),
        };
        let p: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "flux-system", "labels": {"app": app, "pod-template-hash": "7c9d"}},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{"name": "manager", "ready": ready, "restartCount": restarts, "image": "ghcr.io/fluxcd/x:v1",
                    "imageID": "", "started": ready, "state": state, "lastState": last}]}
        }))
        .unwrap();
        PodState::from_pod(&p)
    }

    const GRACE: Duration = Duration::from_secs(120);

    #[test]
    fn a_crash_looping_controller_is_down_at_once() {
        let d = deployment(
            "helm-controller",
            1,
            0,
            &["--watch-all-namespaces"],
            Some(20),
        );
        let crashing = pod(
            "helm-controller-7c9d-x2",
            "helm-controller",
            false,
            Some("CrashLoopBackOff"),
            4,
            Some(15),
        );
        let why = deployment_down(&d, std::slice::from_ref(&crashing), NOW, GRACE).expect("down");
        assert_eq!(
            why,
            "Deployment flux-system/helm-controller has 0 of 1 replicas available: pod helm-controller-7c9d-x2 container manager is in CrashLoopBackOff (4 restarts; last exit code 1 Error)"
        );
        // Between two crashes it runs, even Ready for a moment: still crash-looping.
        let between = pod(
            "helm-controller-7c9d-x2",
            "helm-controller",
            true,
            None,
            5,
            Some(30),
        );
        assert!(
            deployment_down(&d, &[between], NOW, GRACE)
                .unwrap()
                .contains("keeps restarting")
        );
        // Restarts long ago: it runs now.
        let settled = pod(
            "helm-controller-7c9d-x2",
            "helm-controller",
            true,
            None,
            5,
            Some(3600),
        );
        let up = deployment("helm-controller", 1, 1, &[], None);
        assert_eq!(deployment_down(&up, &[settled], NOW, GRACE), None);
        // One replica crash-looping beside a working one: the controller works.
        let two = deployment("helm-controller", 2, 1, &[], Some(20));
        let fine = pod(
            "helm-controller-7c9d-a1",
            "helm-controller",
            true,
            None,
            0,
            None,
        );
        assert_eq!(
            deployment_down(&two, &[crashing.clone(), fine], NOW, GRACE),
            None
        );
        // A pod of something else in the namespace is not its pod.
        let other = pod(
            "notification-controller-1",
            "notification-controller",
            false,
            Some("CrashLoopBackOff"),
            9,
            Some(5),
        );
        assert_eq!(deployment_down(&up, &[other], NOW, GRACE), None);
        // Just crashed, before kubelet's back-off shows: not running either. A finished init
        // container (exit 0) is no trouble.
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "helm-controller-7c9d-x4", "labels": {"app": "helm-controller"}},
            "status": {"initContainerStatuses": [{"name": "init", "ready": true, "restartCount": 0, "image": "i", "imageID": "",
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
                "containerStatuses": [{"name": "manager", "ready": false, "restartCount": 1, "image": "i", "imageID": "",
                    "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]}}))
        .unwrap();
        let exited = PodState::from_pod(&p);
        assert_eq!(exited.cannot_start.len(), 1, "{exited:?}");
        assert!(
            deployment_down(&d, &[exited], NOW, GRACE)
                .unwrap()
                .contains("container manager exited with code 2 Error (1 restarts)")
        );
        // An image that cannot be pulled: it will not start either.
        let pull = pod(
            "helm-controller-7c9d-x3",
            "helm-controller",
            false,
            Some("ImagePullBackOff"),
            0,
            None,
        );
        assert!(
            deployment_down(&d, &[pull], NOW, GRACE)
                .unwrap()
                .contains("ImagePullBackOff")
        );
    }

    #[test]
    fn scaled_to_zero_or_unavailable_past_the_grace_is_down() {
        let zero = deployment("kustomize-controller", 0, 0, &[], None);
        assert_eq!(
            deployment_down(&zero, &[], NOW, GRACE).unwrap(),
            "Deployment flux-system/kustomize-controller is scaled to 0 replicas"
        );
        // Pending (no node, a failing probe): a rollout may take a while, the grace covers it.
        let pending = deployment("kustomize-controller", 1, 0, &[], Some(60));
        assert_eq!(deployment_down(&pending, &[], NOW, GRACE), None);
        let stuck = deployment("kustomize-controller", 1, 0, &[], Some(600));
        assert_eq!(
            deployment_down(&stuck, &[], NOW, GRACE).unwrap(),
            "Deployment flux-system/kustomize-controller has had no available replica for 600s"
        );
        // Odd values never panic nor count as available.
        let odd = deployment(
            "kustomize-controller",
            i32::MAX,
            i32::MIN,
            &[],
            Some(-i64::from(u32::MAX)),
        );
        assert_eq!(deployment_down(&odd, &[], NOW, Duration::MAX), None);
    }

    #[test]
    fn only_flux_controllers_of_the_shard_fluxmedic_serves_count() {
        let main = deployment(
            "source-controller",
            1,
            0,
            &["--watch-label-selector=!sharding.fluxcd.io/key"],
            Some(20),
        );
        let shard = deployment(
            "source-controller-shard1",
            1,
            0,
            &["--watch-label-selector", "sharding.fluxcd.io/key=shard1"],
            Some(20),
        );
        assert_eq!(shard.controller, "source-controller");
        assert_eq!(
            shard.watch_selector.as_deref(),
            Some("sharding.fluxcd.io/key=shard1")
        );
        let pods = [pod(
            "source-controller-1",
            "source-controller",
            false,
            Some("CrashLoopBackOff"),
            3,
            Some(5),
        )];
        let deps = [main, shard];
        // The main controller crash-loops: down for the main fluxmedic and an unsharded one.
        let down = workloads_down(&deps, &pods, Some("!sharding.fluxcd.io/key"), NOW, GRACE);
        assert!(down["source-controller"].contains("source-controller-1"));
        assert!(workloads_down(&deps, &pods, None, NOW, GRACE).contains_key("source-controller"));
        // Not for the instance serving shard1, whose controller has no pod trouble.
        assert!(
            workloads_down(
                &deps,
                &pods,
                Some("sharding.fluxcd.io/key=shard1"),
                NOW,
                GRACE
            )
            .is_empty()
        );
        // Deployments of other controllers are not Flux controllers fluxmedic depends on.
        let d: Deployment =
            serde_json::from_value(json!({"metadata": {"name": "image-reflector-controller",
            "labels": {"app.kubernetes.io/component": "image-reflector-controller"}}}))
            .unwrap();
        assert_eq!(DeploymentState::from_deployment(&d), None);
    }

    #[test]
    fn a_crash_looping_controller_is_evidence_on_the_objects_it_serves() {
        let mut snap = Snapshot::new([source(None, None, false)], NOW);
        snap.objects.values_mut().for_each(|o| {
            let mut v = (**o).clone();
            v.conditions = vec![crate::flux::Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "GitOperationFailed".into(),
                message: "failed to checkout and determine revision: unable to clone 'http://g/r.git': dial tcp: connect: connection refused".into(),
                ..Default::default()
            }];
            *o = std::sync::Arc::new(v);
        });
        snap.flux_deployments = vec![deployment("source-controller", 1, 0, &[], Some(20))];
        snap.flux_pods = vec![pod(
            "source-controller-1",
            "source-controller",
            false,
            Some("CrashLoopBackOff"),
            3,
            Some(5),
        )];
        // A dump (no bound) is not judged; the operator's snapshot is.
        assert!(super::super::diagnose(&snap).controllers_down.is_empty());
        snap.request_bound = Some(GRACE);
        let report = super::super::diagnose(&snap);
        assert!(report.controllers_down["source-controller"].contains("CrashLoopBackOff"));
        let d = &report.diagnoses[0];
        assert!(
            d.evidence
                .iter()
                .any(|e| e.reason == "ControllerNotWorking"
                    && e.message.contains("CrashLoopBackOff")),
            "{d:?}"
        );
    }
}
