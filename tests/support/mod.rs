//! Shared fixture for tests against the real control plane (hack/testenv/up.sh):
//! a kube client, a namespace per test, Git repositories on the fixture server, a chart
//! repository, and a fluxmedic operator process scoped to the test's namespace.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use base64::Engine as _;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client, Config,
    api::{DynamicObject, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::ApiResource,
};
use serde_json::{Value, json};

pub const MIN: Duration = Duration::from_secs(60);

pub struct Env {
    pub vars: BTreeMap<String, String>,
}

static ENV: OnceLock<Env> = OnceLock::new();

/// Start (or reuse) the test control plane. Panics with the script's output if it fails.
pub fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(root.join("hack/testenv/up.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run hack/testenv/up.sh");
        assert!(out.status.success(), "hack/testenv/up.sh failed");
        let env_file = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        let text = std::fs::read_to_string(&env_file).expect("testenv env file");
        let vars = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = Env { vars };
        clear_leftovers(&env);
        env
    })
}

/// Label on every test namespace: the pid of the test process that made it.
const OWNER_LABEL: &str = "fluxmedic.io/test-pid";

/// Delete the namespaces of test processes that have ended (earlier test binaries of this run,
/// or earlier runs) and wait until they are gone, so each test binary starts on a quiet control
/// plane: Flux requeues every object it knows after a relist, and a leftover storm of failing
/// objects would otherwise compete with this binary's tests. Set FLUXMEDIC_KEEP_NAMESPACES=1
/// to keep them for a post-mortem.
fn clear_leftovers(env: &Env) {
    if std::env::var_os("FLUXMEDIC_KEEP_NAMESPACES").is_some() {
        return;
    }
    let kubectl = |args: &[&str]| env.kubectl().args(args).output().expect("kubectl");
    let out = kubectl(&[
        "get",
        "namespaces",
        "-l",
        OWNER_LABEL,
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.metadata.labels.fluxmedic\.io/test-pid}{"\n"}{end}"#,
    ]);
    let stale: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, pid)| !Path::new(&format!("/proc/{pid}")).exists())
        .map(|(ns, _)| ns.to_string())
        .collect();
    if stale.is_empty() {
        return;
    }
    // What loads Flux is its objects: delete those and wait until they are finalized; the
    // namespaces themselves go in the background (the namespace controller takes its time).
    let started = Instant::now();
    let mut ok = true;
    for ns in &stale {
        // A HelmRelease a test's own helm-controller served (`safety`'s lockdown shard) keeps
        // its finalizer once that controller is gone: nobody else will ever remove it.
        let orphans = kubectl(&[
            "get",
            "helmreleases",
            "-n",
            ns,
            "-l",
            "fluxmedic.test/lockdown",
            "-o",
            "name",
        ]);
        for hr in String::from_utf8_lossy(&orphans.stdout).lines() {
            kubectl(&[
                "patch",
                "-n",
                ns,
                hr,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
        let out = kubectl(&[
            "delete",
            "-n",
            ns,
            "kustomizations,helmreleases,gitrepositories,helmrepositories,helmcharts,ocirepositories,buckets",
            "--all",
            "--wait=true",
            "--timeout=60s",
        ]);
        ok &= out.status.success();
    }
    let mut args = vec!["delete", "namespace", "--wait=false"];
    args.extend(stale.iter().map(String::as_str));
    ok &= kubectl(&args).status.success();
    eprintln!(
        "cleared {} namespaces of ended test processes in {:.1}s{}",
        stale.len(),
        started.elapsed().as_secs_f64(),
        if ok { "" } else { " (not all of it)" }
    );
}

impl Env {
    pub fn var(&self, k: &str) -> &str {
        self.vars
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{k} not in testenv env"))
    }
    pub fn kubeconfig(&self) -> &str {
        self.var("KUBECONFIG")
    }
    /// A tool the test control plane built (kubectl, promtool, actionlint, ctr, ...), on this
    /// environment's kubeconfig.
    pub fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(Path::new(self.var("FLUXMEDIC_TESTENV_BIN")).join(name));
        c.env("KUBECONFIG", self.kubeconfig());
        c
    }
    /// The control plane's kubectl, on this environment's kubeconfig.
    pub fn kubectl(&self) -> Command {
        self.tool("kubectl")
    }
    pub fn fixture_url(&self) -> &str {
        self.var("FLUXMEDIC_FIXTURE_URL")
    }
    pub fn fixture_root(&self) -> PathBuf {
        PathBuf::from(self.var("FLUXMEDIC_FIXTURE_ROOT"))
    }
    pub fn helm(&self) -> &str {
        self.var("FLUXMEDIC_HELM")
    }

    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(self.kubeconfig()).expect("kubeconfig");
        let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("config");
        Client::try_from(cfg).expect("client")
    }
}

/// A kubeconfig holding only `token`, for the test API server.
pub fn token_kubeconfig(env: &Env, name: &str, token: &str) -> PathBuf {
    let kc = std::env::temp_dir().join(format!("{name}.kubeconfig"));
    let ca = Path::new(env.kubeconfig())
        .parent()
        .unwrap()
        .join("pki/ca.crt");
    std::fs::write(&kc, format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: \"{}\", certificate-authority: \"{}\"}}\nusers:\n- name: u\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: t\n  context: {{cluster: t, user: u}}\ncurrent-context: t\n",
        env.var("FLUXMEDIC_API_URL"), ca.display())).unwrap();
    kc
}

/// A kubeconfig of the measurement identity (system:masters, the only admin the API server's
/// audit log records), for an operator whose every request a test reads back from that log.
pub fn audited_kubeconfig(env: &Env, name: &str) -> PathBuf {
    token_kubeconfig(env, name, env.var("FLUXMEDIC_BENCH_TOKEN"))
}

/// A fresh namespace for one test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let n = format!(
        "{prefix}-{}",
        std::process::id() as u64 * 1000 + (jiff::Timestamp::now().as_millisecond() as u64 % 1000)
    );
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(
        json!({"metadata": {"name": n, "labels": {OWNER_LABEL: std::process::id().to_string()}}}),
    )
    .unwrap();
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    n
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A Git repository on the fixture server, with a working tree to commit from.
pub struct Repo {
    pub name: String,
    pub url: String,
    bare: PathBuf,
    work: tempfile::TempDir,
}

