//! Which Flux kinds the API server serves, and in which version. Flux releases differ (2.7
//! still serves HelmRelease v2beta2 beside v2; a cluster may run source-controller alone):
//! fluxmedic watches each kind in the newest version it reads that is served, and leaves a
//! kind that is not served out, rather than waiting forever for a watch that cannot sync.

use std::collections::{BTreeMap, HashMap};

use kube::{Client, core::ApiResource};
use tracing::debug;

use crate::flux::FluxKind;

/// The versions fluxmedic reads, newest first.
pub fn readable_versions(kind: FluxKind) -> &'static [&'static str] {
    match kind {
        FluxKind::HelmRelease => &["v2", "v2beta2"],
        FluxKind::Kustomization => &["v1"],
        _ => &["v1", "v1beta2"],
    }
}

/// What discovery found.
#[derive(Clone, Debug, Default)]
pub struct Served {
    pub resources: HashMap<FluxKind, ApiResource>,
    /// Kinds not served in a readable version, with the reason.
    pub missing: BTreeMap<FluxKind, String>,
}

/// Pick, for each kind, the newest readable version among `served` (group -> versions with
/// their kinds). Pure, so it is tested without an API server.
pub fn choose(served: &HashMap<String, Vec<(String, Vec<ApiResource>)>>) -> Served {
    let mut out = Served::default();
    for kind in FluxKind::ALL {
        let group = kind.group();
        let Some(versions) = served.get(group) else {
            out.missing
                .insert(kind, format!("API group {group} is not served"));
            continue;
        };
        let found = readable_versions(kind).iter().find_map(|v| {
            versions
                .iter()
                .filter(|(served_v, _)| served_v == v)
                .flat_map(|(_, rs)| rs)
                .find(|r| r.kind == kind.as_str())
        });
        match found {
            Some(r) => {
                out.resources.insert(kind, r.clone());
            }
            None => {
                let have: Vec<String> = versions
                    .iter()
                    .filter(|(_, rs)| rs.iter().any(|r| r.kind == kind.as_str()))
                    .map(|(v, _)| v.clone())
                    .collect();
                let why = if have.is_empty() {
                    format!("{group} does not serve {kind}")
                } else {
                    format!(
                        "{group} serves {kind} only as {}; fluxmedic reads {}",
                        have.join(", "),
                        readable_versions(kind).join(", ")
                    )
                };
                out.missing.insert(kind, why);
            }
        }
    }
    out
}

/// Ask the API server. An unreachable discovery endpoint counts as "not served" for that
/// group (logged); the watches of the other groups go on.
pub async fn discover(client: &Client) -> Served {
    let mut served: HashMap<String, Vec<(String, Vec<ApiResource>)>> = HashMap::new();
    let groups: std::collections::BTreeSet<&str> =
        FluxKind::ALL.iter().map(|k| k.group()).collect();
    for group in groups {
        match kube::discovery::group(client, group).await {
            Ok(g) => {
                let versions = g
                    .versions()
                    .map(|v| {
                        let rs = g
                            .versioned_resources(v)
                            .into_iter()
                            .map(|(r, _)| r)
                            .collect();
                        (v.to_string(), rs)
                    })
                    .collect();
                served.insert(group.to_string(), versions);
            }
            Err(e) => debug!(group, error = %e, "API group not discovered"),
        }
    }
    choose(&served)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ar(group: &str, version: &str, kind: FluxKind) -> ApiResource {
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: format!("{group}/{version}"),
            kind: kind.as_str().into(),
            plural: kind.plural().into(),
        }
    }

    #[test]
    fn the_newest_readable_version_is_chosen_and_gaps_are_named() {
        let src = "source.toolkit.fluxcd.io";
        let mut served = HashMap::new();
        // Flux 2.7 style: HelmRelease in v2 and v2beta2; an old source-controller serving
        // OCIRepository only as v1beta1; no kustomize-controller at all.
        served.insert(
            "helm.toolkit.fluxcd.io".to_string(),
            vec![
                (
                    "v2beta2".to_string(),
                    vec![ar(
                        "helm.toolkit.fluxcd.io",
                        "v2beta2",
                        FluxKind::HelmRelease,
                    )],
                ),
                (
                    "v2".to_string(),
                    vec![ar("helm.toolkit.fluxcd.io", "v2", FluxKind::HelmRelease)],
                ),
            ],
        );
        served.insert(
            src.to_string(),
            vec![
                (
                    "v1".to_string(),
                    vec![
                        ar(src, "v1", FluxKind::GitRepository),
                        ar(src, "v1", FluxKind::HelmRepository),
                        ar(src, "v1", FluxKind::HelmChart),
                        ar(src, "v1", FluxKind::Bucket),
                    ],
                ),
                (
                    "v1beta1".to_string(),
                    vec![ar(src, "v1beta1", FluxKind::OCIRepository)],
                ),
            ],
        );
        let s = choose(&served);
        assert_eq!(s.resources[&FluxKind::HelmRelease].version, "v2");
        assert_eq!(s.resources[&FluxKind::GitRepository].version, "v1");
        assert!(s.missing[&FluxKind::Kustomization].contains("is not served"));
        assert_eq!(
            s.missing[&FluxKind::OCIRepository],
            "source.toolkit.fluxcd.io serves OCIRepository only as v1beta1; fluxmedic reads v1, v1beta2"
        );
        assert!(!s.resources.contains_key(&FluxKind::OCIRepository));
    }
}
