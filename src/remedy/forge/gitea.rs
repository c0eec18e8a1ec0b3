//! The [`Forge`] port over Gitea's REST API (`/api/v1`, Gitea 1.2x; Forgejo speaks the same).
//! How each question is asked, and the traps avoided, in docs/git-fix.md.
//!
//! The token goes only in the `Authorization` header: no error, log or text carries it. Every
//! answer is read to a bound before it is parsed.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Change, Commit, Forge, ForgeError, Pull, PullState};
use crate::gitfix::{self, under};

/// Most bytes of one JSON answer read (a page of 50 commits with their files fits easily).
const MAX_ANSWER: usize = 4 << 20;
/// Commits a page holds (Gitea's default `MAX_RESPONSE_ITEMS`).
const PAGE: usize = 50;
/// Most pages of commits, or of a tree, read for one question.
const MAX_PAGES: usize = 10;
const TIMEOUT: Duration = Duration::from_secs(30);

/// One repository on a Gitea server.
pub struct Gitea {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `<server>/api/v1/repos/<owner>/<repo>`
    repo: String,
    token: String,
}

impl std::fmt::Debug for Gitea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gitea")
            .field("repo", &self.repo)
            .finish_non_exhaustive()
    }
}

/// The owner and name of the repository a clone URL names on the forge at `address`
/// (`https://forge.example/org/app.git` on `https://forge.example`). A URL on another host,
/// scheme or port, or not of that form, names no repository there.
pub fn repository_of(address: &str, clone_url: &str) -> Option<(String, String)> {
    let base = address.trim_end_matches('/');
    let rest = clone_url.strip_prefix(base)?.strip_prefix('/')?;
    let rest = rest.trim_end_matches('/');
    let rest = rest.strip_suffix(".git").unwrap_or(rest);
    let (owner, name) = rest.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    (ok(owner) && ok(name)).then(|| (owner.to_string(), name.to_string()))
}

impl Gitea {
    /// A client of `owner/name` on the server at `address` (`http(s)://host[:port][/sub-path]`).
    pub fn new(address: &str, owner: &str, name: &str, token: String) -> Result<Self, ForgeError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| ForgeError::Transport(format!("no TLS roots: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        let repo = format!(
            "{}/api/v1/repos/{}/{}",
            address.trim_end_matches('/'),
            segment(owner),
            segment(name)
        );
        Ok(Gitea {
            client,
            repo,
            token,
        })
    }

    /// One request; the answer's status, `X-Total-Count` and body (at most `max` bytes).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        max: usize,
    ) -> Result<(StatusCode, Option<u64>, Bytes), ForgeError> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.repo))
            .header(header::AUTHORIZATION, format!("token {}", self.token))
            .header(header::ACCEPT, "application/json");
        let req = match body {
            Some(v) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(v.to_string()))),
            None => req.body(Full::new(Bytes::new())),
        }
        .map_err(|e| ForgeError::Transport(format!("{what}: {e}")))?;
        let res = tokio::time::timeout(TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| ForgeError::Transport(format!("{what}: timed out")))?
            .map_err(|e| ForgeError::Transport(format!("{what}: {e}")))?;
        let status = res.status();
        if matches!(status.as_u16(), 401 | 403) {
            return Err(ForgeError::Unauthorized(status.as_u16()));
        }
        let total = res
            .headers()
            .get("x-total-count")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let body = tokio::time::timeout(TIMEOUT, Limited::new(res.into_body(), max).collect())
            .await
            .map_err(|_| ForgeError::Transport(format!("{what}: timed out")))?
            .map_err(|_| ForgeError::TooLarge(what.clone()))?
            .to_bytes();
        Ok((status, total, body))
    }

    /// A request whose success is `ok`, parsed as `T`; 404 is `None`.
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        ok: StatusCode,
    ) -> Result<Option<T>, ForgeError> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let (status, _, bytes) = self.call(method, path, body, MAX_ANSWER).await?;
        match status {
            s if s == ok => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ForgeError::Parse {
                        what,
                        why: e.to_string(),
                    })
            }
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::CONFLICT => Err(ForgeError::Exists(what)),
            s => Err(ForgeError::Status {
                status: s.as_u16(),
                what,
            }),
        }
    }

    /// A GET whose 404 means the commit asked about is not on the forge.
    async fn found<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        commit: &str,
    ) -> Result<T, ForgeError> {
        self.json(Method::GET, path, None, StatusCode::OK)
            .await?
            .ok_or_else(|| ForgeError::NotFound(format!("commit {commit}")))
    }

    async fn page_of_commits(
        &self,
        to: &str,
        from: &str,
        page: usize,
    ) -> Result<Vec<Commit>, ForgeError> {
        let path = format!(
            "/commits?sha={}&not={}&files=true&stat=false&verification=false&limit={PAGE}&page={page}",
            hex(to)?,
            hex(from)?
        );
        let list: Vec<GiteaCommit> = self.found(&path, to).await?;
        list.into_iter().map(GiteaCommit::into_commit).collect()
    }
}

