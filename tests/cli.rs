//! `fluxmedic diagnose -f` on a realistic dump, and its error handling.

use std::process::Command;

use serde_json::Value;

fn fluxmedic(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fluxmedic"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const DUMP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/cluster-dump.yaml"
);

#[test]
fn diagnose_json_on_a_realistic_dump() {
    let (code, out, err) = fluxmedic(&["diagnose", "-f", DUMP, "-o", "json"], None);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    let find = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(rows.len(), 9, "only the failing objects are listed");
    for r in &rows {
        for field in ["kind", "namespace", "name", "case", "root", "retryable"] {
            assert!(r.get(field).is_some(), "field {field} missing in {r}");
        }
    }
    // dependency chain of three: act on the root only
    assert_eq!(find("infra-controllers")["case"], "invalid-manifests");
    assert_eq!(find("apps")["case"], "dependency-cascade");
    assert_eq!(
        find("apps")["root"],
        "Kustomization/flux-system/infra-controllers"
    );
    assert!(find("apps")["action"].is_null());
    // a shared failing source
    assert_eq!(find("team-a")["case"], "git-auth");
    for n in ["team-a-frontend", "team-a-backend", "team-a-jobs"] {
        assert_eq!(find(n)["root"], "GitRepository/flux-system/team-a");
    }
    let ev = find("team-a")["evidence"].to_string();
    assert!(
        ev.contains("has keys [username] but a http URL needs username+password or bearerToken"),
        "{ev}"
    );
    // Helm
    assert_eq!(find("podinfo")["case"], "failed-release");
    assert_eq!(find("podinfo")["retryable"], true);
    assert_eq!(find("podinfo")["action"], "retry");
    assert_eq!(find("redis")["case"], "stale-lock");
    // A dump says nothing of helm-controller's identity: the unlock is not planned, and says why.
    assert!(find("redis")["action"].is_null());
    assert!(
        find("redis")["blocked"]
            .as_str()
            .is_some_and(|b| b.contains("cannot tell which identity helm-controller uses")),
        "{}",
        find("redis")
    );
    // Told, as the operator is told: the unlock, as that identity.
    let (code, out, err) = fluxmedic(
        &[
            "diagnose",
            "-f",
            DUMP,
            "-o",
            "json",
            "--helm-controller-service-account",
            "flux-system/helm-controller",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    let redis = rows.iter().find(|r| r["name"] == "redis").unwrap();
    assert_eq!(redis["action"], "unlock data/sh.helm.release.v1.redis.v2");
    let (code, _, err) = fluxmedic(
        &[
            "diagnose",
            "-f",
            DUMP,
            "--helm-controller-service-account",
            "helm-controller",
        ],
        None,
    );
    assert_eq!(code, 2);
    assert!(err.contains("must be namespace/name"), "{err}");
}

#[test]
fn diagnose_table_is_readable() {
    let (code, out, _) = fluxmedic(&["diagnose", "-f", DUMP], None);
    assert_eq!(code, 0);
    assert!(out.starts_with("KIND "), "{out}");
    assert!(out.contains("9 of 22 Flux objects failing."), "{out}");
    assert!(out.contains("Shared roots: GitRepository/flux-system/team-a (3 blocked) Kustomization/flux-system/infra-controllers (2 blocked)"), "{out}");
}

#[test]
fn observe_policy_changes_what_would_be_done() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.yaml");
    std::fs::write(&p, "apiVersion: fluxmedic.io/v1alpha1\nkind: RemediationPolicy\nmetadata: {name: watch-only, namespace: flux-system}\nspec:\n  rules:\n  - {case: failed-release, mode: Observe}\n").unwrap();
    let (code, out, err) = fluxmedic(
        &[
            "diagnose",
            "-f",
            DUMP,
            "-o",
            "json",
            "--policy",
            p.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    let podinfo = rows.iter().find(|r| r["name"] == "podinfo").unwrap();
    assert_eq!(podinfo["action"], "(retry)");
    assert_eq!(podinfo["blocked"], "policy mode is Observe: record only");
}

#[test]
fn bad_input_is_a_clear_error_with_exit_code_2() {
    let bad = "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: a, namespace: b}\nspec: {interval: often}\n";
    let (code, out, err) = fluxmedic(&["diagnose", "-f", "-"], Some(bad));
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert_eq!(
        err.trim(),
        "error: stdin: document 1: Kustomization b/a: field `spec.interval`: `often` is not a duration"
    );
    let (code, _, err) = fluxmedic(&["diagnose", "-f", "/nonexistent/dump.yaml"], None);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/dump.yaml"), "{err}");
    let (code, _, err) = fluxmedic(&["diagnose", "-f", "-"], Some("{{{"));
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("panicked"));
    // The operator refuses an events address it cannot post to, before connecting anywhere.
    let (code, _, err) = fluxmedic(&["run", "--events-addr", "https://nc.example/"], None);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--events-addr must be an http:// URL"),
        "{err}"
    );
    // With --log-json the fatal error is a log line like every other, flat as Flux's.
    let (code, _, err) = fluxmedic(
        &["run", "--log-json", "--events-addr", "https://nc.example/"],
        None,
    );
    assert_eq!(code, 2, "{err}");
    let line: serde_json::Value = serde_json::from_str(err.trim()).expect(&err);
    assert_eq!(line["level"], "error");
    assert!(
        line["msg"]
            .as_str()
            .unwrap()
            .contains("--events-addr must be an http:// URL"),
        "{err}"
    );
    assert!(line["ts"].as_str().unwrap().ends_with('Z'), "{err}");
    // A level that does not exist is refused with the ones that do.
    let (code, _, err) = fluxmedic(&["run", "--log-level", "verbose"], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("error, warn, info, debug, trace"), "{err}");
}

#[test]
fn crds_subcommand_prints_both_crds() {
    let (code, out, _) = fluxmedic(&["crds"], None);
    assert_eq!(code, 0);
    assert!(out.contains("name: remediationpolicies.fluxmedic.io"));
    assert!(out.contains("name: remediations.fluxmedic.io"));
}

/// `--exit-code` makes diagnose a pipeline gate: 3 while a Flux object fails, 0 when none
/// does; without it the exit status says only whether the diagnosis could be made.
#[test]
fn diagnose_exit_code_gates_a_pipeline_on_failures() {
    let (code, _, err) = fluxmedic(&["diagnose", "-f", DUMP, "--exit-code"], None);
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = fluxmedic(&["diagnose", "-f", DUMP], None);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = fluxmedic(&["diagnose", "-f", "/dev/null", "--exit-code"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("healthy"), "{out}");
    // An input that cannot be read is still 2, not taken for "failing".
    let (code, _, _) = fluxmedic(&["diagnose", "-f", "-", "--exit-code"], Some("{{{"));
    assert_eq!(code, 2);
    // YAML output, as -o yaml elsewhere.
    let (code, out, _) = fluxmedic(&["diagnose", "-f", DUMP, "-o", "yaml"], None);
    assert_eq!(code, 0);
    let rows: Vec<serde_json::Value> = serde_yaml_ng::from_str(&out).unwrap();
    assert!(rows.iter().any(|r| r["name"] == "podinfo"), "{out}");
}
