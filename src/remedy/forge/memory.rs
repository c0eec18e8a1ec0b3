//! A forge in memory for the tests: commits holding whole trees, branches, pull requests, a
//! log of every write, and a fault to inject into one call.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
};

use super::{Change, Commit, Forge, ForgeError, Pull, PullState};
use crate::gitfix::{self, under};

#[derive(Clone, Debug, Default)]
pub struct Node {
    pub parents: Vec<String>,
    pub message: String,
    pub tree: BTreeMap<String, Vec<u8>>,
}

#[derive(Clone, Debug)]
pub struct PullRecord {
    pub branch: String,
    pub base: String,
    pub title: String,
    pub body: String,
    pub pull: Pull,
    pub comments: Vec<String>,
}

#[derive(Debug, Default)]
pub struct State {
    pub commits: BTreeMap<String, Node>,
    pub branches: BTreeMap<String, String>,
    pub pulls: Vec<PullRecord>,
    /// Each write, in order: `create_branch <name>`, `open_pull <branch>`, `close_pull <n>`.
    pub writes: Vec<String>,
    /// The next call of this name fails with this error (once).
    pub fail: Option<(&'static str, ForgeError)>,
    next: u64,
}

#[derive(Debug, Default)]
pub struct MemForge(pub Mutex<State>);

impl State {
    /// A new commit on `branch` (created from nothing when absent) changing `files`
    /// (`None`: delete); returns its id.
    pub fn commit_on(
        &mut self,
        branch: &str,
        message: &str,
        files: &[(&str, Option<&str>)],
    ) -> String {
        let parent = self.branches.get(branch).cloned();
        let mut tree = parent
            .as_ref()
            .map(|p| self.commits[p].tree.clone())
            .unwrap_or_default();
        for (path, body) in files {
            match body {
                Some(b) => tree.insert(path.to_string(), b.as_bytes().to_vec()),
                None => tree.remove(*path),
            };
        }
        let sha = self.new_commit(parent.into_iter().collect(), message, tree);
        self.branches.insert(branch.into(), sha.clone());
        sha
    }

    fn new_commit(
        &mut self,
        parents: Vec<String>,
        message: &str,
        tree: BTreeMap<String, Vec<u8>>,
    ) -> String {
        self.next += 1;
        let sha = format!("{:040x}", 0xc0ffee_u64 * 1000 + self.next);
        let node = Node {
            parents,
            message: message.into(),
            tree,
        };
        self.commits.insert(sha.clone(), node);
        sha
    }

    fn changed(&self, sha: &str) -> Vec<String> {
        let node = &self.commits[sha];
        let empty = BTreeMap::new();
        let before = node
            .parents
            .first()
            .map_or(&empty, |p| &self.commits[p].tree);
        let paths: BTreeSet<&String> = before.keys().chain(node.tree.keys()).collect();
        paths
            .into_iter()
            .filter(|p| before.get(*p) != node.tree.get(*p))
            .cloned()
            .collect()
    }

    fn as_commit(&self, sha: &str) -> Commit {
        let node = &self.commits[sha];
        Commit {
            sha: sha.into(),
            parents: node.parents.clone(),
            message: node.message.clone(),
            files: self.changed(sha),
        }
    }

    fn fault(&mut self, call: &'static str) -> Result<(), ForgeError> {
        match self.fail.take() {
            Some((name, e)) if name == call => Err(e),
            other => {
                self.fail = other;
                Ok(())
            }
        }
    }

    fn known(&self, sha: &str) -> Result<&Node, ForgeError> {
        self.commits
            .get(sha)
            .ok_or_else(|| ForgeError::NotFound(format!("commit {sha}")))
    }
}

impl MemForge {
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    fn call<T>(
        &self,
        name: &'static str,
        f: impl FnOnce(&mut State) -> Result<T, ForgeError>,
    ) -> Result<T, ForgeError> {
        self.with(|s| {
            s.fault(name)?;
            f(s)
        })
    }
}

impl Forge for MemForge {
    async fn head(&self, branch: &str) -> Result<String, ForgeError> {
        self.call("head", |s| {
            s.branches
                .get(branch)
                .cloned()
                .ok_or_else(|| ForgeError::NotFound(format!("branch {branch}")))
        })
    }

    async fn contains(&self, head: &str, commit: &str) -> Result<bool, ForgeError> {
        self.call("contains", |s| {
            let mut todo = vec![head.to_string()];
            let mut seen = BTreeSet::new();
            while let Some(c) = todo.pop() {
                if c == commit {
                    return Ok(true);
                }
                if seen.insert(c.clone()) {
                    todo.extend(s.known(&c)?.parents.iter().cloned());
                }
            }
            Ok(false)
        })
    }