/// A full commit id, or nothing is asked (a short or odd ref makes Gitea's `/raw` fall back to
/// the default branch silently).
fn hex(sha: &str) -> Result<&str, ForgeError> {
    let ok = matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then_some(sha)
        .ok_or_else(|| ForgeError::NotFound(format!("commit `{sha}`")))
}

/// A path segment, percent-encoded (RFC 3986 unreserved characters kept).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// A file path, each segment encoded.
fn file_path(p: &str) -> String {
    p.split('/').map(segment).collect::<Vec<_>>().join("/")
}

#[derive(Deserialize)]
struct GiteaCommit {
    sha: String,
    #[serde(default)]
    parents: Vec<Sha>,
    commit: Message,
    #[serde(default)]
    files: Option<Vec<FileName>>,
}

#[derive(Deserialize)]
struct Sha {
    sha: String,
}

#[derive(Deserialize)]
struct Message {
    message: String,
}

#[derive(Deserialize)]
struct FileName {
    filename: String,
}

impl GiteaCommit {
    /// A commit whose id or parents are not commit ids is an answer fluxmedic cannot use.
    fn into_commit(self) -> Result<Commit, ForgeError> {
        let ids = std::iter::once(&self.sha).chain(self.parents.iter().map(|p| &p.sha));
        if let Some(bad) = ids.into_iter().find(|id| hex(id).is_err()) {
            return Err(ForgeError::Parse {
                what: "a commit".into(),
                why: format!(
                    "`{}` is not a commit id",
                    bad.chars().take(80).collect::<String>()
                ),
            });
        }
        Ok(Commit {
            sha: self.sha,
            parents: self.parents.into_iter().map(|p| p.sha).collect(),
            message: self.commit.message,
            files: self
                .files
                .unwrap_or_default()
                .into_iter()
                .map(|f| f.filename)
                .collect(),
        })
    }
}

#[derive(Deserialize)]
struct Branch {
    commit: BranchCommit,
}

#[derive(Deserialize)]
struct BranchCommit {
    id: String,
}

#[derive(Deserialize)]
struct Tree {
    #[serde(default)]
    tree: Vec<TreeEntry>,
    #[serde(default)]
    truncated: bool,
}

#[derive(Deserialize)]
struct TreeEntry {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct GiteaPull {
    number: u64,
    html_url: String,
    state: String,
    #[serde(default)]
    merged: bool,
    #[serde(default)]
    merge_commit_sha: Option<String>,
}

impl From<GiteaPull> for Pull {
    fn from(p: GiteaPull) -> Pull {
        let state = match (p.merged, p.state.as_str()) {
            (true, _) => PullState::Merged {
                commit: p.merge_commit_sha,
            },
            (false, "open") => PullState::Open,
            _ => PullState::Closed,
        };
        Pull {
            number: p.number,
            url: p.html_url,
            state,
        }
    }
}

impl Forge for Gitea {
    async fn head(&self, branch: &str) -> Result<String, ForgeError> {
        self.branch(branch)
            .await?
            .ok_or_else(|| ForgeError::NotFound(format!("branch {branch}")))
    }

