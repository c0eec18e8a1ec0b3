//! Proposing the fix in Git, pure: which commits broke a Kustomization, and the revert
//! fluxmedic may propose for them as a pull request. A forge is read and written elsewhere;
//! this module decides from what the forge answered, so each rule is tested without one.
//!
//! The rules (docs/git-fix.md):
//! - a culprit is a commit after the revision that last applied, up to the failing one, that
//!   changes a file under the Kustomization's path;
//! - never a merge commit (its revert needs a person to choose a mainline), never a commit of
//!   fluxmedic's own, never a commit that also changes files outside the path;
//! - the failing commit is still in the branch, and no file the revert restores changed after
//!   it (otherwise the revert would undo someone else's work);
//! - the reverted tree passes the check that failed.
//!
//! Every input is the tenant's (commit messages, file contents, paths) and bounded here.

use std::collections::{BTreeMap, BTreeSet};

#[cfg(test)]
mod tests;
mod text;

pub use text::{Incident, Proposal, branch_of, propose_text};

/// Most commits between the revision that applied and the failing one that a revert covers.
pub const MAX_COMMITS: usize = 20;
/// Most files one revert restores.
pub const MAX_FILES: usize = 50;
/// Most manifests under a path the check reads.
pub const MAX_TREE_FILES: usize = 1000;
/// Largest file read.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Most bytes read under a path, in total.
pub const MAX_TREE_BYTES: usize = 8 << 20;
/// The trailer naming the incident in every commit fluxmedic writes.
pub const TRAILER: &str = "Fluxmedic-Incident";

/// A commit as the forge lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub sha: String,
    pub parents: Vec<String>,
    pub message: String,
    /// Paths of the files it changes, from the repository's root.
    pub files: Vec<String>,
}

/// The content of files at one revision, from the repository's root; `None`: no such file.
pub type Files = BTreeMap<String, Option<Vec<u8>>>;

/// One file the revert writes: its content, or `None` to delete it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub content: Option<Vec<u8>>,
    /// Git's id of the blob it replaces at the branch's head (`None`: the file is new): a forge
    /// refuses the write if the file changed since it was read.
    pub replaces: Option<String>,
}