impl Repo {
    /// `private` repos need basic auth `user:password` (see [`Repo::set_server_credentials`]).
    pub fn new(env: &Env, name: &str, private: bool) -> Repo {
        let bare = env.fixture_root().join("git").join(format!("{name}.git"));
        let _ = std::fs::remove_dir_all(&bare);
        run(Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&bare));
        run(Command::new("git")
            .args(["config", "http.receivepack", "false"])
            .current_dir(&bare));
        let work = tempfile::tempdir().unwrap();
        run(Command::new("git")
            .args(["init", "-q", "-b", "main"])
            .current_dir(work.path()));
        for (k, v) in [
            ("user.email", "test@fluxmedic.invalid"),
            ("user.name", "fluxmedic-test"),
        ] {
            run(Command::new("git")
                .args(["config", k, v])
                .current_dir(work.path()));
        }
        run(Command::new("git")
            .args(["remote", "add", "origin"])
            .arg(&bare)
            .current_dir(work.path()));
        let prefix = if private { "private" } else { "git" };
        Repo {
            name: name.into(),
            url: format!("{}/{prefix}/{name}.git", env.fixture_url()),
            bare,
            work,
        }
    }

    /// Write files (path, content; None deletes) and push a commit. Returns the commit SHA.
    pub fn commit(&self, files: &[(&str, Option<&str>)], message: &str) -> String {
        for (path, content) in files {
            let p = self.work.path().join(path);
            match content {
                Some(c) => {
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(&p, c).unwrap();
                }
                None => {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        run(Command::new("git")
            .args(["add", "-A"])
            .current_dir(self.work.path()));
        run(Command::new("git")
            .args(["commit", "-q", "--allow-empty", "-m", message])
            .current_dir(self.work.path()));
        run(Command::new("git")
            .args(["push", "-q", "origin", "main"])
            .current_dir(self.work.path()));
        run(Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(self.work.path()))
        .trim()
        .to_string()
    }

    /// The credentials the server accepts for this (private) repo.
    pub fn set_server_credentials(&self, env: &Env, user: &str, password: &str) {
        std::fs::write(
            env.fixture_root().join("auth").join(&self.name),
            format!("{user}:{password}"),
        )
        .unwrap();
    }

    /// Where the fixture server counts the fetches of this (private) repo it refused.
    pub fn refusals(&self, env: &Env) -> PathBuf {
        env.fixture_root()
            .join("auth")
            .join(format!("{}.refused", self.name))
    }

    pub fn bare_path(&self) -> &Path {
        &self.bare
    }
}

/// A chart repository directory on the fixture server: `<fixture>/charts/<name>/`.
pub struct ChartRepo {
    pub url: String,
    dir: PathBuf,
}

impl ChartRepo {
    pub fn new(env: &Env, name: &str) -> ChartRepo {
        Self::at(env, name, "charts")
    }

    /// A repository behind basic auth (`/private-charts/<name>/`), accepting `user:password`
    /// until [`ChartRepo::set_server_credentials`] rotates it.
    pub fn private(env: &Env, name: &str, user: &str, password: &str) -> ChartRepo {
        let r = Self::at(env, name, "private-charts");
        r.set_server_credentials(env, user, password);
        r
    }

    fn at(env: &Env, name: &str, prefix: &str) -> ChartRepo {
        let dir = env.fixture_root().join("charts").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ChartRepo {
            url: format!("{}/{prefix}/{name}/", env.fixture_url()),
            dir,
        }
    }

    /// The credentials the server accepts for this (private) repository.
    pub fn set_server_credentials(&self, env: &Env, user: &str, password: &str) {
        let name = self.dir.file_name().unwrap();
        std::fs::write(
            env.fixture_root().join("auth").join(name),
            format!("{user}:{password}"),
        )
        .unwrap();
    }

    /// Where the fixture server counts the index fetches it refused.
    pub fn refusals(&self, env: &Env) -> PathBuf {
        let name = self.dir.file_name().unwrap().to_string_lossy();
        env.fixture_root()
            .join("auth")
            .join(format!("{name}.refused"))
    }

    /// Package the chart in `dir` as it stands, at `version`, and re-index.
    pub fn publish_dir(&self, env: &Env, dir: &Path, version: &str) {
        run(Command::new(env.helm())
            .arg("package")
            .arg(dir)
            .args(["--version", version, "-d"])
            .arg(&self.dir));
        run(Command::new(env.helm())
            .args(["repo", "index"])
            .arg(&self.dir)
            .arg("--url")
            .arg(&self.url));
    }

    /// Package a chart made of `templates` (file name, content) at `version`, and re-index.
    pub fn publish(
        &self,
        env: &Env,
        chart: &str,
        version: &str,
        templates: &[(&str, &str)],
        values: &str,
    ) {
        package_chart(env, chart, version, templates, values, &self.dir);
        run(Command::new(env.helm())
            .args(["repo", "index"])
            .arg(&self.dir)
            .arg("--url")
            .arg(&self.url));
    }
}

/// `helm package` a chart made of `templates` (file name, content) at `version` into `dir`;
/// returns the package's path.
pub fn package_chart(
    env: &Env,
    chart: &str,
    version: &str,
    templates: &[(&str, &str)],
    values: &str,
    dir: &Path,
) -> PathBuf {
    let src = tempfile::tempdir().unwrap();
    let cdir = src.path().join(chart);
    std::fs::create_dir_all(cdir.join("templates")).unwrap();
    std::fs::write(
        cdir.join("Chart.yaml"),
        format!("apiVersion: v2\nname: {chart}\nversion: {version}\n"),
    )
    .unwrap();
    std::fs::write(cdir.join("values.yaml"), values).unwrap();
    for (f, c) in templates {
        std::fs::write(cdir.join("templates").join(f), c).unwrap();
    }
    run(Command::new(env.helm())
        .arg("package")
        .arg(&cdir)
        .arg("-d")
        .arg(dir));
    dir.join(format!("{chart}-{version}.tgz"))
}

/// Repositories `<namespace>/...` on the test control plane's OCI registry (hack/registry).
pub struct Registry {
    /// `127.0.0.1:<port>`
    pub host: String,
    namespace: String,
    auth: PathBuf,
    tool: PathBuf,
}

impl Registry {
    /// The registry's `namespace`, accepting basic auth `user:password` (rotate it with
    /// [`Registry::set_server_credentials`]).
    pub fn private(env: &Env, namespace: &str, user: &str, password: &str) -> Registry {
        let r = Registry {
            host: env.var("FLUXMEDIC_REGISTRY").to_string(),
            namespace: namespace.into(),
            auth: env.fixture_root().join("registry-auth").join(namespace),
            tool: Path::new(env.var("FLUXMEDIC_TESTENV_BIN")).join("registry"),
        };
        r.set_server_credentials(user, password);
        r
    }

    pub fn set_server_credentials(&self, user: &str, password: &str) {
        std::fs::write(&self.auth, format!("{user}:{password}")).unwrap();
    }

    /// Where the registry counts the manifest requests it refused.
    pub fn refusals(&self) -> PathBuf {
        self.auth.with_extension("refused")
    }

    /// `oci://` URL of repository `name`.
    pub fn url(&self, name: &str) -> String {
        format!("oci://{}/{}/{name}", self.host, self.namespace)
    }

    /// Push `files` (path, content) as a Flux artifact to `name:tag`, as `user:password`.
    pub fn push(&self, name: &str, tag: &str, files: &[(&str, &str)], user: &str, password: &str) {
        let dir = tempfile::tempdir().unwrap();
        for (f, c) in files {
            std::fs::write(dir.path().join(f), c).unwrap();
        }
        run(Command::new(&self.tool)
            .args(["push", "-ref"])
            .arg(format!("{}/{}/{name}:{tag}", self.host, self.namespace))
            .arg("-dir")
            .arg(dir.path())
            .args(["-user", user, "-password", password]));
    }

    /// `oci://` URL of this namespace, as an OCI HelmRepository names it.
    pub fn charts_url(&self) -> String {
        format!("oci://{}/{}", self.host, self.namespace)
    }

    /// Push a chart made of `templates` at `version` as Helm does (`<namespace>/<chart>:<version>`).
    #[allow(clippy::too_many_arguments)]
    pub fn push_chart(
        &self,
        env: &Env,
        chart: &str,
        version: &str,
        templates: &[(&str, &str)],
        values: &str,
        user: &str,
        password: &str,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let tgz = package_chart(env, chart, version, templates, values, dir.path());
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            json!({"apiVersion": "v2", "name": chart, "version": version}).to_string(),
        )
        .unwrap();
        run(Command::new(&self.tool)
            .args(["push", "-ref"])
            .arg(format!(
                "{}/{}/{chart}:{version}",
                self.host, self.namespace
            ))
            .arg("-chart")
            .arg(&tgz)
            .arg("-chart-config")
            .arg(&config)
            .args(["-user", user, "-password", password]));
    }

    /// A `kubernetes.io/dockerconfigjson` Secret's data for this registry.
    pub fn docker_config(&self, user: &str, password: &str) -> Value {
        json!({".dockerconfigjson": json!({"auths": {&self.host: {"username": user, "password": password}}}).to_string()})
    }
}

/// A bucket on the test control plane's S3-compatible server (hack/bucket), accepting one
/// access key id until [`S3Bucket::set_access_key`] rotates it.
pub struct S3Bucket {
    /// `127.0.0.1:<port>`
    pub endpoint: String,
    pub name: String,
    key_file: PathBuf,
    tool: PathBuf,
}

impl S3Bucket {
    pub fn new(env: &Env, name: &str, access_key: &str) -> S3Bucket {
        let b = S3Bucket {
            endpoint: env.var("FLUXMEDIC_BUCKET").to_string(),
            name: name.into(),
            key_file: env.fixture_root().join("bucket-keys").join(name),
            tool: Path::new(env.var("FLUXMEDIC_TESTENV_BIN")).join("bucket"),
        };
        b.set_access_key(access_key);
        b
    }

    pub fn set_access_key(&self, access_key: &str) {
        std::fs::write(&self.key_file, access_key).unwrap();
    }

    /// Where the server counts the requests on this bucket it refused.
    pub fn refusals(&self) -> PathBuf {
        self.key_file.with_extension("refused")
    }

    /// Write object `key` with `content`, signed with `access_key`.
    pub fn put(&self, key: &str, content: &str, access_key: &str) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), content).unwrap();
        run(Command::new(&self.tool)
            .args([
                "put",
                "-endpoint",
                &self.endpoint,
                "-bucket",
                &self.name,
                "-key",
                key,
            ])
            .arg("-file")
            .arg(f.path())
            .args(["-access-key", access_key]));
    }
}

