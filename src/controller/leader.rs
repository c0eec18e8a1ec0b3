//! Leader election with a write gate that closes within a second of losing the Lease.
//!
//! kube-lease-manager holds and renews the `fluxmedic-leader` Lease; it notices another
//! holder only at its next renewal (up to the Lease duration minus the grace). A watch of the
//! Lease itself closes the gate as soon as the API server shows another holder, and a local
//! deadline closes it when this replica's own renewals stop arriving (the API server is
//! unreachable) before the Lease could expire and be taken.

use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::{sync::watch, time::Instant};
use tracing::warn;

pub const LEASE_NAME: &str = "fluxmedic-leader";
pub const LEASE_SECONDS: u64 = 15;
const GRACE_SECONDS: u64 = 5;

/// What the Lease object says about this replica.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    holder: Option<String>,
    renew: Option<String>,
}

/// Whether this replica may act: the manager says it leads, the Lease object names it, and
/// its last renewal was seen less than a Lease duration (minus the grace) ago.
pub fn leads(manager: bool, me: &str, holder: Option<&str>, since_renewal: Duration) -> bool {
    manager
        && holder == Some(me)
        && since_renewal < Duration::from_secs(LEASE_SECONDS - GRACE_SECONDS / 2)
}

/// Start the election. The receiver is true while this replica may write; the future runs
/// it (it ends only if the election itself fails, which ends the process).
pub async fn elect(
    client: Client,
    namespace: &str,
    identity: &str,
    lease: &str,
) -> anyhow::Result<(
    watch::Receiver<bool>,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), lease)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(GRACE_SECONDS)
        .with_field_manager(crate::api::FIELD_MANAGER)
        .build()
        .await?;
    let (mut manager_rx, manager_task) = manager.watch().await;
    let (tx, rx) = watch::channel(false);
    let me = identity.to_string();
    let leases: Api<Lease> = Api::namespaced(client, namespace);
    let lease = lease.to_string();
    let run = async move {
        let cfg = watcher::Config::default().fields(&format!("metadata.name={lease}"));
        let mut stream = std::pin::pin!(
            watcher(leases, cfg)
                .backoff(super::index::watch_backoff())
                .applied_objects()
        );
        let mut seen = Seen {
            holder: None,
            renew: None,
        };
        let mut renewed_at = Instant::now();
        let mut manager_task = std::pin::pin!(manager_task);
        loop {
            tokio::select! {
                r = &mut manager_task => {
                    warn!(result = ?r.map(|r| r.err()), "leader election stopped");
                    tx.send_replace(false);
                    return;
                }
                _ = manager_rx.changed() => {}
                ev = stream.try_next() => match ev {
                    Ok(Some(lease)) => {
                        let spec = lease.spec.unwrap_or_default();
                        let now_seen = Seen {
                            holder: spec.holder_identity,
                            renew: spec.renew_time.map(|t| t.0.to_string()),
                        };
                        if now_seen.holder.as_deref() == Some(&me) && now_seen.renew != seen.renew {
                            renewed_at = Instant::now();
                        }
                        seen = now_seen;
                    }
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "Lease watch error (retrying)"),
                },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let may = leads(
                *manager_rx.borrow(),
                &me,
                seen.holder.as_deref(),
                renewed_at.elapsed(),
            );
            if *tx.borrow() != may {
                tx.send_replace(may);
            }
        }
    };
    Ok((rx, run))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_needs_the_manager_the_lease_and_a_fresh_renewal() {
        let fresh = Duration::from_secs(1);
        assert!(leads(true, "a", Some("a"), fresh));
        assert!(!leads(false, "a", Some("a"), fresh), "the manager lost it");
        assert!(
            !leads(true, "a", Some("b"), fresh),
            "the Lease names another holder"
        );
        assert!(!leads(true, "a", None, fresh));
        assert!(
            !leads(true, "a", Some("a"), Duration::from_secs(LEASE_SECONDS)),
            "renewals stopped arriving: another replica may take it at expiry"
        );
    }
}