/// Git's id of a blob with this content (SHA-1, or SHA-256 in a repository of that format).
pub fn blob_id(content: &[u8], sha256: bool) -> String {
    use ring::digest;
    let alg = if sha256 {
        &digest::SHA256
    } else {
        &digest::SHA1_FOR_LEGACY_USE_ONLY
    };
    let mut ctx = digest::Context::new(alg);
    ctx.update(format!("blob {}\0", content.len()).as_bytes());
    ctx.update(content);
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why no revert is proposed; the record says it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoProposal {
    #[error("the Kustomization has no revision that applied to go back to")]
    NothingApplied,
    #[error("revision `{0}` names no Git commit")]
    NotACommit(String),
    #[error("path `{0}` leaves the repository")]
    BadPath(String),
    #[error("the failing commit {0} is no longer in the branch (force-pushed away)")]
    Rewritten(String),
    #[error("the revision that applied is not an ancestor of the failing one")]
    NotAncestor,
    #[error("the forge names a file `{0}` no repository can hold")]
    BadFile(String),
    #[error("no commit since {applied} changes `{path}`")]
    NoCulprit { applied: String, path: String },
    #[error("more than {MAX_COMMITS} commits changed `{0}` since the revision that applied")]
    TooManyCommits(String),
    #[error("{0} is a merge commit: reverting it needs a person to choose a mainline")]
    Merge(String),
    #[error("{0} is fluxmedic's own revert; it is not reverted again")]
    Own(String),
    #[error("{sha} also changes `{file}`, outside `{path}`: its revert is left to a person")]
    Outside {
        sha: String,
        file: String,
        path: String,
    },
    #[error("`{0}` changed after the failing commit: the revert would conflict")]
    Conflict(String),
    #[error("`{0}` was not read from the forge")]
    Unread(String),
    #[error("the revert is too large to propose: {0}")]
    TooLarge(String),
    #[error("the reverted tree still fails the check: {0}")]
    StillFails(String),
    #[error("incident name `{0}` cannot name a branch")]
    BadName(String),
}

/// The commit a Flux revision names: `main@sha1:<40 hex>`, `sha1:<40 hex>`,
/// `v1.0@sha256:<64 hex>` (the format of Flux 2.x). Nothing else is taken for a commit.
pub fn commit_of(revision: &str) -> Option<&str> {
    let digest = revision.rsplit_once('@').map_or(revision, |(_, d)| d);
    let (algo, hex) = digest.split_once(':')?;
    let len = match algo {
        "sha1" => 40,
        "sha256" => 64,
        _ => return None,
    };
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    (hex.len() == len && hex.bytes().all(lower_hex)).then_some(hex)
}

/// A Kustomization's `spec.path` as a path from the repository's root, as kustomize-controller
/// reads it (`./apps/web`, `apps/web/`, `/apps/web` are one path; `""` and `./` the root).
/// A path that climbs out of the repository is refused.
pub fn normalize_path(path: &str) -> Result<String, NoProposal> {
    let mut parts = vec![];
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(NoProposal::BadPath(path.into())),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// A path a forge may name for a file fluxmedic writes: relative, no empty, `.`, `..` or `.git`
/// segment, no control character (a forge that normalises `a/../b` would write elsewhere).
pub fn plain_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 4096
        && !p.chars().any(char::is_control)
        && p.split('/')
            .all(|seg| !matches!(seg, "" | "." | "..") && !seg.eq_ignore_ascii_case(".git"))
}

/// `file` lies under `dir` (both from the repository's root, `dir` normalised).
pub fn under(dir: &str, file: &str) -> bool {
    dir.is_empty()
        || file
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// What the forge answered about the branch Flux follows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The revision that last applied and the failing one (Flux's `main@sha1:…` form).
    pub applied: String,
    pub failing: String,
    /// Commits after `applied` up to `failing`, newest first (at most one past
    /// [`MAX_COMMITS`] need be listed).
    pub between: Vec<Commit>,
    /// The failing commit is still an ancestor of the branch's head.
    pub failing_in_branch: bool,
    /// The revision that applied is an ancestor of the failing one (the same history).
    pub applied_before_failing: bool,
}

/// The commits to revert: those in the history that change a file under `dir`. Refused as
/// [`NoProposal`] says.
pub fn culprits<'h>(dir: &str, h: &'h History) -> Result<Vec<&'h Commit>, NoProposal> {
    commit_of(&h.applied).ok_or_else(|| NoProposal::NotACommit(h.applied.clone()))?;
    let failing = commit_of(&h.failing).ok_or_else(|| NoProposal::NotACommit(h.failing.clone()))?;
    if !h.failing_in_branch {
        return Err(NoProposal::Rewritten(failing.into()));
    }
    if !h.applied_before_failing {
        return Err(NoProposal::NotAncestor);
    }
    let found: Vec<&Commit> = h
        .between
        .iter()
        .filter(|c| c.files.iter().any(|f| under(dir, f)))
        .collect();
    if found.is_empty() {
        return Err(NoProposal::NoCulprit {
            applied: h.applied.clone(),
            path: dir.into(),
        });
    }
    if found.len() > MAX_COMMITS {
        return Err(NoProposal::TooManyCommits(dir.into()));
    }
    for c in &found {
        refuse_commit(dir, c)?;
    }
    Ok(found)
}

fn refuse_commit(dir: &str, c: &Commit) -> Result<(), NoProposal> {
    if let Some(f) = c.files.iter().find(|f| !plain_path(f)) {
        return Err(NoProposal::BadFile(f.chars().take(300).collect()));
    }
    if c.parents.len() != 1 {
        return Err(NoProposal::Merge(c.sha.clone()));
    }
    if c.message.lines().any(|l| l.starts_with(TRAILER)) {
        return Err(NoProposal::Own(c.sha.clone()));
    }
    if let Some(f) = c.files.iter().find(|f| !under(dir, f)) {
        return Err(NoProposal::Outside {
            sha: c.sha.clone(),
            file: f.clone(),
            path: dir.into(),
        });
    }
    Ok(())
}

/// The files the culprits change, sorted: what the forge must read at the revision that
/// applied, the failing one and the branch's head.
pub fn touched(culprits: &[&Commit]) -> Result<Vec<String>, NoProposal> {
    let files: BTreeSet<&String> = culprits.iter().flat_map(|c| &c.files).collect();
    if files.len() > MAX_FILES {
        return Err(NoProposal::TooLarge(format!("more than {MAX_FILES} files")));
    }
    Ok(files.into_iter().cloned().collect())
}