pub fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

pub fn flux_api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let k = fluxmedic::flux::FluxKind::from_kind(kind).expect("flux kind");
    Api::namespaced_with(client.clone(), ns, &fluxmedic::remedy::api_resource(k))
}

/// Server-side apply any object (YAML/JSON value with apiVersion/kind/metadata).
pub async fn apply(client: &Client, obj: Value) -> DynamicObject {
    let api_version = obj["apiVersion"].as_str().unwrap().to_string();
    let kind = obj["kind"].as_str().unwrap().to_string();
    let ns = obj["metadata"]["namespace"].as_str().map(String::from);
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let plural = match kind.as_str() {
        "GitRepository" => "gitrepositories".to_string(),
        "HelmRepository" => "helmrepositories".to_string(),
        "OCIRepository" => "ocirepositories".to_string(),
        "RemediationPolicy" => "remediationpolicies".to_string(),
        k => format!("{}s", k.to_lowercase()),
    };
    let r = ar(group, version, &kind, &plural);
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), &ns, &r),
        None => Api::all_with(client.clone(), &r),
    };
    api.patch(
        &name,
        &PatchParams::apply("fluxmedic-test").force(),
        &Patch::Apply(obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {kind}/{name}: {e}"))
}

/// Merge-patch a Flux object as a person would with kubectl.
pub async fn merge_patch(client: &Client, ns: &str, kind: &str, name: &str, patch: Value) {
    flux_api(client, ns, kind)
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap_or_else(|e| panic!("patch {kind}/{name}: {e}"));
}

/// Ask Flux to reconcile now (what `flux reconcile` does); the request's token.
pub async fn request_reconcile(client: &Client, ns: &str, kind: &str, name: &str) -> String {
    let token = jiff::Timestamp::now().to_string();
    merge_patch(
        client,
        ns,
        kind,
        name,
        json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": token}}}),
    )
    .await;
    token
}

pub async fn get(client: &Client, ns: &str, kind: &str, name: &str) -> Option<Value> {
    flux_api(client, ns, kind)
        .get_opt(name)
        .await
        .unwrap()
        .map(|o| serde_json::to_value(o).unwrap())
}

pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

pub fn is_ready(obj: &Value) -> bool {
    condition(obj, "Ready").is_some_and(|c| c["status"] == "True")
}

/// Poll `f` every 250ms until it returns Some, or panic with `what` and the last state.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

pub async fn wait_ready(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    timeout: Duration,
) -> Value {
    wait_for(&format!("{kind} {ns}/{name} Ready"), timeout, || async {
        match get(client, ns, kind, name).await {
            Some(o) if is_ready(&o) => Ok(o),
            Some(o) => Err(format!("{:?}", condition(&o, "Ready"))),
            None => Err("not found".into()),
        }
    })
    .await
}

/// Wait until the object's Ready condition is False with `reason`.
pub async fn wait_failing(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    reason: &str,
    timeout: Duration,
) -> Value {
    wait_for(
        &format!("{kind} {ns}/{name} Ready=False/{reason}"),
        timeout,
        || async {
            match get(client, ns, kind, name).await {
                Some(o)
                    if condition(&o, "Ready")
                        .is_some_and(|c| c["status"] == "False" && c["reason"] == reason) =>
                {
                    Ok(o)
                }
                Some(o) => Err(format!("{:?}", condition(&o, "Ready"))),
                None => Err("not found".into()),
            }
        },
    )
    .await
}

/// Return right after a test server refused a fetch at least `min_gap` after the refusal before
/// it (`counter` counts them; its mtime is the time of the last one). Flux's controllers retry a
/// failure with exponential backoff (0.75 s, doubling), so Flux's own next retry is then about
/// 2 × `min_gap` away: a credentials fix made at once and picked up sooner was picked up by
/// fluxmedic, not by Flux retrying, however fast or loaded the machine. (Waiting for a number of
/// refusals is not enough: when the test gets there late, Flux's next retry may be due now.)
pub async fn wait_flux_backed_off(counter: &Path, min_gap: Duration) {
    let mtime = || std::fs::metadata(counter).and_then(|m| m.modified()).ok();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    let mut last = mtime();
    let mut gaps = Vec::new();
    loop {
        let now = mtime();
        if now != last {
            if let (Some(prev), Some(t)) = (last, now) {
                let gap = t.duration_since(prev).unwrap_or_default();
                if gap >= min_gap {
                    eprintln!("Flux backed off: refusals {gaps:?} apart, then {gap:?}");
                    return;
                }
                gaps.push(gap);
            }
            last = now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal {min_gap:?} after the one before in {} (gaps seen: {gaps:?})",
            counter.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A process killed when the test ends, passed or not (a leaked operator would hold its
/// metrics port and keep acting in later runs).
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `fluxmedic run`, scoped to one namespace, killed on drop.
pub struct Operator {
    child: Child,
    pub metrics_url: String,
    pub log: PathBuf,
}

/// The identity helm-controller uses outside Flux's lockdown in the test control plane: its
/// own ServiceAccount, bound to cluster-admin (hack/testenv/up.sh), as Flux installs it.
pub const HELM_CONTROLLER_IDENTITY: [&str; 2] = [
    "--helm-controller-service-account",
    "flux-system/helm-controller",
];

static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

impl Operator {
    pub fn start(env: &Env, ns: &str, extra: &[&str]) -> Operator {
        Self::start_with(env, ns, extra, &[])
    }

    /// Start with extra environment variables (e.g. `FLUXMEDIC_CRASH_AT`).
    pub fn start_with(env: &Env, ns: &str, extra: &[&str], vars: &[(&str, &str)]) -> Operator {
        Self::launch(env, ns, &[ns], extra, vars, env.kubeconfig())
    }

    /// Start with the operator's namespace `op` watching `watch` (the tenant/production
    /// layout), as the identity of `kubeconfig`.
    pub fn launch(
        env: &Env,
        op: &str,
        watch: &[&str],
        extra: &[&str],
        vars: &[(&str, &str)],
        kubeconfig: &str,
    ) -> Operator {
        let base: u16 = env.var("FLUXMEDIC_PORT_BASE").parse().unwrap();
        let port = base
            + 200
            + (std::process::id() % 50) as u16 * 20
            + NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = std::env::temp_dir().join(format!("fluxmedic-{op}-{port}.log"));
        // helm-controller runs unrestricted as flux-system/helm-controller here (up.sh), and no
        // Deployment says so: Helm actions borrow that identity unless a test says otherwise
        // (or names a Flux namespace whose Deployments say it).
        let identity: &[&str] = if extra.iter().any(|a| {
            a.starts_with("--helm-controller-service-account")
                || a.starts_with("--helm-default-service-account")
                || a.starts_with("--flux-namespace")
        }) {
            &[]
        } else {
            &HELM_CONTROLLER_IDENTITY
        };
        let child = Command::new(env!("CARGO_BIN_EXE_fluxmedic"))
            .envs(vars.iter().copied())
            .args(["run", "--namespace", op, "--watch-namespaces"])
            .arg(watch.join(","))
            .args(identity)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--tick-seconds", "1", "--helm", env.helm()])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,fluxmedic=debug,kube=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start fluxmedic");
        Operator {
            child,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            log,
        }
    }

    /// SIGTERM, as Kubernetes stops a pod; true if it exited within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit(timeout)
    }

    /// The body of a URL path on the metrics port (`/readyz`).
    pub async fn get(&self, path: &str) -> Option<String> {
        reqwest_get(&self.metrics_url.replace("/metrics", path)).await
    }

    /// The sum of the metric lines of `series`: a name and the labels that must match (e.g.
    /// `fluxmedic_incidents_total{case="git-auth"}`; other labels, such as the namespace, may
    /// be there too).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = reqwest_get(&self.metrics_url).await.unwrap_or_default();
        metric_sum(&text, series)
    }

    /// Wait until a metric reaches at least `min` (metrics are updated right after the
    /// status they count).
    pub async fn wait_metric(&self, series: &str, min: f64) {
        wait_for(
            &format!("{series} >= {min}"),
            Duration::from_secs(15),
            || async {
                let v = self.metric(series).await;
                if v >= min { Ok(()) } else { Err(v.to_string()) }
            },
        )
        .await
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (up to `timeout`) for the process to exit by itself; true if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The exit code, once it has exited.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().and_then(|s| s.code())
    }

    /// The process's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The sum of the lines of `text` (OpenMetrics) for `series` (see [`Operator::metric`]).
pub fn metric_sum(text: &str, series: &str) -> f64 {
    let (name, want) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.trim_end_matches('}')),
        None => (series, ""),
    };
    let want: Vec<&str> = want.split(',').filter(|p| !p.is_empty()).collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (n, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            let have: Vec<&str> = labels.split(',').collect();
            (n == name && want.iter().all(|w| have.contains(w)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// A tiny HTTP GET over a TCP socket (no client crate needed for /metrics).
pub async fn reqwest_get(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Remediations in a namespace, as JSON.
pub async fn remediations(client: &Client, ns: &str) -> Vec<Value> {
    let api: Api<fluxmedic::api::Remediation> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect()
}

/// The Remediation of a target (`Kind/name`), newest first.
pub async fn remediation_for(client: &Client, ns: &str, target_name: &str) -> Option<Value> {
    let mut all: Vec<Value> = remediations(client, ns)
        .await
        .into_iter()
        .filter(|r| r["spec"]["targetName"] == target_name)
        .collect();
    // Newest first; records created in the same second (a case change closes one and opens
    // the next) tie on creationTimestamp, and the open one is the newer.
    all.sort_by_key(|r| {
        std::cmp::Reverse((
            r["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            r["status"]["closedAt"].is_null(),
        ))
    });
    all.into_iter().next()
}

/// Events (events.k8s.io) in a namespace whose related object is `name`: (reason, note).
pub async fn events_related(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.related.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// Events (events.k8s.io) in a namespace about an object name: (reason, note).
pub async fn events_about(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

pub fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "fluxmedic.io/v1alpha1", "kind": "RemediationPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// Install fluxmedic's CRDs (idempotent).
pub async fn install_crds(client: &Client) {
    apply_crds(client, &PatchParams::apply("fluxmedic-test").force()).await;
}

/// The chart's CRDs applied as `helm install` applies them (server-side, field manager
/// `helm`): a test running beside a `helm install` of the chart must not own them under
/// another manager, or that install fails on the conflict. (`tests/crds.rs` keeps the chart's
/// `crds/` equal to the generated ones.)
/// Forced: after Flux installed them (`node::flux_installs_upgrades_and_removes_fluxmedic`),
/// helm-controller owns their fields, and helm's own server-side apply would conflict with it.
pub async fn install_crds_as_helm_does(client: &Client) {
    apply_crds(client, &PatchParams::apply("helm").force()).await;
}

/// The CRDs, taken over as `helm install` would own them (after Flux installed them, helm-
/// controller owns their fields; the helm CLI's server-side apply would conflict with it).
pub async fn hand_crds_to_helm(client: &Client) {
    install_crds_as_helm_does(client).await;
}

async fn apply_crds(client: &Client, params: &PatchParams) {
    let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in fluxmedic::api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(&name, params, &Patch::Apply(&crd))
            .await
            .expect("apply CRD");
    }
    crds_established(client).await;
}

async fn crds_established(client: &Client) {
    wait_for(
        "fluxmedic CRDs established",
        Duration::from_secs(30),
        || async {
            let rems: Api<fluxmedic::api::Remediation> = Api::all(client.clone());
            let pols: Api<fluxmedic::api::RemediationPolicy> = Api::all(client.clone());
            match (
                rems.list(&Default::default()).await,
                pols.list(&Default::default()).await,
            ) {
                (Ok(_), Ok(_)) => Ok(()),
                (a, b) => Err(format!("{:?} {:?}", a.err(), b.err())),
            }
        },
    )
    .await;
}

/// A GitRepository `name` on `url` (interval 1h: only explicit requests make Flux look).
pub async fn git_repository(
    client: &Client,
    ns: &str,
    name: &str,
    url: &str,
    secret: Option<&str>,
) {
    let mut spec =
        json!({"url": url, "interval": "1h", "ref": {"branch": "main"}, "timeout": "20s"});
    if let Some(s) = secret {
        spec["secretRef"] = json!({"name": s});
    }
    apply(
        client,
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )
    .await;
}

/// A Kustomization applying `path` of GitRepository `repo` into `ns`.
pub async fn kustomization(client: &Client, ns: &str, name: &str, path: &str, deps: &[&str]) {
    let deps: Vec<Value> = deps.iter().map(|d| json!({"name": d})).collect();
    apply(client, json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"interval": "1h", "path": path, "prune": true, "targetNamespace": ns, "dependsOn": deps,
                 "sourceRef": {"kind": "GitRepository", "name": "repo"}}})).await;
}

/// Wait for the target's Remediation to satisfy `pred`.
pub async fn wait_remediation(
    client: &Client,
    ns: &str,
    target: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(
        &format!("Remediation of {target}: {what}"),
        timeout,
        || async {
            match remediation_for(client, ns, target).await {
                Some(r) if pred(&r) => Ok(r),
                Some(r) => Err(r["status"].to_string()),
                None => Err("no Remediation yet".into()),
            }
        },
    )
    .await
}

/// A GitRepository `repo` in `ns` whose server cannot be reached, failing, under a policy
/// that polls it every 2 s (git-unreachable, Auto): the incident a working source-controller
/// lets fluxmedic act on, and one that must wait while it does not work.
pub async fn unreachable_repo_polled(client: &Client, ns: &str) {
    git_repository(client, ns, "repo", "http://127.0.0.1:1/nothing.git", None).await;
    wait_failing(
        client,
        ns,
        "GitRepository",
        "repo",
        "GitOperationFailed",
        Duration::from_secs(60),
    )
    .await;
    apply(
        client,
        policy(
            ns,
            "auto",
            json!({"rules": [{"case": "git-unreachable", "mode": "Auto"}],
                   "limits": {"pollInterval": "2s", "maxPollInterval": "2s"}}),
        ),
    )
    .await;
}

/// A Flux controller's Deployment as `flux install` writes it (labels, selector, container
/// `manager`), running `image` with `args`.
pub async fn flux_controller_deployment(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: i32,
    image: &str,
    args: &[&str],
) {
    apply(client, json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns,
            "labels": {"app.kubernetes.io/component": name, "app.kubernetes.io/part-of": "flux", "control-plane": "controller"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "manager", "image": image, "imagePullPolicy": "Never", "args": args}]}}}})).await;
}

