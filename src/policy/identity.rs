//! Whose rights a Helm action uses. fluxmedic never lends its own: a rollback, an unlock or a
//! deleted pending release runs as the identity helm-controller itself uses for that
//! HelmRelease (helm-controller `internal/kube/impersonate.go`):
//!
//! 1. `spec.serviceAccountName`, in the HelmRelease's namespace;
//! 2. else, under Flux's multi-tenancy lockdown (`--default-service-account=<name>`), that
//!    ServiceAccount in the HelmRelease's namespace;
//! 3. else helm-controller's own ServiceAccount: it runs unrestricted, and so may the action.
//!
//! Which of 2 and 3 holds is read from helm-controller's Deployment in the Flux namespace (the
//! one whose `--watch-label-selector` serves the HelmRelease), or, where that cannot be read,
//! from what the operator was told ([`HelmControllerIdentity`]). When neither says, the
//! action is blocked with the reason; it never falls back to fluxmedic's rights.

use super::Blocked;
pub use crate::flux::{HelmControllerIdentity, ServiceAccountRef};
use crate::{
    diagnose::{
        Snapshot,
        controllers::{DeploymentState, selector_matches},
    },
    flux::FluxObject,
};

/// The identity helm-controller uses for HelmRelease `hr`, or why it cannot be told.
pub fn helm_identity(snap: &Snapshot, hr: &FluxObject) -> Result<ServiceAccountRef, Blocked> {
    let ns = &hr.key.namespace;
    if let Some(sa) = hr
        .helm
        .as_ref()
        .and_then(|h| h.service_account.as_deref())
        .filter(|s| !s.is_empty())
    {
        return Ok(ServiceAccountRef::new(ns, sa));
    }
    let serving: Vec<&DeploymentState> = snap
        .flux_deployments
        .iter()
        .filter(|d| d.controller == "helm-controller")
        .filter(|d| match d.watch_selector.as_deref() {
            None => true,
            // An unreadable selector: it may serve this HelmRelease; counted, so that the
            // identities below must agree with it.
            Some(s) => selector_matches(s, &hr.labels).unwrap_or(true),
        })
        .collect();
    let of = |d: &DeploymentState| match &d.default_service_account {
        Some(sa) => ServiceAccountRef::new(ns, sa),
        None => ServiceAccountRef::new(&d.namespace, &d.service_account),
    };
    if let Some(first) = serving.first() {
        let identity = of(first);
        if let Some(other) = serving.iter().find(|d| of(d) != identity) {
            return Err(Blocked::IdentityUnknown(format!(
                "helm-controller Deployments {}/{} and {}/{} both serve {} and act as different identities ({} and {})",
                first.namespace,
                first.name,
                other.namespace,
                other.name,
                hr.key,
                identity,
                of(other)
            )));
        }
        return Ok(identity);
    }
    match &snap.helm_controller {
        Some(HelmControllerIdentity::Lockdown {
            default_service_account,
        }) => Ok(ServiceAccountRef::new(ns, default_service_account)),
        Some(HelmControllerIdentity::Unrestricted { service_account }) => {
            Ok(service_account.clone())
        }
        None => Err(Blocked::IdentityUnknown(format!(
            "cannot tell which identity helm-controller uses for {}: no helm-controller Deployment serving it is visible in the Flux namespace, and none is configured (--helm-controller-service-account or --helm-default-service-account)",
            hr.key
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::flux::from_value;

    fn hr(labels: serde_json::Value, sa: Option<&str>) -> FluxObject {
        from_value(&json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": "web", "namespace": "apps", "labels": labels},
            "spec": {"interval": "5m", "serviceAccountName": sa,
                     "chart": {"spec": {"chart": "web", "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}}}))
        .unwrap()
    }

    fn helm_controller(
        name: &str,
        selector: Option<&str>,
        default_sa: Option<&str>,
    ) -> DeploymentState {
        DeploymentState {
            namespace: "flux-system".into(),
            name: name.into(),
            controller: "helm-controller",
            replicas: 1,
            available: 1,
            watch_selector: selector.map(String::from),
            service_account: "helm-controller".into(),
            default_service_account: default_sa.map(String::from),
            ..Default::default()
        }
    }

    fn snap(
        deployments: Vec<DeploymentState>,
        configured: Option<HelmControllerIdentity>,
    ) -> Snapshot {
        Snapshot {
            flux_deployments: deployments,
            helm_controller: configured,
            ..Default::default()
        }
    }

    #[test]
    fn a_release_with_its_own_service_account_runs_as_it() {
        let s = snap(
            vec![helm_controller("helm-controller", None, Some("default"))],
            None,
        );
        assert_eq!(
            helm_identity(&s, &hr(json!({}), Some("deployer"))),
            Ok(ServiceAccountRef::new("apps", "deployer"))
        );
        // Even with nothing known about helm-controller.
        assert_eq!(
            helm_identity(&snap(vec![], None), &hr(json!({}), Some("deployer"))),
            Ok(ServiceAccountRef::new("apps", "deployer"))
        );
    }

    #[test]
    fn under_flux_lockdown_a_release_runs_as_its_namespaces_default_account() {
        let s = snap(
            vec![helm_controller("helm-controller", None, Some("default"))],
            None,
        );
        assert_eq!(
            helm_identity(&s, &hr(json!({}), None)),
            Ok(ServiceAccountRef::new("apps", "default")),
            "never fluxmedic's own, never helm-controller's"
        );
        // Configured instead of read: the same.
        let s = snap(
            vec![],
            Some(HelmControllerIdentity::Lockdown {
                default_service_account: "tenant".into(),
            }),
        );
        assert_eq!(
            helm_identity(&s, &hr(json!({}), None)),
            Ok(ServiceAccountRef::new("apps", "tenant"))
        );
    }

    #[test]
    fn an_unrestricted_helm_controller_lends_its_own_account_and_nothing_else() {
        let s = snap(vec![helm_controller("helm-controller", None, None)], None);
        assert_eq!(
            helm_identity(&s, &hr(json!({}), None)),
            Ok(ServiceAccountRef::new("flux-system", "helm-controller"))
        );
        // The Deployment wins over what the operator was told: it is what runs.
        let s = snap(
            vec![helm_controller("helm-controller", None, Some("default"))],
            Some(HelmControllerIdentity::Unrestricted {
                service_account: ServiceAccountRef::new("flux-system", "helm-controller"),
            }),
        );
        assert_eq!(
            helm_identity(&s, &hr(json!({}), None)),
            Ok(ServiceAccountRef::new("apps", "default"))
        );
    }

    #[test]
    fn the_shard_serving_the_release_decides() {
        let main = helm_controller("helm-controller", Some("!sharding.fluxcd.io/key"), None);
        let locked = helm_controller(
            "helm-controller-tenants",
            Some("sharding.fluxcd.io/key=tenants"),
            Some("default"),
        );
        let s = snap(vec![main, locked], None);
        assert_eq!(
            helm_identity(&s, &hr(json!({"sharding.fluxcd.io/key": "tenants"}), None)),
            Ok(ServiceAccountRef::new("apps", "default"))
        );
        assert_eq!(
            helm_identity(&s, &hr(json!({}), None)),
            Ok(ServiceAccountRef::new("flux-system", "helm-controller"))
        );
    }

    #[test]
    fn an_identity_that_cannot_be_told_blocks_the_action() {
        // Nothing visible, nothing configured.
        let err = helm_identity(&snap(vec![], None), &hr(json!({}), None)).unwrap_err();
        assert!(matches!(err, Blocked::IdentityUnknown(_)), "{err}");
        assert!(
            err.to_string()
                .contains("--helm-controller-service-account"),
            "{err}"
        );
        // Two controllers serve it and disagree (one locked down, one not).
        let s = snap(
            vec![
                helm_controller("helm-controller", None, None),
                helm_controller("helm-controller-b", Some("team"), Some("default")),
            ],
            None,
        );
        let err = helm_identity(&s, &hr(json!({"team": "x"}), None)).unwrap_err();
        assert!(err.to_string().contains("different identities"), "{err}");
        // A selector that cannot be read counts as serving it.
        let s = snap(
            vec![
                helm_controller("helm-controller", None, None),
                helm_controller("helm-controller-b", Some("a in (b"), Some("default")),
            ],
            None,
        );
        assert!(helm_identity(&s, &hr(json!({}), None)).is_err());
    }

    #[test]
    fn service_account_references_parse_strictly() {
        assert_eq!(
            ServiceAccountRef::parse("flux-system/helm-controller"),
            Some(ServiceAccountRef::new("flux-system", "helm-controller"))
        );
        for bad in ["helm-controller", "/x", "x/", "a/b/c", "A/b", "a/b c"] {
            assert_eq!(ServiceAccountRef::parse(bad), None, "{bad}");
        }
        assert_eq!(
            ServiceAccountRef::new("apps", "default").username(),
            "system:serviceaccount:apps:default"
        );
    }
}
