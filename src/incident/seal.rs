//! Record seals: HMAC-SHA256 over what fluxmedic wrote, with a key only the operator holds.
//!
//! A Remediation is evidence anyone with edit rights on it can change; its steps, counters
//! and intents must never become commands. Every record fluxmedic creates carries a seal
//! over its identity and first intent (annotation [`SEAL_ANNOTATION`]), every status it
//! writes a seal over the whole status (`status.seal`), and every suspension it makes a seal
//! over the HelmRelease it suspended ([`HOLD_ANNOTATION`]). A record or suspension whose seal
//! does not verify was not written by fluxmedic as it stands: it is never replayed,
//! never counted as fluxmedic's, and never resumed.
//!
//! The key is 32 random bytes in the Secret [`KEY_SECRET`] of the operator's namespace,
//! created on first start. Whoever can read that Secret can forge records; that is the
//! operator's namespace, where only cluster administrators have rights.

use ring::hmac;
use serde::Serialize;

use crate::{api::RemediationStatus, diagnose::Case, flux::ObjectKey};

pub use crate::api::{HOLD_ANNOTATION, SEAL_ANNOTATION};
/// The Secret (in the operator's namespace) holding the seal key, under data key `key`.
pub const KEY_SECRET: &str = "fluxmedic-seal-key";

/// Seals and verifies records. Cheap to clone (the key is shared).
#[derive(Clone)]
pub struct Sealer {
    key: hmac::Key,
    /// The shard this instance serves (`--watch-label-selector`), sealed into every record it
    /// creates: another shard's instance reads such a record as not its own.
    shard: Option<String>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

/// What a record seal covers besides the sealed payload: where the record is and what it is
/// about, so a sealed status cannot be moved to another record or target.
#[derive(Serialize)]
struct Identity<'a> {
    namespace: &'a str,
    name: &'a str,
    target: &'a ObjectKey,
    case: Case,
}

#[derive(Serialize)]
struct Sealed<'a, T: Serialize> {
    purpose: &'static str,
    identity: Identity<'a>,
    payload: &'a T,
}

/// A record's identity: its namespace and name, and the target and case it is about.
#[derive(Clone, Copy, Debug)]
pub struct RecordId<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub target: &'a ObjectKey,
    pub case: Case,
}

impl Sealer {
    pub fn from_key(key: &[u8]) -> Self {
        Sealer {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            shard: None,
        }
    }

    /// The same key, sealing records for `shard` (see [`shard_id`]).
    pub fn in_shard(mut self, shard: Option<String>) -> Self {
        self.shard = shard;
        self
    }

    /// A new random key (32 bytes), for the key Secret.
    pub fn generate_key() -> Result<[u8; 32], String> {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| "the system random number generator failed".to_string())?;
        Ok(key)
    }

    fn tag<T: Serialize>(&self, purpose: &'static str, id: RecordId<'_>, payload: &T) -> String {
        let msg = serde_json::to_vec(&Sealed {
            purpose,
            identity: Identity {
                namespace: id.namespace,
                name: id.name,
                target: id.target,
                case: id.case,
            },
            payload,
        })
        .unwrap_or_default();
        let tag = hmac::sign(&self.key, &msg);
        hex(&tag.as_ref()[..20])
    }

    fn check<T: Serialize>(
        &self,
        purpose: &'static str,
        id: RecordId<'_>,
        payload: &T,
        seal: Option<&str>,
    ) -> bool {
        let Some(seal) = seal else { return false };
        // Constant-time comparison of the tags.
        let expected = self.tag(purpose, id, payload);
        ring_eq(expected.as_bytes(), seal.as_bytes())
    }

    /// The seal of a new record: its identity and the intent annotation it is created with
    /// (empty when none).
    pub fn seal_creation(&self, id: RecordId<'_>, intent: &str) -> String {
        self.tag("creation", id, &(intent, &self.shard))
    }

    pub fn verify_creation(&self, id: RecordId<'_>, intent: &str, seal: Option<&str>) -> bool {
        self.check("creation", id, &(intent, &self.shard), seal)
    }

    /// The seal of a status (computed with its `seal` field empty), bound to the record
    /// object's `uid`: a status saved from one record is worth nothing in a re-created one.
    /// The status carries its sequence number ([`RemediationStatus::sequence`]), so an earlier
    /// status written back is told from the latest ([`super::Ledger`]).
    pub fn seal_status(&self, id: RecordId<'_>, uid: &str, status: &RemediationStatus) -> String {
        let mut s = status.clone();
        s.seal = None;
        self.tag("status", id, &(uid, &s))
    }

    pub fn verify_status(&self, id: RecordId<'_>, uid: &str, status: &RemediationStatus) -> bool {
        let mut s = status.clone();
        let seal = s.seal.take();
        self.check("status", id, &(uid, &s), seal.as_deref())
    }

    /// The value of [`HOLD_ANNOTATION`] for a suspension of `target` (with uid `uid`) by
    /// record `owner` that leaves it at `generation`.
    pub fn seal_hold(&self, target: &ObjectKey, uid: &str, owner: &str, generation: i64) -> String {
        let id = RecordId {
            namespace: &target.namespace,
            name: owner,
            target,
            case: Case::FailedRelease,
        };
        format!("{generation}.{}", self.tag("hold", id, &(uid, generation)))
    }

    /// Whether `value` is a hold fluxmedic sealed for `target` (uid `uid`) on behalf of
    /// `owner`, made at `generation` exactly (a later change of the spec means a person
    /// has touched the HelmRelease since, and the suspension is no longer fluxmedic's alone).
    pub fn verify_hold(
        &self,
        target: &ObjectKey,
        uid: &str,
        owner: &str,
        generation: i64,
        value: &str,
    ) -> bool {
        let Some((g, _)) = value.split_once('.') else {
            return false;
        };
        g.parse::<i64>().is_ok_and(|g| g == generation)
            && ring_eq(
                self.seal_hold(target, uid, owner, generation).as_bytes(),
                value.as_bytes(),
            )
    }
}