/// Each touched file back to its content at the revision that applied, provided nobody changed
/// it after the failing commit; files the culprits left as they were are not written.
/// `sha256`: the repository's object format is SHA-256 (its commit ids are 64 hex digits).
pub fn revert(
    files: &[String],
    applied: &Files,
    failing: &Files,
    head: &Files,
    sha256: bool,
) -> Result<Vec<Change>, NoProposal> {
    let read = |at: &Files, f: &String| at.get(f).cloned().ok_or(NoProposal::Unread(f.clone()));
    let mut out = vec![];
    for f in files {
        let (before, broken, now) = (read(applied, f)?, read(failing, f)?, read(head, f)?);
        if now != broken {
            return Err(NoProposal::Conflict(f.clone()));
        }
        if before != broken {
            out.push(Change {
                path: f.clone(),
                content: before,
                replaces: now.as_deref().map(|b| blob_id(b, sha256)),
            });
        }
    }
    if out.is_empty() {
        return Err(NoProposal::StillFails(
            "the culprits' changes cancel out; nothing to revert".into(),
        ));
    }
    Ok(out)
}

/// The manifests under the path once `changes` are applied to the head's `tree`.
pub fn reverted_tree(
    mut tree: BTreeMap<String, Vec<u8>>,
    changes: &[Change],
) -> BTreeMap<String, Vec<u8>> {
    for c in changes {
        match &c.content {
            Some(body) => tree.insert(c.path.clone(), body.clone()),
            None => tree.remove(&c.path),
        };
    }
    tree
}

/// The check kustomize-controller failed, for invalid YAML: every YAML file under the path
/// parses, and each document in it is a mapping naming `apiVersion` and `kind` (kustomize's own
/// `kustomization.yaml` may omit them). Bounded by [`MAX_TREE_FILES`] and [`MAX_TREE_BYTES`].
pub fn check_manifests(tree: &BTreeMap<String, Vec<u8>>) -> Result<(), NoProposal> {
    if tree.len() > MAX_TREE_FILES {
        return Err(NoProposal::TooLarge(format!(
            "more than {MAX_TREE_FILES} files to check"
        )));
    }
    let total: usize = tree.values().map(Vec::len).sum();
    if total > MAX_TREE_BYTES || tree.values().any(|b| b.len() > MAX_FILE_BYTES) {
        return Err(NoProposal::TooLarge("manifests too large to check".into()));
    }
    for (path, body) in tree.iter().filter(|(p, _)| is_yaml(p)) {
        check_file(path, body).map_err(|e| NoProposal::StillFails(format!("{path}: {e}")))?;
    }
    Ok(())
}

/// A file kustomize reads as YAML.
pub fn is_yaml(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// A YAML alias (`*name`) in the text: a node can only start after a line's start, blank or
/// flow indicator, so this finds every alias (and, in quoted text, a few that are not).
fn has_alias(body: &[u8]) -> bool {
    body.windows(2).enumerate().any(|(i, w)| {
        w[0] == b'*'
            && !w[1].is_ascii_whitespace()
            && (i == 0 || b" \t\r\n[{,-:?".contains(&body[i - 1]))
    }) || body.first() == Some(&b'*')
}

fn check_file(path: &str, body: &[u8]) -> Result<(), String> {
    use serde::Deserialize;
    // Expanding aliases costs memory quadratic in the text (a 30 KB file can take gigabytes),
    // whatever the parser's own limit; Kubernetes manifests do not need them.
    if has_alias(body) {
        return Err("uses YAML aliases, which fluxmedic does not expand to check".into());
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    let kustomize_own = matches!(name, "kustomization.yaml" | "kustomization.yml");
    for (i, doc) in serde_yaml_ng::Deserializer::from_slice(body).enumerate() {
        let v = serde_yaml_ng::Value::deserialize(doc).map_err(|e| e.to_string())?;
        match &v {
            serde_yaml_ng::Value::Null => {}
            serde_yaml_ng::Value::Mapping(m) => {
                let named = |k: &str| {
                    m.get(k)
                        .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()))
                };
                let typed = named("apiVersion") && named("kind");
                if !(kustomize_own || typed) {
                    return Err(format!("document {} names no apiVersion and kind", i + 1));
                }
            }
            _ => return Err(format!("document {} is not a mapping", i + 1)),
        }
    }
    Ok(())
}
