//! Whether Flux's controllers are working, read from what they do: a reconcile request
//! (`reconcile.fluxcd.io/requestedAt`, a timestamp token) that a controller has not handled
//! (`status.lastHandledReconcileAt`) long after it was made means the controller is not
//! processing its objects: down, wedged, or not running for that shard. Pure: from a snapshot.

use std::{collections::BTreeMap, fmt, time::Duration};

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
}
