//! The kubeconfig the helm binary runs with: fluxmedic's own connection, acting as another
//! identity.
//!
//! helm (client-go) only honours `--kube-as-user` when it loads a kubeconfig: in a pod, with
//! no kubeconfig, it builds its in-cluster config, drops the impersonation override and falls
//! back to `http://localhost:8080`. So the impersonation is written into a kubeconfig built
//! from the connection fluxmedic itself uses, and helm is pointed at that file.

use std::os::unix::fs::DirBuilderExt as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};

use crate::flux::ServiceAccountRef;

/// A kubeconfig with `config`'s server, trust and credentials, impersonating `who` (and only
/// `who`: no groups, uid or extras carried over) in `namespace`.
pub fn impersonating(
    config: &kube::Config,
    who: &ServiceAccountRef,
    namespace: &str,
) -> Kubeconfig {
    let cluster = Cluster {
        server: Some(config.cluster_url.to_string()),
        insecure_skip_tls_verify: config.accept_invalid_certs.then_some(true),
        // A file is re-read by helm as it is by kube (in a pod, the rotated CA bundle).
        // client-go refuses a CA beside insecure-skip-tls-verify.
        certificate_authority: config
            .root_cert_file
            .as_ref()
            .filter(|_| !config.accept_invalid_certs)
            .map(|p| p.display().to_string()),
        certificate_authority_data: match &config.root_cert_file {
            _ if config.accept_invalid_certs => None,
            Some(_) => None,
            None => config.root_cert.as_deref().map(pem_bundle),
        },
        proxy_url: config.proxy_url.as_ref().map(|u| u.to_string()),
        tls_server_name: config.tls_server_name.clone(),
        ..Default::default()
    };
    let user = AuthInfo {
        impersonate: Some(who.username()),
        impersonate_groups: None,
        impersonate_uid: None,
        impersonate_user_extra: None,
        ..config.auth_info.clone()
    };
    Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: "fluxmedic".into(),
            cluster: Some(cluster),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "fluxmedic".into(),
            auth_info: Some(user),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: "fluxmedic".into(),
            context: Some(Context {
                cluster: "fluxmedic".into(),
                user: Some("fluxmedic".into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some("fluxmedic".into()),
        ..Default::default()
    }
}

/// The directory helm's kubeconfigs are written in: `fluxmedic-helm-<pid>` under the temp
/// directory, private (0700), emptied the first time it is used by a process. A kubeconfig
/// a killed fluxmedic left there (in a container the pid is the same after a restart, and
/// `/tmp` an emptyDir that outlives it) is removed then; another live process's never is.
pub fn private_dir() -> std::io::Result<std::path::PathBuf> {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    if let Some(dir) = DIR.get() {
        return Ok(dir.clone());
    }
    let dir = std::env::temp_dir().join(format!("fluxmedic-helm-{}", std::process::id()));
    fresh(&dir)?;
    Ok(DIR.get_or_init(|| dir).clone())
}

/// `dir`, emptied of anything left there, and private.
fn fresh(dir: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

/// DER certificates as the base64 of a PEM bundle (`certificate-authority-data`).
fn pem_bundle(ders: &[Vec<u8>]) -> String {
    let mut pem = String::new();
    for der in ders {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let body = STANDARD.encode(der);
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    STANDARD.encode(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa() -> ServiceAccountRef {
        ServiceAccountRef {
            namespace: "team-a".into(),
            name: "deployer".into(),
        }
    }

    fn config() -> kube::Config {
        let mut c = kube::Config::new("https://10.0.0.1:443".parse().unwrap());
        c.root_cert = Some(vec![vec![1u8; 100], vec![2u8; 3]]);
        c.auth_info.token_file = Some("/var/run/secrets/token".into());
        c.auth_info.impersonate_groups = Some(vec!["system:masters".into()]);
        c
    }

    #[test]
    fn acts_only_as_the_given_account_with_the_operators_credentials() {
        let k = impersonating(&config(), &sa(), "team-a");
        let user = k.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(
            user.impersonate.as_deref(),
            Some("system:serviceaccount:team-a:deployer")
        );
        assert_eq!(user.impersonate_groups, None, "no group rides along");
        assert_eq!(user.token_file.as_deref(), Some("/var/run/secrets/token"));
        let ctx = k.contexts[0].context.as_ref().unwrap();
        assert_eq!(ctx.namespace.as_deref(), Some("team-a"));
        assert_eq!(k.current_context.as_deref(), Some("fluxmedic"));
    }

    #[test]
    fn the_written_file_reads_back_as_the_same_connection() {
        let k = impersonating(&config(), &sa(), "team-a");
        let text = serde_json::to_string(&k).unwrap();
        assert!(
            text.contains(r#""as":"system:serviceaccount:team-a:deployer""#),
            "{text}"
        );
        let back = Kubeconfig::from_yaml(&text).unwrap();
        let cluster = back.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.1:443/"));
        let pem = String::from_utf8(
            STANDARD
                .decode(cluster.certificate_authority_data.as_deref().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
    }

    #[test]
    fn a_ca_file_stays_a_file_so_a_rotation_is_seen() {
        let mut c = config();
        c.root_cert_file = Some("/var/run/secrets/ca.crt".into());
        let k = impersonating(&c, &sa(), "team-a");
        let cluster = k.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(
            cluster.certificate_authority.as_deref(),
            Some("/var/run/secrets/ca.crt")
        );
        assert_eq!(cluster.certificate_authority_data, None);
    }

    #[test]
    fn no_ca_beside_insecure_skip_tls_verify() {
        let mut c = config();
        c.accept_invalid_certs = true;
        let k = impersonating(&c, &sa(), "team-a");
        let cluster = k.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.insecure_skip_tls_verify, Some(true));
        assert_eq!(cluster.certificate_authority_data, None);
    }

    #[test]
    fn a_namespace_yaml_1_1_reads_as_a_boolean_stays_a_string() {
        let k = impersonating(&config(), &sa(), "no");
        let text = serde_json::to_string(&k).unwrap();
        assert!(text.contains(r#""namespace":"no""#), "{text}");
    }

    #[test]
    fn the_directory_is_private_and_one_per_process() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = private_dir().unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(private_dir().unwrap(), dir);
        // What a killed process left is gone when the directory is taken again.
        let parent = tempfile::tempdir().unwrap();
        let reused = parent.path().join("fluxmedic-helm-1");
        std::fs::create_dir(&reused).unwrap();
        std::fs::write(reused.join("helm-x.kubeconfig"), "token: secret").unwrap();
        fresh(&reused).unwrap();
        assert_eq!(std::fs::read_dir(&reused).unwrap().count(), 0);
        let mode = std::fs::metadata(&reused).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
