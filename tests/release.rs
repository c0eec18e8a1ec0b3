//! The release recipe (.github/workflows/release.yaml): it cannot publish from here, so what
//! is checked is that GitHub would run it (actionlint, built from its Go module) and that it
//! builds what the Dockerfile describes for both architectures, pushes the chart as an OCI
//! artifact, and signs and attests what it pushes.

mod support;

const WORKFLOW: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/.github/workflows/release.yaml"
);

#[test]
fn the_release_workflow_is_valid_and_builds_signs_and_attests_both_artifacts() {
    let env = support::env();
    let out = env
        .tool("actionlint")
        .arg("-no-color")
        .arg(WORKFLOW)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "actionlint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(WORKFLOW).unwrap();
    for want in [
        "platforms: linux/amd64,linux/arm64",
        "cosign sign --yes \"$IMAGE@$DIGEST\"",
        "cosign attest --yes --type spdxjson",
        "helm push \"fluxmedic-$VERSION.tgz\" \"$CHARTS\"",
        "cosign sign --yes \"${CHARTS#oci://}/fluxmedic@$digest\"",
        "id-token: write",
    ] {
        assert!(text.contains(want), "the workflow lacks {want}");
    }
    // The build arguments it passes are the ones the Dockerfile's final stage declares.
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    for arg in ["VERSION", "REVISION"] {
        assert!(text.contains(&format!("{arg}=")), "{arg} passed");
        assert!(dockerfile.contains(&format!("ARG {arg}")), "{arg} declared");
    }
    // A workflow with a mistake is refused: the check is not a formality.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        text.replace("runs-on: ubuntu-24.04", "runs-onn: ubuntu-24.04"),
    )
    .unwrap();
    let out = env
        .tool("actionlint")
        .arg("-no-color")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "actionlint accepted a broken workflow"
    );
}