    async fn contains(&self, head: &str, commit: &str) -> Result<bool, ForgeError> {
        // `commit` not reachable from `head`: none listed (Gitea has no merge-base answer).
        let path = format!(
            "/commits?sha={}&not={}&files=false&stat=false&verification=false&limit=1",
            hex(commit)?,
            hex(head)?
        );
        let (status, total, _) = self.call(Method::GET, &path, None, MAX_ANSWER).await?;
        match status {
            StatusCode::OK => Ok(total == Some(0)),
            // A commit the forge no longer has is in no branch.
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(ForgeError::Status {
                status: s.as_u16(),
                what: "GET /commits".into(),
            }),
        }
    }

    async fn between(
        &self,
        from: &str,
        to: &str,
        dir: &str,
        limit: usize,
    ) -> Result<Vec<Commit>, ForgeError> {
        let mut out = vec![];
        for page in 1..=MAX_PAGES {
            let got = self.page_of_commits(to, from, page).await?;
            let last = got.len() < PAGE;
            out.extend(
                got.into_iter()
                    .filter(|c| c.files.iter().any(|f| under(dir, f))),
            );
            if last || out.len() >= limit {
                out.truncate(limit);
                return Ok(out);
            }
        }
        Err(ForgeError::TooLarge(format!(
            "more than {} commits since {from}",
            PAGE * MAX_PAGES
        )))
    }

    async fn commit(&self, sha: &str) -> Result<Commit, ForgeError> {
        let path = format!(
            "/git/commits/{}?files=true&stat=false&verification=false",
            hex(sha)?
        );
        let c: GiteaCommit = self.found(&path, sha).await?;
        c.into_commit()
    }

    async fn file(&self, commit: &str, path: &str) -> Result<Option<Vec<u8>>, ForgeError> {
        let url = format!("/raw/{}?ref={}", file_path(path), hex(commit)?);
        let (status, _, body) = self
            .call(Method::GET, &url, None, gitfix::MAX_FILE_BYTES)
            .await
            .map_err(|e| match e {
                ForgeError::TooLarge(_) => ForgeError::TooLarge(path.into()),
                e => e,
            })?;
        match status {
            StatusCode::OK => Ok(Some(body.to_vec())),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(ForgeError::Status {
                status: s.as_u16(),
                what: "GET /raw".into(),
            }),
        }
    }

    async fn tree(&self, commit: &str, dir: &str, limit: usize) -> Result<Vec<String>, ForgeError> {
        let mut out = vec![];
        for page in 1..=MAX_PAGES {
            let path = format!(
                "/git/trees/{}?recursive=true&per_page=1000&page={page}",
                hex(commit)?
            );
            let t: Tree = self.found(&path, commit).await?;
            let files = t
                .tree
                .into_iter()
                .filter(|e| e.kind == "blob" && under(dir, &e.path));
            out.extend(files.map(|e| e.path));
            if !t.truncated || out.len() >= limit {
                out.truncate(limit);
                return Ok(out);
            }
        }
        Err(ForgeError::TooLarge(format!("the tree of {commit}")))
    }

    async fn find_pull(&self, base: &str, branch: &str) -> Result<Option<Pull>, ForgeError> {
        // `/pulls/{base}/*`: the head is the rest of the path, slashes and all.
        let path = format!("/pulls/{}/{}", segment(base), file_path(branch));
        let p: Option<GiteaPull> = self.json(Method::GET, &path, None, StatusCode::OK).await?;
        Ok(p.map(Pull::from))
    }

    async fn branch(&self, branch: &str) -> Result<Option<String>, ForgeError> {
        let path = format!("/branches/{}", segment(branch));
        let b: Option<Branch> = self.json(Method::GET, &path, None, StatusCode::OK).await?;
        Ok(b.map(|b| b.commit.id))
    }