    async fn between(
        &self,
        from: &str,
        to: &str,
        dir: &str,
        limit: usize,
    ) -> Result<Vec<Commit>, ForgeError> {
        self.call("between", |s| {
            let mut out = vec![];
            let mut at = Some(to.to_string());
            while let Some(c) = at.filter(|c| c != from) {
                let commit = s.as_commit(&c);
                at = s.known(&c)?.parents.first().cloned();
                if commit.files.iter().any(|f| under(dir, f)) {
                    out.push(commit);
                }
            }
            out.truncate(limit);
            Ok(out)
        })
    }

    async fn commit(&self, sha: &str) -> Result<Commit, ForgeError> {
        self.call("commit", |s| s.known(sha).map(|_| s.as_commit(sha)))
    }

    async fn file(&self, commit: &str, path: &str) -> Result<Option<Vec<u8>>, ForgeError> {
        self.call("file", |s| {
            let body = s.known(commit)?.tree.get(path).cloned();
            match body {
                Some(b) if b.len() > gitfix::MAX_FILE_BYTES => {
                    Err(ForgeError::TooLarge(path.into()))
                }
                b => Ok(b),
            }
        })
    }

    async fn tree(&self, commit: &str, dir: &str, limit: usize) -> Result<Vec<String>, ForgeError> {
        self.call("tree", |s| {
            let node = s.known(commit)?;
            Ok(node
                .tree
                .keys()
                .filter(|p| under(dir, p))
                .take(limit)
                .cloned()
                .collect())
        })
    }

    async fn find_pull(&self, base: &str, branch: &str) -> Result<Option<Pull>, ForgeError> {
        self.call("find_pull", |s| {
            let from = |p: &&PullRecord| p.branch == branch && p.base == base;
            Ok(s.pulls.iter().rev().find(from).map(|p| p.pull.clone()))
        })
    }

    async fn branch(&self, branch: &str) -> Result<Option<String>, ForgeError> {
        self.call("branch", |s| Ok(s.branches.get(branch).cloned()))
    }

    async fn create_branch(
        &self,
        base: &str,
        branch: &str,
        message: &str,
        changes: &[Change],
    ) -> Result<String, ForgeError> {
        self.call("create_branch", |s| {
            if s.branches.contains_key(branch) {
                return Err(ForgeError::Exists(format!("branch {branch}")));
            }
            let head = s
                .branches
                .get(base)
                .cloned()
                .ok_or_else(|| ForgeError::NotFound(format!("branch {base}")))?;
            let mut tree = s.known(&head)?.tree.clone();
            for c in changes {
                let now = tree.get(&c.path).map(|b| gitfix::blob_id(b, false));
                if now != c.replaces {
                    return Err(ForgeError::Status {
                        status: 422,
                        what: format!("{} changed", c.path),
                    });
                }
                match &c.content {
                    Some(b) => tree.insert(c.path.clone(), b.clone()),
                    None => tree.remove(&c.path),
                };
            }
            let sha = s.new_commit(vec![head], message, tree);
            s.branches.insert(branch.into(), sha.clone());
            s.writes.push(format!("create_branch {branch}"));
            Ok(sha)
        })
    }

    async fn open_pull(
        &self,
        base: &str,
        branch: &str,
        title: &str,
        body: &str,
    ) -> Result<Pull, ForgeError> {
        self.call("open_pull", |s| {
            if s.pulls
                .iter()
                .any(|p| p.branch == branch && p.pull.state == PullState::Open)
            {
                return Err(ForgeError::Exists(format!("pull request from {branch}")));
            }
            let number = s.pulls.len() as u64 + 1;
            let pull = Pull {
                number,
                url: format!("http://forge/pulls/{number}"),
                state: PullState::Open,
            };
            s.pulls.push(PullRecord {
                branch: branch.into(),
                base: base.into(),
                title: title.into(),
                body: body.into(),
                pull: pull.clone(),
                comments: vec![],
            });
            s.writes.push(format!("open_pull {branch}"));
            Ok(pull)
        })
    }

    async fn close_pull(&self, number: u64, comment: &str) -> Result<(), ForgeError> {
        self.call("close_pull", |s| {
            let p = s
                .pulls
                .iter_mut()
                .find(|p| p.pull.number == number)
                .ok_or_else(|| ForgeError::NotFound(format!("pull request {number}")))?;
            p.comments.push(comment.into());
            p.pull.state = PullState::Closed;
            s.writes.push(format!("close_pull {number}"));
            Ok(())
        })
    }
}
