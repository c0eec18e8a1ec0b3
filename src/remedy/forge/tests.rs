//! `propose` against the in-memory forge: what it writes, what it never writes, and what a
//! crash or a branch someone else made does to it.

use super::{memory::MemForge, *};

const GOOD: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n";
const BROKEN: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: [oops\n";
const KUSTOMIZE: &str = "resources:\n- cm.yaml\n";

/// A repository whose `main` applied at its first commit and fails at its second, which broke
/// `apps/web/cm.yaml`. Returns the forge and the two revisions in Flux's form.
fn broken_repo() -> (MemForge, String, String) {
    let f = MemForge::default();
    let (applied, failing) = f.with(|s| {
        let applied = s.commit_on(
            "main",
            "add web and db",
            &[
                ("apps/web/cm.yaml", Some(GOOD)),
                ("apps/web/kustomization.yaml", Some(KUSTOMIZE)),
                ("apps/db/cm.yaml", Some(GOOD)),
            ],
        );
        s.commit_on(
            "main",
            "db: tune",
            &[("apps/db/cm.yaml", Some("apiVersion: v1\nkind: ConfigMap\n"))],
        );
        let failing = s.commit_on(
            "main",
            "web: new labels",
            &[("apps/web/cm.yaml", Some(BROKEN))],
        );
        (applied, failing)
    });
    (
        f,
        format!("main@sha1:{applied}"),
        format!("main@sha1:{failing}"),
    )
}

fn ask<'a>(applied: &'a str, failing: &'a str) -> Ask<'a> {
    Ask {
        incident: Incident {
            namespace: "team",
            name: "apps-x7k2p",
            target: "Kustomization team/apps",
            path: "apps/web",
            reason: "BuildFailed",
            message: "kustomize build failed: yaml: line 3: did not find expected ',' or ']'",
        },
        base: "main",
        applied,
        failing,
    }
}

const BRANCH: &str = "fluxmedic/revert-team/apps-x7k2p";

async fn run(f: &MemForge, applied: &str, failing: &str) -> Result<Proposed, ProposeError> {
    propose(f, &ask(applied, failing)).await
}

#[tokio::test]
async fn a_broken_commit_gets_one_revert_pull_request_and_nothing_else() {
    let (f, applied, failing) = broken_repo();
    let main_before = f.with(|s| s.branches["main"].clone());
    let Proposed::Opened { pull, reverted } = run(&f, &applied, &failing).await.unwrap() else {
        panic!("no pull request opened")
    };
    assert_eq!(pull.state, PullState::Open);
    assert_eq!(reverted, [gitfix::commit_of(&failing).unwrap()]);
    f.with(|s| {
        assert_eq!(
            s.writes,
            [
                format!("create_branch {BRANCH}"),
                format!("open_pull {BRANCH}")
            ]
        );
        assert_eq!(
            s.branches["main"], main_before,
            "the branch Flux follows is never written"
        );
        let tip = &s.commits[&s.branches[BRANCH]];
        assert_eq!(tip.parents, std::slice::from_ref(&main_before));
        assert_eq!(tip.tree["apps/web/cm.yaml"], GOOD.as_bytes());
        assert_eq!(
            tip.tree["apps/db/cm.yaml"],
            s.commits[&main_before].tree["apps/db/cm.yaml"]
        );
        assert!(tip.message.contains("Fluxmedic-Incident: team/apps-x7k2p"));
        assert_eq!(s.pulls[0].base, "main");
        assert_eq!(s.pulls[0].title, "Revert \"web: new labels\"");
    });
    // Again (another pass, a restart): found, nothing written.
    assert_eq!(
        run(&f, &applied, &failing).await.unwrap(),
        Proposed::Found(pull)
    );
    assert_eq!(f.with(|s| s.writes.len()), 2);
}

#[tokio::test]
async fn a_crash_between_the_branch_and_the_pull_request_resumes_with_one_of_each() {
    let (f, applied, failing) = broken_repo();
    f.with(|s| {
        s.fail = Some((
            "open_pull",
            ForgeError::Transport("connection reset".into()),
        ))
    });
    let err = run(&f, &applied, &failing).await.unwrap_err();
    assert_eq!(err.step, "opening the pull request");
    assert!(err.source.retryable());
    assert!(matches!(
        run(&f, &applied, &failing).await.unwrap(),
        Proposed::Opened { .. }
    ));
    f.with(|s| {
        assert_eq!(
            s.writes,
            [
                format!("create_branch {BRANCH}"),
                format!("open_pull {BRANCH}")
            ]
        );
        assert_eq!(s.pulls.len(), 1);
    });
}

#[tokio::test]
async fn a_branch_of_that_name_someone_else_wrote_is_never_proposed() {
    let (f, applied, failing) = broken_repo();
    // A tenant (or anyone with push rights) prepares the branch fluxmedic would write, with a
    // commit that claims to be fluxmedic's but changes something else.
    f.with(|s| {
        let main = s.branches["main"].clone();
        s.branches.insert(BRANCH.into(), main);
        s.commit_on(
            BRANCH,
            "Revert\n\nFluxmedic-Incident: team/apps-x7k2p",
            &[("apps/web/cm.yaml", Some("kind: Secret\n"))],
        );
    });
    let err = run(&f, &applied, &failing).await.unwrap_err();
    assert_eq!(err.step, "writing the branch");
    assert!(matches!(err.source, ForgeError::Exists(_)));
    f.with(|s| {
        assert!(
            s.pulls.is_empty(),
            "no pull request from someone else's branch"
        );
        assert!(s.writes.is_empty());
    });
}

#[tokio::test]
async fn a_matching_tip_over_someone_else_s_commit_is_not_adopted() {
    // What fluxmedic writes, learnt on one forge...
    let (a, applied, failing) = broken_repo();
    run(&a, &applied, &failing).await.unwrap();
    let (message, good) = a.with(|s| {
        let tip = &s.commits[&s.branches[BRANCH]];
        (tip.message.clone(), tip.tree["apps/web/cm.yaml"].clone())
    });
    // ...is replayed on another with the same history, on top of a commit of one's own.
    let (f, applied, failing) = broken_repo();
    f.with(|s| {
        let main = s.branches["main"].clone();
        s.branches.insert(BRANCH.into(), main);
        s.commit_on(
            BRANCH,
            "innocent",
            &[("apps/db/cm.yaml", Some("kind: Secret\n"))],
        );
        let good = String::from_utf8(good).unwrap();
        s.commit_on(BRANCH, &message, &[("apps/web/cm.yaml", Some(&good))]);
    });
    let err = run(&f, &applied, &failing).await.unwrap_err();
    assert!(matches!(err.source, ForgeError::Exists(_)), "{err}");
    f.with(|s| assert!(s.pulls.is_empty()));
}

#[tokio::test]
async fn a_pull_request_closed_without_merging_is_left_alone() {
    let (f, applied, failing) = broken_repo();
    let Proposed::Opened { pull, .. } = run(&f, &applied, &failing).await.unwrap() else {
        panic!()
    };
    f.with(|s| s.pulls[0].pull.state = PullState::Closed);
    let again = run(&f, &applied, &failing).await.unwrap();
    assert_eq!(
        again,
        Proposed::Found(Pull {
            state: PullState::Closed,
            ..pull
        })
    );
    assert_eq!(f.with(|s| s.writes.len()), 2);
}

#[tokio::test]
async fn no_proposal_when_the_revert_would_conflict_or_still_fail() {
    // Fixed by hand on the branch since the failure: the revert would undo that work.
    let (f, applied, failing) = broken_repo();
    f.with(|s| {
        s.commit_on(
            "main",
            "web: fix by hand",
            &[("apps/web/cm.yaml", Some(GOOD))],
        )
    });
    assert_eq!(
        run(&f, &applied, &failing).await.unwrap(),
        Proposed::Refused(NoProposal::Conflict("apps/web/cm.yaml".into()))
    );
    // Another file under the path broke after the failure: the revert alone would not pass.
    let (f, applied, failing) = broken_repo();
    f.with(|s| {
        s.commit_on(
            "main",
            "web: extra",
            &[("apps/web/extra.yaml", Some("kind: [\n"))],
        )
    });
    assert!(matches!(
        run(&f, &applied, &failing).await.unwrap(),
        Proposed::Refused(NoProposal::StillFails(m)) if m.starts_with("apps/web/extra.yaml")
    ));
    // The failing commit was force-pushed away.
    let (f, applied, failing) = broken_repo();
    f.with(|s| {
        let first = gitfix::commit_of(&applied).unwrap().to_string();
        s.branches.insert("main".into(), first);
        s.commit_on("main", "rewritten", &[("apps/web/cm.yaml", Some(GOOD))]);
    });
    assert!(matches!(
        run(&f, &applied, &failing).await.unwrap(),
        Proposed::Refused(NoProposal::Rewritten(_))
    ));
    f.with(|s| assert!(s.writes.is_empty()));
}

#[tokio::test]
async fn the_path_is_read_as_kustomize_controller_reads_it() {
    let (f, applied, failing) = broken_repo();
    let mut a = ask(&applied, &failing);
    a.incident.path = "./apps/web/";
    assert!(matches!(
        propose(&f, &a).await.unwrap(),
        Proposed::Opened { .. }
    ));
    let (f, applied, failing) = broken_repo();
    let mut a = ask(&applied, &failing);
    a.incident.path = "apps/../../etc";
    assert_eq!(
        propose(&f, &a).await.unwrap(),
        Proposed::Refused(NoProposal::BadPath("apps/../../etc".into()))
    );
    f.with(|s| assert!(s.writes.is_empty()));
}

#[tokio::test]
async fn a_forge_error_names_its_step_and_writes_nothing() {
    for call in [
        "find_pull",
        "head",
        "between",
        "contains",
        "file",
        "tree",
        "create_branch",
    ] {
        let (f, applied, failing) = broken_repo();
        f.with(|s| {
            s.fail = Some((
                call,
                ForgeError::Status {
                    status: 503,
                    what: call.into(),
                },
            ))
        });
        let err = run(&f, &applied, &failing).await.unwrap_err();
        assert!(err.source.retryable(), "{call}");
        f.with(|s| assert!(s.writes.is_empty() && s.pulls.is_empty(), "{call}"));
    }
    for (e, retry) in [
        (ForgeError::Unauthorized(401), false),
        (
            ForgeError::Status {
                status: 429,
                what: "x".into(),
            },
            true,
        ),
        (
            ForgeError::Status {
                status: 422,
                what: "x".into(),
            },
            false,
        ),
        (ForgeError::TooLarge("x".into()), false),
        (
            ForgeError::Parse {
                what: "x".into(),
                why: "y".into(),
            },
            false,
        ),
    ] {
        assert_eq!(e.retryable(), retry, "{e}");
    }
}

#[tokio::test]
async fn a_fix_landing_another_way_closes_the_open_pull_request_with_a_comment() {
    let (f, applied, failing) = broken_repo();
    let Proposed::Opened { pull, .. } = run(&f, &applied, &failing).await.unwrap() else {
        panic!()
    };
    let closed = withdraw(
        &f,
        "main",
        ("team", "apps-x7k2p"),
        "The Kustomization is Ready again; not needed.",
    )
    .await
    .unwrap();
    assert_eq!(closed.map(|p| p.number), Some(pull.number));
    f.with(|s| {
        assert_eq!(s.pulls[0].pull.state, PullState::Closed);
        assert_eq!(
            s.pulls[0].comments,
            ["The Kustomization is Ready again; not needed."]
        );
    });
    // Closed already, or another incident's: nothing.
    assert_eq!(
        withdraw(&f, "main", ("team", "apps-x7k2p"), "again")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        withdraw(&f, "main", ("team", "other"), "x").await.unwrap(),
        None
    );
    assert_eq!(f.with(|s| s.writes.len()), 3);
}
