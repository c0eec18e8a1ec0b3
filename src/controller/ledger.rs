//! Where fluxmedic keeps its [`Ledger`]: ConfigMaps `<prefix>-<k>` (k < [`BUCKETS`]) in the
//! operator's namespace, which only fluxmedic writes (tenants have no rights there, and the
//! chart's admission policy holds fluxmedic's own identity to these names). Each holds, per
//! record uid of its bucket, the sequence number fluxmedic last sealed there (`<n>`, `<n>c`
//! once it closed the incident), and under `persisted` a sequence below which every record
//! fluxmedic sealed is in the ledger. Written once per pass, only the buckets that changed,
//! then (only when all of them were written) `persisted` raised in bucket 0: a pass cut short
//! between two buckets (the Lease lost, an API error) never claims a record it did not write
//! down, which the next leader would otherwise take for a copy and freeze. Read when the
//! process starts and whenever it becomes the leader (another replica wrote it meanwhile).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tracing::{info, warn};

use crate::{
    api::FIELD_MANAGER,
    incident::{Ledger, LedgerEntry, stable_hash},
};

/// ConfigMaps the ledger is spread over: a pass rewrites only those whose records changed,
/// and each stays far below the 1 MiB object limit (about 25,000 records each).
pub const BUCKETS: usize = 16;
const PERSISTED: &str = "persisted";
/// How long a record must be missing from the index before its ledger entry is forgotten.
pub const FORGET_AFTER: i64 = 600;

/// The ledger in memory, the sequence counter, and what is not persisted yet.
#[derive(Debug, Default)]
pub struct LedgerStore {
    pub ledger: Ledger,
    /// The last sequence number handed out.
    counter: u64,
    dirty: BTreeSet<usize>,
    /// Each bucket's ConfigMap as last read or written (its resourceVersion): `None` = absent.
    stored: BTreeMap<usize, Option<String>>,
    /// Records in the ledger the index does not show, since when (seconds).
    missing: HashMap<String, i64>,
}

fn bucket(uid: &str) -> usize {
    (stable_hash(uid) % BUCKETS as u64) as usize
}

impl LedgerStore {
    /// A sequence number never handed out before (by this process or one before it).
    pub fn next_sequence(&mut self) -> u64 {
        self.counter = self.counter.saturating_add(1);
        self.counter
    }

    /// Raise the counter past sequence numbers seen on records fluxmedic sealed (written
    /// after the ledger was last persisted, e.g. just before a crash).
    pub fn seen(&mut self, sequence: u64) {
        self.counter = self.counter.max(sequence);
    }

    /// fluxmedic sealed `sequence` on record `uid` (closing the incident if `closed`).
    pub fn note(&mut self, uid: &str, sequence: u64, closed: bool) {
        if self.ledger.note(uid, sequence, closed) {
            self.dirty.insert(bucket(uid));
        }
    }

    /// See [`Ledger::confirm`].
    pub fn confirm(&mut self, record: &crate::incident::Record) {
        if self.ledger.confirm(record) {
            self.dirty.insert(bucket(&record.uid));
        }
    }

    /// Forget records that no longer exist (deleted, by fluxmedic or anyone) once they have
    /// been missing from the index for [`FORGET_AFTER`] seconds: the index can miss a record
    /// for a moment (a watch relisting, an event not yet delivered), and a record whose entry
    /// was forgotten reads as nobody's. A copy re-created later is nobody's either way (its uid
    /// is new).
    pub fn keep_only(&mut self, present: &HashSet<&str>, now: i64) {
        let records = &self.ledger.records;
        self.missing
            .retain(|u, _| records.contains_key(u) && !present.contains(u.as_str()));
        let mut gone = vec![];
        for uid in self.ledger.records.keys() {
            if present.contains(uid.as_str()) {
                continue;
            }
            let since = *self.missing.entry(uid.clone()).or_insert(now);
            if now.saturating_sub(since) >= FORGET_AFTER {
                gone.push(uid.clone());
            }
        }
        for uid in gone {
            self.ledger.records.remove(&uid);
            self.missing.remove(&uid);
            self.dirty.insert(bucket(&uid));
        }
    }

