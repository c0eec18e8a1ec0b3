//! The operator's peak memory with hostile Helm storage present (`task bench:memory`): the
//! release-built operator unlocks a stale release in three namespaces — an ordinary one, one
//! whose pending release is a compression bomb (about 64 KiB inflating to 64 MiB) and one whose
//! pending release holds 12 MiB of tiny JSON values — and its peak resident memory (VmHWM) is
//! read from /proc after each, against a run with the ordinary one alone.
//!
//! Needs `bash hack/testenv/up.sh` first. Prints a Markdown table.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

/// What the pending release of `ns` holds.
enum Pending {
    Ordinary,
    Bomb,
    Dense,
}

async fn stale_lock(env: &Env, client: &kube::Client, ns: &str, pending: Pending) {
    chart_repo(env, client, ns).await;
    helm_release(client, ns, "web", "0.1.0", json!({"suffix": "one"}), "30s").await;
    wait_ready(client, ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    suspend_and_settle(client, ns, "web").await;
    let head = format!(
        "{{\"name\":\"web\",\"version\":2,\"namespace\":\"{ns}\",\"info\":{{\"status\":\"pending-upgrade\"}},\"manifest\":"
    );
    let payload = match pending {
        Pending::Ordinary => {
            fluxmedic::helm::fixture_payload(&format!("{head}\""), b"-", 2048, "\"}")
        }
        Pending::Bomb => {
            fluxmedic::helm::fixture_payload(&format!("{head}\""), b"0", 64 << 20, "\"}")
        }
        Pending::Dense => {
            fluxmedic::helm::fixture_payload(&format!("{head}["), b"0,", 12 << 20, "0]}")
        }
    };
    forge_pending_payload(client, ns, "web", 2, 3600, payload).await;
    apply(
        client,
        policy(
            ns,
            "auto",
            auto(json!([{"case": "stale-lock", "mode": "Auto"}])),
        ),
    )
    .await;
}

/// Run the operator over `namespaces` until every unlock step has an outcome; its peak RSS.
async fn peak(env: &Env, client: &kube::Client, op_ns: &str, namespaces: &[&str]) -> u64 {
    let mut watch: Vec<&str> = namespaces.to_vec();
    watch.push(op_ns);
    let op = Operator::launch(env, op_ns, &watch, &[], &[], env.kubeconfig());
    for ns in namespaces {
        wait_remediation(
            client,
            ns,
            "HelmRelease/web",
            "the unlock's outcome",
            MIN,
            |r| has_step(r, "unlock", "Succeeded") || has_step(r, "unlock", "Failed"),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    op.peak_rss_kib().expect("the operator's /proc status")
}

#[tokio::main]
async fn main() {
    let env = env();
    let client = env.client().await;
    install_crds(&client).await;
    let mut rows = vec![];
    let op = namespace(&client, "mem-op").await;
    let ordinary = namespace(&client, "mem-plain").await;
    stale_lock(env, &client, &ordinary, Pending::Ordinary).await;
    let base = peak(env, &client, &op, &[&ordinary]).await;
    rows.push(("an ordinary stale lock", base));

    let op = namespace(&client, "mem-op").await;
    let ordinary = namespace(&client, "mem-plain").await;
    let bomb = namespace(&client, "mem-bomb").await;
    let dense = namespace(&client, "mem-dense").await;
    stale_lock(env, &client, &ordinary, Pending::Ordinary).await;
    stale_lock(env, &client, &bomb, Pending::Bomb).await;
    stale_lock(env, &client, &dense, Pending::Dense).await;
    let hostile = peak(env, &client, &op, &[&ordinary, &bomb, &dense]).await;
    rows.push((
        "the same, beside a 64 MiB compression bomb (refused) and 12 MiB of tiny JSON values (unlocked)",
        hostile,
    ));
    println!("| Helm storage present | fluxmedic peak RSS (VmHWM) |");
    println!("| --- | --- |");
    for (what, kib) in rows {
        println!("| {what} | {:.1} MiB |", kib as f64 / 1024.0);
    }
}