/// helm-controller as `flux install` deploys it into `flux_ns`, for fluxmedic to read which
/// identity it uses: its ServiceAccount (bound to cluster-admin, as Flux binds it) and its
/// Deployment with `args` (no pod runs it: Flux's controllers run as processes here, and a
/// Deployment without a status is not judged down).
pub async fn helm_controller_as_flux_installs_it(client: &Client, flux_ns: &str, args: &[&str]) {
    helm_controller_deployment(client, flux_ns, "helm-controller", args).await
}

/// [`helm_controller_as_flux_installs_it`] with a Deployment name of its own (a shard's).
pub async fn helm_controller_deployment(client: &Client, flux_ns: &str, name: &str, args: &[&str]) {
    apply(
        client,
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "helm-controller", "namespace": flux_ns}}),
    )
    .await;
    apply(client, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": format!("cluster-reconciler-{flux_ns}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "helm-controller", "namespace": flux_ns}]})).await;
    apply(client, json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": flux_ns,
            "labels": {"app.kubernetes.io/component": "helm-controller", "app.kubernetes.io/part-of": "flux", "control-plane": "controller"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"serviceAccountName": "helm-controller",
                    "containers": [{"name": "manager", "image": "ghcr.io/fluxcd/helm-controller:v1.6.4", "args": args}]}}}})).await;
}