    async fn create_branch(
        &self,
        base: &str,
        branch: &str,
        message: &str,
        changes: &[Change],
    ) -> Result<String, ForgeError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let files: Vec<Value> = changes
            .iter()
            .map(|c| {
                let op = match (&c.content, &c.replaces) {
                    (Some(_), None) => "create",
                    (Some(_), Some(_)) => "update",
                    (None, _) => "delete",
                };
                json!({"operation": op, "path": c.path, "sha": c.replaces,
                       "content": c.content.as_ref().map(|b| b64.encode(b))})
            })
            .collect();
        let body =
            json!({"branch": base, "new_branch": branch, "message": message, "files": files});
        let (status, _, bytes) = self
            .call(Method::POST, "/contents", Some(body), MAX_ANSWER)
            .await?;
        match status {
            StatusCode::CREATED => {
                let v: Value = serde_json::from_slice(&bytes).map_err(|e| ForgeError::Parse {
                    what: "POST /contents".into(),
                    why: e.to_string(),
                })?;
                Ok(v["commit"]["sha"].as_str().unwrap_or_default().to_string())
            }
            // Gitea answers 422 both for a branch that exists and for a file that changed.
            StatusCode::UNPROCESSABLE_ENTITY if self.branch(branch).await?.is_some() => {
                Err(ForgeError::Exists(format!("branch {branch}")))
            }
            s => Err(ForgeError::Status {
                status: s.as_u16(),
                what: "POST /contents".into(),
            }),
        }
    }

    async fn open_pull(
        &self,
        base: &str,
        branch: &str,
        title: &str,
        body: &str,
    ) -> Result<Pull, ForgeError> {
        let req = json!({"base": base, "head": branch, "title": title, "body": body});
        let p: GiteaPull = self
            .json(Method::POST, "/pulls", Some(req), StatusCode::CREATED)
            .await?
            .ok_or_else(|| ForgeError::NotFound("the repository".into()))?;
        Ok(p.into())
    }

    async fn close_pull(&self, number: u64, comment: &str) -> Result<(), ForgeError> {
        let steps = [
            (
                Method::POST,
                format!("/issues/{number}/comments"),
                json!({"body": comment}),
            ),
            (
                Method::PATCH,
                format!("/pulls/{number}"),
                json!({"state": "closed"}),
            ),
        ];
        for (method, path, body) in steps {
            let what = format!("{method} {path}");
            let (status, _, _) = self.call(method, &path, Some(body), MAX_ANSWER).await?;
            // Gitea answers the edit with 201.
            if !matches!(status.as_u16(), 200 | 201) {
                return Err(ForgeError::Status {
                    status: status.as_u16(),
                    what,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_url_names_a_repository_only_on_its_own_forge() {
        let forge = "https://git.example.com";
        for (url, want) in [
            (
                "https://git.example.com/team/app.git",
                Some(("team", "app")),
            ),
            ("https://git.example.com/team/app", Some(("team", "app"))),
            ("https://git.example.com/team/app/", Some(("team", "app"))),
            ("https://git.example.com.evil/team/app.git", None),
            ("https://git.example.com:8443/team/app.git", None),
            ("http://git.example.com/team/app.git", None),
            ("https://git.example.com/team/app/extra.git", None),
            ("https://git.example.com/team/..", None),
            ("https://git.example.com/team/a%2Fb", None),
            ("ssh://git@git.example.com/team/app.git", None),
        ] {
            let got = repository_of(forge, url);
            let want = want.map(|(o, n)| (o.to_string(), n.to_string()));
            assert_eq!(got, want, "{url}");
        }
        assert_eq!(
            repository_of(
                "http://127.0.0.1:3000/sub/",
                "http://127.0.0.1:3000/sub/o/r.git"
            ),
            Some(("o".into(), "r".into()))
        );
    }

    #[test]
    fn paths_are_encoded_and_refs_are_full_commit_ids() {
        assert_eq!(
            file_path("apps/we b/a?b#c.yaml"),
            "apps/we%20b/a%3Fb%23c.yaml"
        );
        assert_eq!(segment("fluxmedic/revert-x"), "fluxmedic%2Frevert-x");
        assert!(hex("main").is_err());
        assert!(hex("abc123").is_err());
        assert!(hex(&"a".repeat(40)).is_ok());
    }
}