/// The shard an instance serves, from its `--watch-label-selector`: a short stable id (the
/// label value on its records, the suffix of its Lease), or `None` without a selector.
pub fn shard_id(selector: Option<&str>) -> Option<String> {
    let s = selector.map(str::trim).filter(|s| !s.is_empty())?;
    Some(format!("{:08x}", crate::incident::stable_hash(s) as u32))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is public (fixed by construction); compare the contents in constant time.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::Phase, flux::FluxKind};

    fn key() -> ObjectKey {
        ObjectKey::new(FluxKind::HelmRelease, "apps", "web")
    }

    #[test]
    fn a_status_seal_binds_the_status_to_its_record_and_target() {
        let s = Sealer::from_key(b"k1");
        let t = key();
        let id = RecordId {
            namespace: "apps",
            name: "hr-web-1",
            target: &t,
            case: Case::FailedRelease,
        };
        let mut st = RemediationStatus {
            attempts: 2,
            phase: Phase::Remediating,
            ..Default::default()
        };
        st.seal = Some(s.seal_status(id, "uid-1", &st));
        assert!(s.verify_status(id, "uid-1", &st));
        // Any edit breaks it: a counter, the record it sits in, the target, the case, the key,
        // and the record object itself (a re-created record has another uid).
        let mut edited = st.clone();
        edited.attempts = 0;
        assert!(!s.verify_status(id, "uid-1", &edited));
        assert!(!s.verify_status(id, "uid-2", &st));
        assert!(!s.verify_status(
            RecordId {
                name: "hr-web-2",
                ..id
            },
            "uid-1",
            &st
        ));
        let other = ObjectKey::new(FluxKind::HelmRelease, "prod", "web");
        assert!(!s.verify_status(
            RecordId {
                target: &other,
                ..id
            },
            "uid-1",
            &st
        ));
        assert!(!s.verify_status(
            RecordId {
                case: Case::StaleLock,
                ..id
            },
            "uid-1",
            &st
        ));
        assert!(!Sealer::from_key(b"k2").verify_status(id, "uid-1", &st));
        let mut unsealed = st.clone();
        unsealed.seal = None;
        assert!(!s.verify_status(id, "uid-1", &unsealed));
        unsealed.seal = Some(String::new());
        assert!(!s.verify_status(id, "uid-1", &unsealed));
    }

    #[test]
    fn a_record_of_another_shard_is_not_this_shards() {
        let key = b"k";
        let t = key_of();
        let id = RecordId {
            namespace: "apps",
            name: "hr-web-1",
            target: &t,
            case: Case::StaleLock,
        };
        let a = Sealer::from_key(key).in_shard(shard_id(Some("sharding.fluxcd.io/key=a")));
        let b = Sealer::from_key(key).in_shard(shard_id(Some("sharding.fluxcd.io/key=b")));
        let main = Sealer::from_key(key).in_shard(shard_id(Some(" ")));
        let seal = a.seal_creation(id, "");
        assert!(a.verify_creation(id, "", Some(&seal)));
        assert!(!b.verify_creation(id, "", Some(&seal)));
        assert!(!main.verify_creation(id, "", Some(&seal)));
        assert_eq!(shard_id(None), None);
        assert_eq!(shard_id(Some("")), None);
    }

    fn key_of() -> ObjectKey {
        key()
    }

    #[test]
    fn creation_and_hold_seals() {
        let s = Sealer::from_key(&Sealer::generate_key().unwrap());
        let t = key();
        let id = RecordId {
            namespace: "apps",
            name: "hr-web-1",
            target: &t,
            case: Case::StaleLock,
        };
        let seal = s.seal_creation(id, "{\"intent\":1}");
        assert!(s.verify_creation(id, "{\"intent\":1}", Some(&seal)));
        assert!(!s.verify_creation(id, "{\"intent\":2}", Some(&seal)));
        assert!(!s.verify_creation(id, "", Some(&seal)));
        assert!(!s.verify_creation(id, "{\"intent\":1}", None));

        let hold = s.seal_hold(&t, "uid-1", "hr-web-1", 7);
        assert!(hold.starts_with("7."));
        assert!(s.verify_hold(&t, "uid-1", "hr-web-1", 7, &hold));
        assert!(
            !s.verify_hold(&t, "uid-1", "hr-web-1", 8, &hold),
            "spec changed since"
        );
        assert!(
            !s.verify_hold(&t, "uid-2", "hr-web-1", 7, &hold),
            "recreated object"
        );
        assert!(
            !s.verify_hold(&t, "uid-1", "hr-web-2", 7, &hold),
            "other owner"
        );
        let elsewhere = ObjectKey::new(FluxKind::HelmRelease, "prod", "web");
        assert!(!s.verify_hold(&elsewhere, "uid-1", "hr-web-1", 7, &hold));
        assert!(!s.verify_hold(&t, "uid-1", "hr-web-1", 7, "7.00"));
        assert!(!s.verify_hold(&t, "uid-1", "hr-web-1", 7, "garbage"));
    }
}
