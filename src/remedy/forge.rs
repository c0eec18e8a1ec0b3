//! Proposing a revert on the repository's forge: the [`Forge`] port (implemented over a forge's
//! HTTP API, and in memory for the tests) and [`propose`], which gathers what the pure rules of
//! [`crate::gitfix`] need, one question at a time, and writes only what they decided.
//!
//! Writes: one branch of fluxmedic's own per incident, one commit on it, one pull request.
//! Never a push to another branch, never a force-push; a branch of that name fluxmedic did not
//! write as the proposal is left alone.

use std::{collections::BTreeMap, future::Future};

use crate::gitfix::{
    self, Change, Commit, Files, History, Incident, MAX_COMMITS, MAX_TREE_BYTES, MAX_TREE_FILES,
    NoProposal, TRAILER,
};

/// A pull request as the forge reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pull {
    pub number: u64,
    pub url: String,
    pub state: PullState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullState {
    Open,
    /// Closed without merging: a person said no; never reopened.
    Closed,
    Merged {
        commit: Option<String>,
    },
}

/// What a forge answered, by category: whether trying again can help.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    #[error("the forge refused the credentials (HTTP {0})")]
    Unauthorized(u16),
    #[error("{0} does not exist on the forge")]
    NotFound(String),
    #[error("{0} exists already")]
    Exists(String),
    #[error("the forge answered HTTP {status} to {what}")]
    Status { status: u16, what: String },
    #[error("the forge's answer to {0} is larger than fluxmedic reads")]
    TooLarge(String),
    #[error("cannot reach the forge: {0}")]
    Transport(String),
    #[error("the forge's answer to {what} does not parse: {why}")]
    Parse { what: String, why: String },
}

