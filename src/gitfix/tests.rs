use super::*;
use std::collections::BTreeMap;

fn sha(c: char) -> String {
    c.to_string().repeat(40)
}

fn rev(c: char) -> String {
    format!("main@sha1:{}", sha(c))
}

/// A commit `c` with one parent `p` changing `files`.
fn commit(c: char, p: char, message: &str, files: &[&str]) -> Commit {
    Commit {
        sha: sha(c),
        parents: vec![sha(p)],
        message: message.into(),
        files: files.iter().map(|f| f.to_string()).collect(),
    }
}

fn history(between: Vec<Commit>) -> History {
    History {
        applied: rev('a'),
        failing: rev('c'),
        between,
        failing_in_branch: true,
        applied_before_failing: true,
    }
}

fn files(entries: &[(&str, Option<&str>)]) -> Files {
    entries
        .iter()
        .map(|(p, b)| (p.to_string(), b.map(|b| b.as_bytes().to_vec())))
        .collect()
}

const GOOD: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n";
const BROKEN: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n  labels: [oops\n";

#[test]
fn a_flux_revision_names_a_commit_only_in_flux_s_form() {
    let forty = "0123456789abcdef0123456789abcdef01234567";
    let cases: &[(&str, Option<&str>)] = &[
        (&format!("main@sha1:{forty}"), Some(forty)),
        (&format!("sha1:{forty}"), Some(forty)),
        (&format!("feature@x@sha1:{forty}"), Some(forty)),
        (
            &format!("v1@sha256:{}", "a".repeat(64)),
            Some(&"a".repeat(64)),
        ),
        (&format!("main@sha1:{}", &forty[..39]), None),
        (&format!("main@sha1:{}", forty.to_uppercase()), None),
        (&format!("main@md5:{forty}"), None),
        (&format!("main/{forty}"), None),
        ("main@sha1:../../etc/passwd", None),
        ("", None),
    ];
    for (revision, want) in cases {
        assert_eq!(commit_of(revision), *want, "{revision}");
    }
}

#[test]
fn a_kustomization_path_is_read_as_kustomize_controller_reads_it() {
    for (path, want) in [
        ("./apps/web/", "apps/web"),
        ("apps/web", "apps/web"),
        ("/apps//web", "apps/web"),
        ("./", ""),
        ("", ""),
    ] {
        assert_eq!(normalize_path(path).unwrap(), want, "{path}");
    }
    assert_eq!(
        normalize_path("apps/../../etc"),
        Err(NoProposal::BadPath("apps/../../etc".into()))
    );
    assert!(under("apps/web", "apps/web/a.yaml"));
    assert!(!under("apps/web", "apps/webx/a.yaml"));
    assert!(!under("apps/web", "apps/web"));
    assert!(under("", "anything.yaml"));
}

#[test]
fn the_culprits_are_the_commits_since_the_applied_revision_that_touch_the_path() {
    let h = history(vec![
        commit('c', 'b', "break web", &["apps/web/cm.yaml"]),
        commit('b', 'e', "touch db", &["apps/db/cm.yaml"]),
        commit('e', 'a', "tweak web", &["apps/web/other.yaml"]),
    ]);
    let found = culprits("apps/web", &h).unwrap();
    let shas: Vec<&str> = found.iter().map(|c| c.sha.as_str()).collect();
    assert_eq!(shas, [sha('c'), sha('e')]);
    assert_eq!(
        touched(&found).unwrap(),
        ["apps/web/cm.yaml", "apps/web/other.yaml"]
    );
}

#[test]
fn what_is_never_reverted() {
    let refused = |between: Vec<Commit>| culprits("apps/web", &history(between)).unwrap_err();
    let mut merge = commit('c', 'b', "merge", &["apps/web/cm.yaml"]);
    merge.parents.push(sha('e'));
    assert_eq!(refused(vec![merge]), NoProposal::Merge(sha('c')));
    let own = commit(
        'c',
        'b',
        &format!("Revert \"x\"\n\n{TRAILER}: team/r"),
        &["apps/web/a.yaml"],
    );
    assert_eq!(refused(vec![own]), NoProposal::Own(sha('c')));
    for bad in [
        "apps/web/../../x.yaml",
        "apps/web/.git/config",
        "apps/web//x",
        "apps/web/a\nb",
    ] {
        let odd = commit('c', 'b', "x", &[bad]);
        assert!(
            matches!(refused(vec![odd]), NoProposal::BadFile(_)),
            "{bad:?}"
        );
    }
    let mut unrelated = history(vec![commit('c', 'b', "x", &["apps/web/a.yaml"])]);
    unrelated.applied_before_failing = false;
    assert_eq!(
        culprits("apps/web", &unrelated),
        Err(NoProposal::NotAncestor)
    );
    let wide = commit('c', 'b', "both", &["apps/web/a.yaml", "apps/db/a.yaml"]);
    assert!(
        matches!(refused(vec![wide]), NoProposal::Outside { file, .. } if file == "apps/db/a.yaml")
    );
    assert!(matches!(
        refused(vec![commit('c', 'b', "db", &["apps/db/a.yaml"])]),
        NoProposal::NoCulprit { .. }
    ));
    let many = (0..=MAX_COMMITS)
        .map(|_| commit('c', 'b', "x", &["apps/web/a.yaml"]))
        .collect();
    assert_eq!(refused(many), NoProposal::TooManyCommits("apps/web".into()));
    let mut gone = history(vec![commit('c', 'b', "x", &["apps/web/a.yaml"])]);
    gone.failing_in_branch = false;
    assert_eq!(
        culprits("apps/web", &gone),
        Err(NoProposal::Rewritten(sha('c')))
    );
    let mut odd = gone.clone();
    odd.applied = "main@sha1:HEAD".into();
    assert_eq!(
        culprits("apps/web", &odd),
        Err(NoProposal::NotACommit("main@sha1:HEAD".into()))
    );
    let wide: Vec<String> = (0..=MAX_FILES)
        .map(|i| format!("apps/web/{i}.yaml"))
        .collect();
    let wide = Commit {
        files: wide,
        ..commit('c', 'b', "x", &[])
    };
    assert!(matches!(touched(&[&wide]), Err(NoProposal::TooLarge(_))));
}

#[test]
fn a_revert_restores_each_file_unless_it_changed_after_the_failure() {
    let names = [
        "apps/web/cm.yaml",
        "apps/web/new.yaml",
        "apps/web/gone.yaml",
    ]
    .map(String::from);
    let applied = files(&[
        (&names[0], Some(GOOD)),
        (&names[1], None),
        (&names[2], Some(GOOD)),
    ]);
    let failing = files(&[
        (&names[0], Some(BROKEN)),
        (&names[1], Some(GOOD)),
        (&names[2], None),
    ]);
    let changes = revert(&names, &applied, &failing, &failing, false).unwrap();
    assert_eq!(
        changes,
        [
            Change {
                path: names[0].clone(),
                content: Some(GOOD.into()),
                replaces: Some(blob_id(BROKEN.as_bytes(), false)),
            },
            Change {
                path: names[1].clone(),
                content: None,
                replaces: Some(blob_id(GOOD.as_bytes(), false)),
            },
            Change {
                path: names[2].clone(),
                content: Some(GOOD.into()),
                replaces: None,
            },
        ]
    );
    // Someone fixed it on the branch since: the revert would undo their work.
    let mut head = failing.clone();
    head.insert(names[0].clone(), Some(b"fixed by hand".to_vec()));
    assert_eq!(
        revert(&names, &applied, &failing, &head, false),
        Err(NoProposal::Conflict(names[0].clone()))
    );
    // A file the forge was not asked for is never taken as absent (that would delete it).
    let mut partial = failing.clone();
    partial.remove(&names[1]);
    assert_eq!(
        revert(&names, &applied, &failing, &partial, false),
        Err(NoProposal::Unread(names[1].clone()))
    );
    assert!(matches!(
        revert(&names[..1], &applied, &applied, &applied, false),
        Err(NoProposal::StillFails(_))
    ));
}

fn tree(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    entries
        .iter()
        .map(|(p, b)| (p.to_string(), b.as_bytes().to_vec()))
        .collect()
}

#[test]
fn the_reverted_tree_must_pass_the_check_that_failed() {
    assert_eq!(
        check_manifests(&tree(&[("a/cm.yaml", GOOD), ("a/README.md", "[")])),
        Ok(())
    );
    let kustomize = "resources:\n- cm.yaml\n";
    assert_eq!(
        check_manifests(&tree(&[("a/kustomization.yaml", kustomize)])),
        Ok(())
    );
    let two = format!("{GOOD}---\n---\n{GOOD}");
    assert_eq!(check_manifests(&tree(&[("a/two.yml", &two)])), Ok(()));
    for (body, says) in [
        (BROKEN, "a/x.yaml: "),
        (
            "metadata:\n  name: x\n",
            "a/x.yaml: document 1 names no apiVersion and kind",
        ),
        ("- a\n- b\n", "a/x.yaml: document 1 is not a mapping"),
        (
            "apiVersion: v1\nkind: ''\n",
            "a/x.yaml: document 1 names no apiVersion and kind",
        ),
    ] {
        match check_manifests(&tree(&[("a/x.yaml", body)])) {
            Err(NoProposal::StillFails(m)) => assert!(m.starts_with(says), "{m}"),
            other => panic!("{body:?}: {other:?}"),
        }
    }
    let reverted = reverted_tree(
        tree(&[("a/x.yaml", BROKEN), ("a/new.yaml", GOOD)]),
        &[
            Change {
                path: "a/x.yaml".into(),
                content: Some(GOOD.into()),
                replaces: None,
            },
            Change {
                path: "a/new.yaml".into(),
                content: None,
                replaces: None,
            },
        ],
    );
    assert_eq!(reverted, tree(&[("a/x.yaml", GOOD)]));
}

#[test]
fn hostile_manifests_are_refused_within_bounds() {
    // Aliases expanding a billion times: an error, not a hang or an allocation of gigabytes.
    let mut laughs = String::from(
        "apiVersion: v1\nkind: ConfigMap\na: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (i, prev) in ('b'..='j').zip('a'..='i') {
        laughs.push_str(&format!(
            "{i}: &{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    let started = std::time::Instant::now();
    assert!(matches!(
        check_manifests(&tree(&[("a/x.yaml", &laughs)])),
        Err(NoProposal::StillFails(_))
    ));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // One wide anchor aliased many times: within the parser's own limit, quadratic in memory
    // (a 30 KB file took gigabytes). Refused before it is parsed.
    let wide = format!(
        "apiVersion: v1\nkind: ConfigMap\na: &a [{}]\nb: [{}]\n",
        vec!["x"; 1000].join(","),
        vec!["*a"; 3000].join(",")
    );
    let started = std::time::Instant::now();
    match check_manifests(&tree(&[("a/x.yaml", &wide)])) {
        Err(NoProposal::StillFails(m)) => assert!(m.contains("aliases"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    // Anchors alone, and stars inside scalars, are not aliases.
    let fine = "apiVersion: v1\nkind: ConfigMap\ndata:\n  glob: a*b\n  x: &keep 1\n";
    assert_eq!(check_manifests(&tree(&[("a/x.yaml", fine)])), Ok(()));
    let big = "#".repeat(MAX_FILE_BYTES + 1);
    assert!(matches!(
        check_manifests(&tree(&[("a/x.yaml", &big)])),
        Err(NoProposal::TooLarge(_))
    ));
    let many: BTreeMap<String, Vec<u8>> = (0..=MAX_TREE_FILES)
        .map(|i| (format!("a/{i}.yaml"), GOOD.as_bytes().to_vec()))
        .collect();
    assert!(matches!(
        check_manifests(&many),
        Err(NoProposal::TooLarge(_))
    ));
}

fn incident<'a>(name: &'a str, message: &'a str) -> Incident<'a> {
    Incident {
        namespace: "team",
        name,
        target: "Kustomization team/apps",
        path: "apps/web",
        reason: "BuildFailed",
        message,
    }
}

#[test]
fn a_proposal_names_its_incident_and_the_reverted_commits_in_trailers() {
    let h = history(vec![
        commit('c', 'e', "break web", &["apps/web/cm.yaml"]),
        commit('e', 'a', "tweak web", &["apps/web/cm.yaml"]),
    ]);
    let found = culprits("apps/web", &h).unwrap();
    let change = vec![Change {
        path: "apps/web/cm.yaml".into(),
        content: Some(GOOD.into()),
        replaces: None,
    }];
    let p = propose_text(
        &incident("apps-7f3k2", "kustomize build failed"),
        &h,
        &found,
        change,
    )
    .unwrap();
    assert_eq!(p.branch, "fluxmedic/revert-team/apps-7f3k2");
    assert_eq!(
        p.title,
        "Revert 2 commits that broke Kustomization team/apps"
    );
    assert_eq!(p.reverted, [sha('e'), sha('c')]);
    let trailers: Vec<&str> = p
        .message
        .trim_end()
        .rsplit("\n\n")
        .next()
        .unwrap()
        .lines()
        .collect();
    assert_eq!(
        trailers,
        [
            format!("Reverts: {}", sha('e')),
            format!("Reverts: {}", sha('c')),
            format!("{TRAILER}: team/apps-7f3k2"),
        ]
    );
    assert!(
        p.message
            .contains(&format!("This reverts commit {}.", sha('c')))
    );
    // What fluxmedic itself wrote is never a culprit again.
    let again = history(vec![commit('f', 'c', &p.message, &["apps/web/cm.yaml"])]);
    assert_eq!(culprits("apps/web", &again), Err(NoProposal::Own(sha('f'))));
    let one = history(vec![commit(
        'c',
        'a',
        "break web\n\nlong story",
        &["apps/web/cm.yaml"],
    )]);
    let found = culprits("apps/web", &one).unwrap();
    let p = propose_text(&incident("r", "m"), &one, &found, vec![]).unwrap();
    assert_eq!(p.title, "Revert \"break web\"");
}

#[test]
fn tenant_text_stays_quoted_and_cut() {
    let hostile = "~~~\n![track](http://evil/x.png) @admins\n```\n\u{1b}[31mred";
    let h = history(vec![commit(
        'c',
        'a',
        &format!("{}\u{7}bell", "s".repeat(500)),
        &["apps/web/a.yaml"],
    )]);
    let found = culprits("apps/web", &h).unwrap();
    let p = propose_text(&incident("r", hostile), &h, &found, vec![]).unwrap();
    // Only fluxmedic's own fences open or close a block: three blocks, six fence lines.
    let fences = p
        .body
        .lines()
        .filter(|l| l.trim_start().starts_with("~~~"))
        .count();
    assert_eq!(fences, 6, "{}", p.body);
    assert!(!p.body.contains('\u{1b}') && !p.message.contains('\u{1b}'));
    assert!(!p.title.contains('\u{7}'));
    assert!(p.title.chars().count() <= "Revert \"\"".len() + 100);
    // The commit message keeps the condition on one line: it cannot forge a trailer.
    let forged = incident("r", "x\n\nFluxmedic-Incident: other/victim");
    let p = propose_text(&forged, &h, &found, vec![]).unwrap();
    assert_eq!(p.message.matches(&format!("\n{TRAILER}:")).count(), 1);
    for bad in ["", "Evil", "a/../b", ".hidden", "x.lock", "a..b"] {
        assert_eq!(
            branch_of("team", bad),
            Err(NoProposal::BadName(format!("team/{bad}")))
        );
    }
    // Two namespaces' incidents of one name never share a branch.
    assert_ne!(branch_of("a", "r").unwrap(), branch_of("b", "r").unwrap());
    // Invisible characters that reorder what a reviewer reads are removed.
    let h = history(vec![commit(
        'c',
        'a',
        "fix \u{202E}lmth.exe\u{200B}",
        &["apps/web/a.yaml"],
    )]);
    let found = culprits("apps/web", &h).unwrap();
    let p = propose_text(&incident("r", "m\u{2066}x"), &h, &found, vec![]).unwrap();
    assert_eq!(p.title, "Revert \"fix lmth.exe\"");
    assert!(!p.body.contains('\u{2066}') && !p.message.contains('\u{202E}'));
}

#[test]
fn blob_ids_are_git_s() {
    // `git hash-object` of an empty file and of "hello\n".
    assert_eq!(
        blob_id(b"", false),
        "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    );
    assert_eq!(
        blob_id(b"hello\n", false),
        "ce013625030ba8dba906f756967f9e9ca394464a"
    );
    assert_eq!(blob_id(b"", true).len(), 64);
}