// ---------------------------------------------------------------- scenario helpers

pub fn cm(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

pub const BROKEN_YAML: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken\ndata:\n  value: [unclosed\n";

pub fn phase(r: &Value) -> &str {
    r["status"]["phase"].as_str().unwrap_or_default()
}

pub fn steps(r: &Value) -> Vec<(String, String)> {
    r["status"]["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["action"].as_str().unwrap().to_string(),
                        s["outcome"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn has_step(r: &Value, action: &str, outcome: &str) -> bool {
    steps(r).iter().any(|(a, o)| a == action && o == outcome)
}

pub fn auto(rules: Value) -> Value {
    json!({"rules": rules, "limits": {"pollInterval": "2s", "maxPollInterval": "4s", "cooldown": "3s", "maxAttempts": 3}})
}

pub const CM_TEMPLATE: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-{{ .Values.suffix }}\ndata:\n  v: \"{{ .Values.suffix }}\"\n";
pub const DEPLOYMENT_TEMPLATE: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 0\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: registry.invalid/web:1\n";

pub async fn helm_release(
    client: &Client,
    ns: &str,
    name: &str,
    version: &str,
    values: Value,
    timeout: &str,
) {
    apply(client, json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"interval": "1h", "timeout": timeout, "values": values,
                 "chart": {"spec": {"chart": "web", "version": version, "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}}})).await;
}

/// Give the `web` HelmRelease values its chart cannot render (not retryable) and wait until
/// the operator rolled it back: its record AwaitingFix with a succeeded rollback step, and
/// Helm's revision 3 (the rollback) deployed. Returns the record.
pub async fn break_and_wait_rolled_back(client: &Client, ns: &str, timeout: Duration) -> Value {
    helm_release(
        client,
        ns,
        "web",
        "0.1.0",
        json!({"suffix": "Not_Valid"}),
        "30s",
    )
    .await;
    let rem = wait_for("rolled back, awaiting the fix", timeout, || async {
        match remediation_for(client, ns, "HelmRelease/web").await {
            Some(r) if r["status"]["phase"] == "AwaitingFix" => Ok(r),
            Some(r) => Err(r["status"].to_string()),
            None => Err("no Remediation yet".into()),
        }
    })
    .await;
    assert!(has_step(&rem, "rollback", "Succeeded"), "{}", rem["status"]);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let rolled = wait_for("revision 3 deployed by the rollback", MIN, || async {
        secrets
            .get("sh.helm.release.v1.web.v3")
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(rolled.metadata.labels.unwrap()["status"], "deployed");
    rem
}

pub async fn chart_repo(env: &Env, client: &Client, ns: &str) -> ChartRepo {
    let charts = ChartRepo::new(env, ns);
    charts.publish(
        env,
        "web",
        "0.1.0",
        &[("cm.yaml", CM_TEMPLATE)],
        "suffix: one\n",
    );
    charts.publish(
        env,
        "web",
        "0.2.0",
        &[
            ("cm.yaml", CM_TEMPLATE),
            ("deploy.yaml", DEPLOYMENT_TEMPLATE),
        ],
        "suffix: one\n",
    );
    apply(client, json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
        "metadata": {"name": "charts", "namespace": ns}, "spec": {"url": charts.url, "interval": "1h"}})).await;
    charts
}

pub async fn wait_stalled(client: &Client, ns: &str, name: &str) -> Value {
    wait_for(
        &format!("HelmRelease {name} Stalled/RetriesExceeded"),
        Duration::from_secs(120),
        || async {
            let o = get(client, ns, "HelmRelease", name)
                .await
                .ok_or("missing")?;
            if condition(&o, "Stalled")
                .is_some_and(|c| c["status"] == "True" && c["reason"] == "RetriesExceeded")
            {
                Ok(o)
            } else {
                Err(format!("{:?}", o["status"]["conditions"]))
            }
        },
    )
    .await
}

/// Make the Deployment look rolled out (no kubelet or deployment controller runs here).
pub async fn mark_deployment_available(client: &Client, ns: &str) {
    let api: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), ns);
    let d = wait_for("Deployment web", MIN, || async {
        api.get("web").await.map_err(|e| e.to_string())
    })
    .await;
    let gen_ = d.metadata.generation.unwrap_or(1);
    let status = json!({"status": {"observedGeneration": gen_, "replicas": 0, "updatedReplicas": 0, "readyReplicas": 0, "availableReplicas": 0,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "ok"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": "ok"}]}});
    api.patch_status("web", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

/// What a deployment controller would do from now on: keep the `web` Deployment (however
/// often a Helm action recreates it: Helm 3's forced upgrade does) rolled out. Stops when
/// the returned handle is dropped.
pub fn keep_deployment_available(client: &Client, ns: &str) -> AbortOnDrop {
    let (client, ns) = (client.clone(), ns.to_string());
    AbortOnDrop(tokio::spawn(async move {
        loop {
            let api: Api<k8s_openapi::api::apps::v1::Deployment> =
                Api::namespaced(client.clone(), &ns);
            if let Ok(Some(d)) = api.get_opt("web").await {
                // Helm 3's readiness check (helm-controller v1.4, Flux 2.7) also wants the
                // Deployment's newest ReplicaSet, owned by it, with its pod template.
                let rss: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
                    Api::namespaced(client.clone(), &ns);
                let uid = d.metadata.uid.clone().unwrap_or_default();
                let rs_name = format!("web-{}", &uid.chars().take(8).collect::<String>());
                if uid.len() >= 8 && !matches!(rss.get_opt(&rs_name).await, Ok(Some(_))) {
                    let spec = d.spec.clone().unwrap_or_default();
                    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "metadata": {"name": rs_name, "namespace": ns,
                                     "labels": spec.template.metadata.as_ref().and_then(|m| m.labels.clone()),
                                     "annotations": {"deployment.kubernetes.io/revision": "1"},
                                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": uid, "controller": true}]},
                        "spec": {"replicas": 0, "selector": spec.selector, "template": spec.template}});
                    if let Ok(rs) =
                        serde_json::from_value::<k8s_openapi::api::apps::v1::ReplicaSet>(rs)
                    {
                        let _ = rss.create(&PostParams::default(), &rs).await;
                    }
                }
                if let Ok(Some(rs)) = rss.get_opt(&rs_name).await
                    && rs.status.as_ref().and_then(|s| s.observed_generation)
                        != rs.metadata.generation
                {
                    let status = json!({"status": {"observedGeneration": rs.metadata.generation, "replicas": 0}});
                    let _ = rss
                        .patch_status(&rs_name, &PatchParams::default(), &Patch::Merge(status))
                        .await;
                }
                let gen_ = d.metadata.generation.unwrap_or(1);
                let done = d.status.as_ref().is_some_and(|s| {
                    s.observed_generation == Some(gen_)
                        && s.conditions.as_ref().is_some_and(|c| {
                            c.iter()
                                .any(|c| c.type_ == "Available" && c.status == "True")
                        })
                });
                if !done {
                    let status = json!({"status": {"observedGeneration": gen_, "replicas": 0, "updatedReplicas": 0, "readyReplicas": 0, "availableReplicas": 0,
                        "conditions": [
                            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "ok"},
                            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": "ok"}]}});
                    let _ = api
                        .patch_status("web", &PatchParams::default(), &Patch::Merge(status))
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }))
}

/// A task aborted when this is dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------- failed release: retry

pub async fn forge_pending(
    client: &Client,
    ns: &str,
    release: &str,
    from: i64,
    to: i64,
    age_s: i64,
    corrupt: bool,
) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let src = secrets
        .get(&format!("sh.helm.release.v1.{release}.v{from}"))
        .await
        .unwrap();
    let data: std::collections::BTreeMap<String, Vec<u8>> = src
        .data
        .unwrap()
        .into_iter()
        .map(|(k, ByteString(v))| (k, v))
        .collect();
    let mut rel =
        fluxmedic::helm::decode_secret(&format!("sh.helm.release.v1.{release}.v{from}"), &data)
            .unwrap()
            .to_value()
            .unwrap();
    rel["version"] = json!(to);
    rel["info"]["status"] = json!("pending-upgrade");
    let payload = if corrupt {
        base64::engine::general_purpose::STANDARD
            .encode(b"\x1f\x8b\x08garbage")
            .into_bytes()
    } else {
        fluxmedic::helm::encode_json(&rel)
    };
    forge_pending_payload(client, ns, release, to, age_s, payload).await;
}

/// A pending-upgrade revision `to` of `release` in `ns`, last written `age_s` ago, holding
/// `payload` as its `data.release`.
pub async fn forge_pending_payload(
    client: &Client,
    ns: &str,
    release: &str,
    to: i64,
    age_s: i64,
    payload: Vec<u8>,
) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let modified = (jiff::Timestamp::now().as_second() - age_s).to_string();
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": format!("sh.helm.release.v1.{release}.v{to}"), "namespace": ns,
        "labels": {"owner": "helm", "name": release, "status": "pending-upgrade", "version": to.to_string(), "modifiedAt": modified}},
        "type": "helm.sh/release.v1"}))
    .unwrap();
    let mut s = s;
    s.data = Some([("release".to_string(), ByteString(payload))].into());
    secrets.create(&PostParams::default(), &s).await.unwrap();
}

/// A release installed, then suspended for maintenance, while a Helm operation that died an
/// hour ago left a pending-upgrade revision 2 (unreadable if `corrupt`). helm-controller cannot
/// unlock it while suspended.
pub async fn suspended_release_with_pending(env: &Env, client: &Client, ns: &str, corrupt: bool) {
    chart_repo(env, client, ns).await;
    helm_release(client, ns, "web", "0.1.0", json!({"suffix": "one"}), "30s").await;
    wait_ready(client, ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    suspend_then_forge_pending(client, ns, "web", corrupt).await;
}

/// The first step's intent a Remediation's create carried (`fluxmedic.io/intent`), if any.
pub fn recorded_intent(r: &Value) -> Option<Value> {
    r["metadata"]["annotations"]["fluxmedic.io/intent"]
        .as_str()
        .map(|v| serde_json::from_str(v).expect("the intent annotation is a JSON step"))
}

/// Suspend a Ready HelmRelease, then leave a pending-upgrade revision 2 that a Helm process
/// left an hour ago. helm-controller may still be inside a reconcile the suspend patch started
/// (it would unlock the release itself): the forgery waits for that to settle, and checks that
/// the release is still Ready afterwards so a lost race fails here, with its reason.
pub async fn suspend_then_forge_pending(client: &Client, ns: &str, name: &str, corrupt: bool) {
    suspend_and_settle(client, ns, name).await;
    forge_pending(client, ns, name, 1, 2, 3600, corrupt).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hr = get(client, ns, "HelmRelease", name).await.unwrap();
    assert!(
        is_ready(&hr),
        "helm-controller acted on the suspended release: {}",
        hr["status"]
    );
}

/// Suspend HelmRelease `name`, and give helm-controller time to have seen it (a reconcile in
/// flight when the suspension lands could otherwise still unlock a release forged after it).
pub async fn suspend_and_settle(client: &Client, ns: &str, name: &str) {
    merge_patch(
        client,
        ns,
        "HelmRelease",
        name,
        json!({"spec": {"suspend": true}}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// `n` Kustomizations `app<i>` in `ns`, each applying `./app<i>` (one ConfigMap) from one
/// public Git repository `repo`, Ready.
pub async fn ready_apps(env: &Env, client: &Client, ns: &str, n: usize) -> Repo {
    let repo = Repo::new(env, ns, false);
    let mut files = vec![];
    for i in 0..n {
        files.push((
            format!("app{i}/kustomization.yaml"),
            "resources:\n- cm.yaml\n".to_string(),
        ));
        files.push((format!("app{i}/cm.yaml"), cm(&format!("cm{i}"), "v1")));
    }
    repo.commit(
        &files
            .iter()
            .map(|(a, b)| (a.as_str(), Some(b.as_str())))
            .collect::<Vec<_>>(),
        "initial",
    );
    git_repository(client, ns, "repo", &repo.url, None).await;
    for i in 0..n {
        kustomization(client, ns, &format!("app{i}"), &format!("./app{i}"), &[]).await;
    }
    for i in 0..n {
        wait_ready(client, ns, "Kustomization", &format!("app{i}"), MIN).await;
    }
    repo
}

/// Break every one of [`ready_apps`]'s Kustomizations with one commit, and wait until each
/// fails its build.
pub async fn break_apps(client: &Client, ns: &str, repo: &Repo, n: usize) {
    let files: Vec<String> = (0..n).map(|i| format!("app{i}/cm.yaml")).collect();
    repo.commit(
        &files
            .iter()
            .map(|f| (f.as_str(), Some(BROKEN_YAML)))
            .collect::<Vec<_>>(),
        "break",
    );
    request_reconcile(client, ns, "GitRepository", "repo").await;
    for i in 0..n {
        wait_failing(
            client,
            ns,
            "Kustomization",
            &format!("app{i}"),
            "BuildFailed",
            MIN,
        )
        .await;
    }
}

/// The first commit of `app`: a kustomization applying one ConfigMap, `cm("greeting", "v1")`.
fn commit_app(repo: &Repo) {
    repo.commit(
        &[
            ("app/kustomization.yaml", Some("resources:\n- cm.yaml\n")),
            ("app/cm.yaml", Some(&cm("greeting", "v1"))),
        ],
        "initial",
    );
}

/// The Git repository `repo` (public) with one Kustomization `app` applying one ConfigMap,
/// `cm("greeting", "v1")`, Ready.
pub async fn ready_app(env: &Env, client: &Client, ns: &str) -> Repo {
    let repo = Repo::new(env, ns, false);
    commit_app(&repo);
    git_repository(client, ns, "repo", &repo.url, None).await;
    kustomization(client, ns, "app", "./app", &[]).await;
    wait_ready(client, ns, "Kustomization", "app", MIN).await;
    repo
}

/// A private Git repository on the fixture server that accepts `bot:first-password`, holding
/// the `app` of [`ready_app`], and the Secret `creds` with those credentials. The caller
/// creates the GitRepository (`secretRef: creds`) and Kustomization with its own intervals.
pub async fn private_app_repo(env: &Env, client: &Client, ns: &str) -> Repo {
    let repo = Repo::new(env, ns, true);
    repo.set_server_credentials(env, "bot", "first-password");
    commit_app(&repo);
    let creds: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "creds", "namespace": ns},
        "stringData": {"username": "bot", "password": "first-password"}}))
    .unwrap();
    Api::namespaced(client.clone(), ns)
        .create(&kube::api::PostParams::default(), &creds)
        .await
        .unwrap();
    repo
}

/// Push broken YAML for `app`, have the source fetch it, and wait for the build to fail.
pub async fn break_app(client: &Client, ns: &str, repo: &Repo, message: &str) {
    repo.commit(&[("app/cm.yaml", Some(BROKEN_YAML))], message);
    request_reconcile(client, ns, "GitRepository", "repo").await;
    wait_failing(client, ns, "Kustomization", "app", "BuildFailed", MIN).await;
}

/// The control plane, a client, the CRDs installed and a fresh namespace.
pub async fn setup(prefix: &str) -> (&'static Env, Client, String) {
    let env = env();
    let client = env.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, prefix).await;
    (env, client, ns)
}

/// Push broken YAML for the root Kustomization `a` (path `base/`), wait for its build to fail,
/// then have each dependent re-check in turn and fail with DependencyNotReady.
pub async fn break_root(client: &Client, ns: &str, repo: &Repo, dependents: &[&str]) {
    repo.commit(&[("base/cm.yaml", Some(BROKEN_YAML))], "break the root");
    request_reconcile(client, ns, "GitRepository", "repo").await;
    wait_failing(client, ns, "Kustomization", "a", "BuildFailed", MIN).await;
    for k in dependents {
        request_reconcile(client, ns, "Kustomization", k).await;
        wait_failing(client, ns, "Kustomization", k, "DependencyNotReady", MIN).await;
    }
}

/// The name the chart gives a release's objects (its `fluxmedic.fullname`): the release's
/// when it contains "fluxmedic", else "<release>-fluxmedic", at most 36 characters.
pub fn chart_fullname(release: &str) -> String {
    let name = match release.contains("fluxmedic") {
        true => release.to_string(),
        false => format!("{release}-fluxmedic"),
    };
    name.chars()
        .take(36)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}