impl ForgeError {
    /// A later attempt can succeed (the forge or the network was down), unlike refused
    /// credentials or an answer fluxmedic cannot read.
    pub fn retryable(&self) -> bool {
        match self {
            ForgeError::Transport(_) => true,
            ForgeError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// One repository on one forge, with the tenant's credentials.
pub trait Forge {
    /// The commit the branch's head is.
    fn head(&self, branch: &str) -> impl Future<Output = Result<String, ForgeError>> + Send;
    /// `commit` is `head` or one of its ancestors.
    fn contains(
        &self,
        head: &str,
        commit: &str,
    ) -> impl Future<Output = Result<bool, ForgeError>> + Send;
    /// Commits after `from` up to `to` that change a file under `dir`, newest first, at most
    /// `limit` (each with its parents and changed files).
    fn between(
        &self,
        from: &str,
        to: &str,
        dir: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Commit>, ForgeError>> + Send;
    /// One commit (its parents, message and changed files).
    fn commit(&self, sha: &str) -> impl Future<Output = Result<Commit, ForgeError>> + Send;
    /// A file's content at a commit, `None` when there is no such file; at most
    /// [`gitfix::MAX_FILE_BYTES`] (larger: [`ForgeError::TooLarge`]).
    fn file(
        &self,
        commit: &str,
        path: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, ForgeError>> + Send;
    /// The paths of the files under `dir` at a commit, at most `limit`.
    fn tree(
        &self,
        commit: &str,
        dir: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, ForgeError>> + Send;
    /// The newest pull request from `branch` into `base`, in whatever state.
    fn find_pull(
        &self,
        base: &str,
        branch: &str,
    ) -> impl Future<Output = Result<Option<Pull>, ForgeError>> + Send;
    /// The head commit of `branch`, `None` when there is no such branch.
    fn branch(
        &self,
        branch: &str,
    ) -> impl Future<Output = Result<Option<String>, ForgeError>> + Send;
    /// Creates `branch` from the head of the branch `base` with one commit of `changes` (each
    /// refused if the file it replaces is no longer that blob); [`ForgeError::Exists`] when the
    /// branch exists. Returns the commit.
    fn create_branch(
        &self,
        base: &str,
        branch: &str,
        message: &str,
        changes: &[Change],
    ) -> impl Future<Output = Result<String, ForgeError>> + Send;
    fn open_pull(
        &self,
        base: &str,
        branch: &str,
        title: &str,
        body: &str,
    ) -> impl Future<Output = Result<Pull, ForgeError>> + Send;
    /// Comments on the pull request, then closes it.
    fn close_pull(
        &self,
        number: u64,
        comment: &str,
    ) -> impl Future<Output = Result<(), ForgeError>> + Send;
}

/// What one incident asks for: where Flux reads and what failed there.
#[derive(Clone, Debug)]
pub struct Ask<'a> {
    pub incident: Incident<'a>,
    /// The branch Flux follows (the GitRepository's `spec.ref.branch`).
    pub base: &'a str,
    /// The revision that last applied and the failing one, in Flux's form.
    pub applied: &'a str,
    pub failing: &'a str,
}

/// How a proposal ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proposed {
    /// Opened now, reverting these commits.
    Opened { pull: Pull, reverted: Vec<String> },
    /// Its pull request exists already (after a restart, or another pass): nothing written.
    Found(Pull),
    /// Nothing proposed, and why.
    Refused(NoProposal),
}

/// The step of [`propose`] that failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{step}: {source}")]
pub struct ProposeError {
    pub step: &'static str,
    #[source]
    pub source: ForgeError,
}

fn at(step: &'static str) -> impl FnOnce(ForgeError) -> ProposeError {
    move |source| ProposeError { step, source }
}

/// Proposes the revert for one incident, idempotently: the branch named from the incident is
/// the key; an existing pull request is returned as it is (a closed one is never reopened).
pub async fn propose<F: Forge + Sync>(f: &F, ask: &Ask<'_>) -> Result<Proposed, ProposeError> {
    let branch = match gitfix::branch_of(ask.incident.namespace, ask.incident.name) {
        Ok(b) => b,
        Err(why) => return Ok(Proposed::Refused(why)),
    };
    if let Some(pull) = f
        .find_pull(ask.base, &branch)
        .await
        .map_err(at("finding the pull request"))?
    {
        return Ok(Proposed::Found(pull));
    }
    let (p, head) = match plan(f, ask).await? {
        Ok(p) => p,
        Err(why) => return Ok(Proposed::Refused(why)),
    };
    write_branch(f, ask, &p, &head).await?;
    let pull = match f.open_pull(ask.base, &p.branch, &p.title, &p.body).await {
        Err(ForgeError::Exists(_)) => f
            .find_pull(ask.base, &p.branch)
            .await
            .map_err(at("finding the pull request"))?
            .ok_or_else(|| {
                at("opening the pull request")(ForgeError::NotFound(p.branch.clone()))
            })?,
        other => other.map_err(at("opening the pull request"))?,
    };
    Ok(Proposed::Opened {
        pull,
        reverted: p.reverted,
    })
}

/// The proposal and the head it was made on, from what the forge answers; `Err` inside: why
/// none is made.
async fn plan<F: Forge + Sync>(
    f: &F,
    ask: &Ask<'_>,
) -> Result<Result<(gitfix::Proposal, String), NoProposal>, ProposeError> {
    // The path as kustomize-controller reads it, whatever form the Kustomization wrote.
    let dir = match gitfix::normalize_path(ask.incident.path) {
        Ok(d) => d,
        Err(why) => return Ok(Err(why)),
    };
    let dir = dir.as_str();
    fn commit(r: &str) -> Result<&str, NoProposal> {
        gitfix::commit_of(r).ok_or_else(|| NoProposal::NotACommit(r.into()))
    }
    let (applied, failing) = match (commit(ask.applied), commit(ask.failing)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(why), _) | (_, Err(why)) => return Ok(Err(why)),
    };
    let head = f.head(ask.base).await.map_err(at("reading the branch"))?;
    let history = History {
        applied: ask.applied.into(),
        failing: ask.failing.into(),
        between: f
            .between(applied, failing, dir, MAX_COMMITS + 1)
            .await
            .map_err(at("listing the commits"))?,
        failing_in_branch: f
            .contains(&head, failing)
            .await
            .map_err(at("reading the branch"))?,
        applied_before_failing: f
            .contains(failing, applied)
            .await
            .map_err(at("reading the branch"))?,
    };
    let culprits = match gitfix::culprits(dir, &history) {
        Ok(c) => c,
        Err(why) => return Ok(Err(why)),
    };
    let files = match gitfix::touched(&culprits) {
        Ok(f) => f,
        Err(why) => return Ok(Err(why)),
    };
    let read = |at: String| read_files(f, at, files.clone());
    let (before, broken, now) = (
        read(applied.into()).await?,
        read(failing.into()).await?,
        read(head.clone()).await?,
    );
    let sha256 = failing.len() == 64;
    let changes = match gitfix::revert(&files, &before, &broken, &now, sha256) {
        Ok(c) => c,
        Err(why) => return Ok(Err(why)),
    };
    let tree = read_tree(f, &head, dir).await?;
    if let Err(why) =
        tree.and_then(|t| gitfix::check_manifests(&gitfix::reverted_tree(t, &changes)))
    {
        return Ok(Err(why));
    }
    Ok(gitfix::propose_text(&ask.incident, &history, &culprits, changes).map(|p| (p, head)))
}

async fn read_files<F: Forge + Sync>(
    f: &F,
    commit: String,
    files: Vec<String>,
) -> Result<Files, ProposeError> {
    let mut out = BTreeMap::new();
    let mut total = 0;
    for path in files {
        let body = f.file(&commit, &path).await.map_err(at("reading a file"))?;
        total += body.as_ref().map_or(0, Vec::len);
        if total > MAX_TREE_BYTES {
            return Err(at("reading a file")(ForgeError::TooLarge(format!(
                "more than {MAX_TREE_BYTES} bytes of changed files"
            ))));
        }
        out.insert(path, body);
    }
    Ok(out)
}

/// The YAML files under `dir` at `head`; too many or too large: a refusal, not an error.
async fn read_tree<F: Forge + Sync>(
    f: &F,
    head: &str,
    dir: &str,
) -> Result<Result<BTreeMap<String, Vec<u8>>, NoProposal>, ProposeError> {
    let paths = f
        .tree(head, dir, MAX_TREE_FILES + 1)
        .await
        .map_err(at("listing the path"))?;
    let yaml: Vec<String> = paths.into_iter().filter(|p| gitfix::is_yaml(p)).collect();
    if yaml.len() > MAX_TREE_FILES {
        return Ok(Err(NoProposal::TooLarge(format!(
            "more than {MAX_TREE_FILES} files to check"
        ))));
    }
    let (mut out, mut total) = (BTreeMap::new(), 0);
    for path in yaml {
        match f.file(head, &path).await {
            Ok(Some(body)) => {
                // Bounded while reading, not after: a thousand files of a megabyte each compress
                // to little in Git.
                total += body.len();
                if total > MAX_TREE_BYTES {
                    return Ok(Err(NoProposal::TooLarge(
                        "manifests too large to check".into(),
                    )));
                }
                out.insert(path, body);
            }
            Ok(None) => {}
            Err(ForgeError::TooLarge(what)) => return Ok(Err(NoProposal::TooLarge(what))),
            Err(e) => return Err(at("reading a file")(e)),
        }
    }
    Ok(Ok(out))
}

/// Writes the proposal's branch; one that exists already is taken only if it is exactly this
/// proposal (a crash between writing it and opening the pull request), never someone's branch
/// of the same name.
async fn write_branch<F: Forge + Sync>(
    f: &F,
    ask: &Ask<'_>,
    p: &gitfix::Proposal,
    head: &str,
) -> Result<(), ProposeError> {
    match f
        .create_branch(ask.base, &p.branch, &p.message, &p.changes)
        .await
    {
        Ok(_) => Ok(()),
        Err(ForgeError::Exists(_)) => {
            if is_this_proposal(f, p, head).await? {
                Ok(())
            } else {
                Err(at("writing the branch")(ForgeError::Exists(format!(
                    "branch {} (not fluxmedic's proposal for this incident)",
                    p.branch
                ))))
            }
        }
        Err(e) => Err(at("writing the branch")(e)),
    }
}

/// The branch is one commit on `head` that is exactly the proposal (its parent checked too:
/// commits below a matching tip could change anything).
async fn is_this_proposal<F: Forge + Sync>(
    f: &F,
    p: &gitfix::Proposal,
    head: &str,
) -> Result<bool, ProposeError> {
    let Some(tip) = f
        .branch(&p.branch)
        .await
        .map_err(at("reading the branch"))?
    else {
        return Ok(false);
    };
    let c = f.commit(&tip).await.map_err(at("reading the branch"))?;
    let ours = c.parents == [head]
        && c.message == p.message
        && c.message.lines().any(|l| l.starts_with(TRAILER))
        && c.files.len() == p.changes.len()
        && p.changes.iter().all(|ch| c.files.contains(&ch.path));
    if !ours {
        return Ok(false);
    }
    for ch in &p.changes {
        if f.file(&tip, &ch.path)
            .await
            .map_err(at("reading the branch"))?
            != ch.content
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Closes fluxmedic's open pull request for an incident that ended another way (a fix landed
/// by another route), saying so. Nothing else is closed.
pub async fn withdraw<F: Forge + Sync>(
    f: &F,
    base: &str,
    (namespace, name): (&str, &str),
    why: &str,
) -> Result<Option<Pull>, ProposeError> {
    let Ok(branch) = gitfix::branch_of(namespace, name) else {
        return Ok(None);
    };
    match f
        .find_pull(base, &branch)
        .await
        .map_err(at("finding the pull request"))?
    {
        Some(pull) if pull.state == PullState::Open => {
            f.close_pull(pull.number, why)
                .await
                .map_err(at("closing the pull request"))?;
            Ok(Some(pull))
        }
        _ => Ok(None),
    }
}

pub mod gitea;
#[cfg(test)]
pub mod memory;
#[cfg(test)]
mod tests;
