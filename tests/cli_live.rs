//! The command line against the real API server: `get`, `approve`/`reject` (what exactly
//! they write, and where), `--kubeconfig`/`--context`, and `diagnose --policy` checking a
//! policy exactly as the API server does.

mod support;

use std::process::Command;

use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::*;

/// `fluxmedic ARGS --kubeconfig <the test plane's>`: exit code, stdout, stderr.
fn fluxmedic(env: &Env, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fluxmedic"))
        .args(args)
        .args(["--kubeconfig", env.kubeconfig()])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn remediations(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ar("fluxmedic.io", "v1alpha1", "Remediation", "remediations"),
    )
}

/// A Remediation waiting for approval of request `id`, decided by `policy` (`ns/name`).
async fn waiting(client: &kube::Client, ns: &str, name: &str, policy: &str, id: &str) {
    let api = remediations(client, ns);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "fluxmedic.io/v1alpha1", "kind": "Remediation",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"target": {"kind": "Kustomization", "namespace": ns, "name": "app"},
                 "targetName": "Kustomization/app", "case": "invalid-manifests"}
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
    let status = json!({"status": {"phase": "AwaitingApproval", "policy": policy, "attempts": 0,
        "approval": {"action": "reconcile-source GitRepository/x/repo", "id": id, "how": "-",
                     "planned": {"type": "ReconcileSource", "source": {"kind": "GitRepository", "namespace": ns, "name": "repo"}}},
        "conditions": [{"type": "Ready", "status": "False", "reason": "AwaitingApproval",
                        "message": "planned reconcile-source; waiting for approval", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// The fields a manager owns on an object, as the API server records them (its managedFields,
/// as paths of leaves; `.`, the map itself when the manager created it, is not a field).
fn owned_by(obj: &DynamicObject, manager: &str) -> Vec<String> {
    fn leaves(v: &Value, at: &str, out: &mut Vec<String>) {
        match v.as_object().filter(|m| m.keys().any(|k| k != ".")) {
            Some(m) => m
                .iter()
                .filter(|(k, _)| *k != ".")
                .for_each(|(k, v)| leaves(v, &format!("{at}/{k}"), out)),
            None => out.push(at.to_string()),
        }
    }
    let mut out = vec![];
    for m in obj.metadata.managed_fields.iter().flatten() {
        if m.manager.as_deref() == Some(manager) {
            leaves(&serde_json::to_value(&m.fields_v1).unwrap(), "", &mut out);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn approve_and_reject_write_one_annotation_where_the_decision_counts() {
    let (env, client, ns) = setup("cliapprove").await;
    let platform = namespace(&client, "cliplatform").await;
    apply(&client, policy(&platform, "platform", json!({}))).await;
    waiting(&client, &ns, "own", &format!("{ns}/local"), "abc123").await;
    waiting(
        &client,
        &ns,
        "platforms",
        &format!("{platform}/platform"),
        "def456",
    )
    .await;

    // A policy of the record's own namespace: the annotation on the record, nothing else.
    let (code, out, err) = fluxmedic(env, &["approve", "own", "-n", &ns]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("approved reconcile-source") && out.contains("abc123"),
        "{out}"
    );
    let rem = remediations(&client, &ns).get("own").await.unwrap();
    assert_eq!(
        rem.metadata.annotations.as_ref().unwrap()["fluxmedic.io/approve"],
        "abc123"
    );
    assert_eq!(
        owned_by(&rem, "fluxmedic-cli"),
        vec!["/f:metadata/f:annotations/f:fluxmedic.io/approve"]
    );
    // A policy of the operator's namespace decided: the approval goes on that policy (a
    // tenant's own word on its record would not count), and the record is left as it was.
    let (code, out, err) = fluxmedic(env, &["reject", "platforms", "-n", &ns]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("RemediationPolicy {platform}/platform")),
        "{out}"
    );
    let pol: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &platform,
        &ar(
            "fluxmedic.io",
            "v1alpha1",
            "RemediationPolicy",
            "remediationpolicies",
        ),
    );
    let p = pol.get("platform").await.unwrap();
    // Naming the record it was given for: the id copied into another record counts for nothing.
    assert_eq!(
        p.metadata.annotations.as_ref().unwrap()["reject.fluxmedic.io/def456"],
        format!("{ns}/platforms")
    );
    assert_eq!(
        owned_by(&p, "fluxmedic-cli"),
        vec!["/f:metadata/f:annotations/f:reject.fluxmedic.io/def456"]
    );
    let rem = remediations(&client, &ns).get("platforms").await.unwrap();
    assert!(owned_by(&rem, "fluxmedic-cli").is_empty());

    // A request the person did not read, or none at all: refused, nothing written.
    let (code, _, err) = fluxmedic(env, &["approve", "own", "-n", &ns, "--id", "zzz999"]);
    assert_eq!(code, 1);
    assert!(err.contains("now waits for request abc123"), "{err}");
    remediations(&client, &ns)
        .patch_status(
            "own",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"approval": null, "phase": "Succeeded"}})),
        )
        .await
        .unwrap();
    let (code, _, err) = fluxmedic(env, &["reject", "own", "-n", &ns]);
    assert_eq!(code, 1);
    assert!(err.contains("waits for no approval"), "{err}");
    let rem = remediations(&client, &ns).get("own").await.unwrap();
    assert!(
        !rem.metadata
            .annotations
            .unwrap()
            .contains_key("fluxmedic.io/reject")
    );
    // A forged id is not written into an annotation key.
    waiting(
        &client,
        &ns,
        "forged",
        &format!("{platform}/platform"),
        "x/../y",
    )
    .await;
    let (code, _, err) = fluxmedic(env, &["approve", "forged", "-n", &ns]);
    assert_eq!(code, 1);
    assert!(err.contains("not one fluxmedic makes"), "{err}");
    // Nor a forged policy name into a request path; nor is a rejected request approved.
    waiting(&client, &ns, "steer", "other/platform?dryRun=All", "ghi789").await;
    let (code, _, err) = fluxmedic(env, &["approve", "steer", "-n", &ns]);
    assert_eq!(code, 1);
    assert!(err.contains("does not name a policy"), "{err}");
    waiting(&client, &ns, "said-no", &format!("{ns}/local"), "jkl012").await;
    remediations(&client, &ns)
        .patch_status(
            "said-no",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"approval": {"rejected": true}}})),
        )
        .await
        .unwrap();
    let (code, _, err) = fluxmedic(env, &["approve", "said-no", "-n", &ns]);
    assert_eq!(code, 1);
    assert!(err.contains("was rejected"), "{err}");
    for name in ["forged", "steer", "said-no"] {
        let rem = remediations(&client, &ns).get(name).await.unwrap();
        assert!(owned_by(&rem, "fluxmedic-cli").is_empty(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn get_lists_records_and_policies_as_kubectl_would() {
    let (env, client, ns) = setup("cliget").await;
    apply(&client, policy(&ns, "mine", json!({"priority": 5}))).await;
    waiting(&client, &ns, "one", &format!("{ns}/mine"), "abc123").await;

    let (code, out, err) = fluxmedic(env, &["get", "remediations", "-n", &ns]);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("APPROVAL"),
        "{out}"
    );
    let row = lines.next().unwrap();
    for cell in [
        "one",
        "Kustomization/app",
        "invalid-manifests",
        "AwaitingApproval",
        "abc123",
    ] {
        assert!(row.contains(cell), "{cell} in {row}");
    }
    // Across namespaces, with the namespace first; as a List in JSON or YAML.
    let (code, out, _) = fluxmedic(env, &["get", "rem", "-A"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("NAMESPACE") && out.contains(&ns), "{out}");
    let (code, out, _) = fluxmedic(env, &["get", "rem", "-n", &ns, "-o", "json"]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][0]["status"]["approval"]["id"], "abc123");
    let (code, out, _) = fluxmedic(env, &["get", "policies", "-n", &ns, "-o", "yaml"]);
    assert_eq!(code, 0);
    let list: Value = serde_yaml_ng::from_str(&out).unwrap();
    assert_eq!(list["items"][0]["spec"]["priority"], 5);
    let (code, out, _) = fluxmedic(env, &["get", "rempol", "-n", &ns]);
    assert_eq!(code, 0);
    assert!(out.lines().nth(1).unwrap().starts_with("mine"), "{out}");
    let (code, out, _) = fluxmedic(env, &["get", "-n", "no-such-namespace-here"]);
    assert_eq!((code, out.as_str()), (0, "No resources found.\n"));

    // The context is kubectl's: the test plane's by name works, another is refused.
    let (code, _, err) = fluxmedic(env, &["get", "-n", &ns, "--context", "testenv"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = fluxmedic(env, &["get", "-n", &ns, "--context", "elsewhere"]);
    assert_eq!(code, 1);
    assert!(err.contains("elsewhere"), "{err}");
}

/// Every policy here is sent to the API server (kubectl's strict field validation, a
/// server-side dry run) and given to `fluxmedic diagnose --policy`: both accept it or both
/// refuse it.
#[tokio::test(flavor = "multi_thread")]
async fn diagnose_checks_a_policy_file_as_the_api_server_does() {
    let (env, _client, ns) = setup("clipolicy").await;
    let specs = [
        json!({}),
        json!({"rules": [{"case": "failed-release", "mode": "Auto", "actions": ["Retry", "Rollback"], "withSource": true}],
               "limits": {"maxAttempts": 5, "cooldown": "1m30s"}, "priority": -3,
               "targets": {"kinds": ["HelmRelease"], "selector": {"matchLabels": {"team": "a"}}}}),
        json!({"rules": [{"case": "git-auth", "mode": "Auto"}, {"case": "git-auth", "mode": "Observe"}]}),
        json!({"rules": [{"case": "git-auth", "mode": "Auto", "actions": ["Rollback"]}]}),
        json!({"rules": [{"case": "stale-lock", "mode": "Auto", "actions": ["Unlock", "DeletePendingRelease"]}]}),
        json!({"rules": [{"case": "git-auth", "mode": "Auto", "withSource": true}]}),
        json!({"limits": {"cooldown": "five minutes"}}),
        json!({"limits": {"maxAttempts": 0}}),
        json!({"limits": {"maxAttempts": 21}}),
        json!({"limits": {"maxAttempts": "3"}}),
        json!({"priority": 1001}),
        json!({"rules": [{"case": "gitauth", "mode": "Auto"}]}),
        json!({"rules": [{"case": "git-auth", "mode": "Sometimes"}]}),
        json!({"rules": [{"case": "git-auth"}]}),
        json!({"rules": [{"case": "git-auth", "mode": "Auto", "action": ["Retry"]}]}),
        json!({"limit": {"maxAttempts": 2}}),
        json!({"targets": {"names": ["a"], "kind": ["HelmRelease"]}}),
        json!({"targets": {"names": vec!["n"; 257]}}),
        json!({"targets": {"kinds": ["Deployment"]}}),
        json!({"staleLock": {"threshold": "10x"}}),
        json!({"escalation": {"after": "45m"}, "circuitBreaker": {"maxFailingTargets": 0}}),
        json!({"circuitBreaker": {"maxFailingTargets": 5_000_000_000u64}}),
    ];
    let mut files: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            serde_yaml_ng::to_string(&policy(&ns, &format!("p{i}"), spec.clone())).unwrap()
        })
        .collect();
    // What people write by hand, read as kubectl reads YAML.
    let head = |name: &str| {
        format!(
            "apiVersion: fluxmedic.io/v1alpha1\nkind: RemediationPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\n"
        )
    };
    for (name, body) in [
        (
            "off-unquoted",
            "spec:\n  rules:\n  - case: git-auth\n    mode: Off\n",
        ),
        (
            "off-quoted",
            "spec:\n  rules:\n  - case: git-auth\n    mode: \"Off\"\n",
        ),
        (
            "with-source-yes",
            "spec:\n  rules:\n  - {case: failed-release, mode: Auto, withSource: yes}\n",
        ),
        ("priority-float", "spec:\n  priority: 5.0\n"),
        (
            "priority-null",
            "spec:\n  priority: null\n  rules:\n  - {case: git-auth, mode: Auto, withSource: null}\n",
        ),
        ("status-ignored", "spec: {}\nstatus:\n  conditions: 5\n"),
    ] {
        files.push(head(name) + body);
    }
    files.push(format!("apiVersion: fluxmedic.io/v1alpha1\nkind: RemediationPolicy\nmetadata:\n  name: meta\n  namespace: {ns}\n  colour: blue\nspec: {{}}\n"));
    files.push(format!("apiVersion: fluxmedic.io/v1alpha1\nkind: RemediationPolicy\nmetadata:\n  namespace: {ns}\nspec: {{}}\n"));
    files.push(format!("apiVersion: fluxmedic.io/v1alpha1\nkind: RemediationPolicy\nmetadata:\n  name: Not_A_Name\n  namespace: {ns}\nspec: {{}}\n"));
    let dir = tempfile::tempdir().unwrap();
    let (mut refused, mut accepted) = (0, 0);
    for (i, text) in files.iter().enumerate() {
        let file = dir.path().join(format!("p{i}.yaml"));
        std::fs::write(&file, text).unwrap();
        let file = file.to_str().unwrap();
        let server = env
            .kubectl()
            .args([
                "create",
                "--dry-run=server",
                "--validate=strict",
                "-f",
                file,
            ])
            .output()
            .unwrap();
        let (code, _, err) = fluxmedic(env, &["diagnose", "-f", "/dev/null", "--policy", file]);
        let server_err = String::from_utf8_lossy(&server.stderr);
        assert_eq!(
            code == 0,
            server.status.success(),
            "policy {i}:\n{text}\nAPI server says {server_err:?}, fluxmedic says {err:?}"
        );
        match code {
            0 => accepted += 1,
            _ => {
                assert!(err.contains("the API server would refuse"), "{err}");
                refused += 1;
            }
        }
    }
    assert!(
        accepted >= 6 && refused >= 20,
        "{accepted} accepted, {refused} refused"
    );
}