    /// Read every bucket (a missing one is empty).
    pub async fn load(client: &Client, ns: &str, prefix: &str) -> kube::Result<LedgerStore> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let mut store = LedgerStore::default();
        for k in 0..BUCKETS {
            let cm = api.get_opt(&format!("{prefix}-{k}")).await?;
            store.stored.insert(
                k,
                cm.as_ref()
                    .and_then(|c| c.metadata.resource_version.clone()),
            );
            for (key, value) in cm.and_then(|c| c.data).unwrap_or_default() {
                if key == PERSISTED {
                    let p = value.parse().unwrap_or(0);
                    store.ledger.persisted = store.ledger.persisted.max(p);
                    continue;
                }
                let closed = value.ends_with('c');
                if let Ok(sequence) = value.trim_end_matches('c').parse::<u64>() {
                    store
                        .ledger
                        .records
                        .insert(key, LedgerEntry { sequence, closed });
                }
            }
        }
        store.counter = store.ledger.persisted;
        info!(
            records = store.ledger.records.len(),
            persisted = store.ledger.persisted,
            "ledger read"
        );
        Ok(store)
    }

    /// The contents of bucket `k`, with `persisted` as given.
    fn bucket_data(&self, k: usize, persisted: u64) -> BTreeMap<String, String> {
        let mut data: BTreeMap<String, String> = self
            .ledger
            .records
            .iter()
            .filter(|(uid, _)| bucket(uid) == k)
            .map(|(uid, e)| {
                let v = format!("{}{}", e.sequence, if e.closed { "c" } else { "" });
                (uid.clone(), v)
            })
            .collect();
        data.insert(PERSISTED.into(), persisted.to_string());
        data
    }

    /// Write the buckets that changed, keeping the `persisted` already on record; then, only
    /// if every one was written, raise `persisted` to the counter (bucket 0). A bucket that
    /// fails stays dirty for the next pass.
    pub async fn flush(
        &mut self,
        client: &Client,
        ns: &str,
        prefix: &str,
        gate: &crate::limiter::WriteLimiter,
    ) {
        if self.dirty.is_empty() {
            return;
        }
        let raised = self.counter;
        let old = self.ledger.persisted;
        let mut all = true;
        for k in std::mem::take(&mut self.dirty) {
            if !self.write_bucket(client, ns, prefix, gate, k, old).await {
                self.dirty.insert(k);
                all = false;
            }
        }
        if all && raised > old && self.write_bucket(client, ns, prefix, gate, 0, raised).await {
            self.ledger.persisted = raised;
        }
    }

    /// Write bucket `k` with `persisted`; whether it was written.
    async fn write_bucket(
        &mut self,
        client: &Client,
        ns: &str,
        prefix: &str,
        gate: &crate::limiter::WriteLimiter,
        k: usize,
        persisted: u64,
    ) -> bool {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let name = format!("{prefix}-{k}");
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.into()),
                resource_version: self.stored.get(&k).cloned().flatten(),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "fluxmedic".to_string(),
                )])),
                ..Default::default()
            },
            data: Some(self.bucket_data(k, persisted)),
            ..Default::default()
        };
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        // Only the leader writes it, and within the write budget.
        if gate.acquire().await.is_err() {
            return false;
        }
        let res = match self.stored.get(&k).cloned().flatten() {
            Some(_) => api.replace(&name, &pp, &cm).await,
            None => api.create(&pp, &cm).await,
        };
        match res {
            Ok(written) => {
                self.stored.insert(k, written.metadata.resource_version);
                true
            }
            Err(e) => {
                warn!(configmap = %name, error = %e, "cannot write the ledger; kept for the next pass");
                // A conflict: another replica wrote it (a leadership change): read it back.
                if let kube::Error::Api(s) = &e
                    && s.code == 409
                {
                    self.stored.insert(
                        k,
                        api.get_opt(&name)
                            .await
                            .ok()
                            .flatten()
                            .and_then(|c| c.metadata.resource_version),
                    );
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_only_grow_and_a_record_keeps_its_latest() {
        let mut s = LedgerStore::default();
        s.seen(41);
        assert_eq!(s.next_sequence(), 42, "past what records already carry");
        s.note("u1", 42, false);
        s.note("u1", 40, true);
        assert_eq!(
            s.ledger.records["u1"],
            LedgerEntry {
                sequence: 42,
                closed: false
            },
            "never back to an older word"
        );
        s.note("u1", 43, true);
        assert!(s.ledger.records["u1"].closed);
        s.dirty.clear();
        s.note("u1", 43, true);
        assert!(
            s.dirty.is_empty(),
            "the same word again (each pass confirms what it read) writes nothing out"
        );
        s.note("", 50, false);
        assert_eq!(s.ledger.records.len(), 1, "no uid, nothing to bind");
        s.dirty.clear();
        s.keep_only(&HashSet::new(), 1000);
        s.keep_only(&HashSet::new(), 1000 + FORGET_AFTER - 1);
        assert_eq!(s.ledger.records.len(), 1, "missing for a moment: kept");
        assert!(s.dirty.is_empty());
        s.keep_only(&HashSet::from(["u1"]), 1000 + FORGET_AFTER);
        s.keep_only(&HashSet::new(), 1000 + FORGET_AFTER + 1);
        assert_eq!(
            s.ledger.records.len(),
            1,
            "seen again: its clock starts over"
        );
        s.keep_only(&HashSet::new(), 1000 + 2 * FORGET_AFTER + 1);
        assert!(s.ledger.records.is_empty(), "gone for good: forgotten");
        assert!(!s.dirty.is_empty(), "a forgotten record is written out");
    }
}
