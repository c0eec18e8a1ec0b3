//! crds/ (and the chart's copy) must be exactly what the Rust types generate.

use std::path::Path;

#[test]
fn crds_directory_matches_the_rust_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let regenerate = std::env::var_os("FLUXMEDIC_UPDATE_CRDS").is_some();
    for dir in ["crds", "charts/fluxmedic/crds"] {
        for (file, yaml) in fluxmedic::api::crd_documents() {
            let path = root.join(dir).join(file);
            if regenerate {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &yaml).unwrap();
            }
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == yaml,
                "{} is stale: run `FLUXMEDIC_UPDATE_CRDS=1 cargo test --test crds` (or `task crds`) and commit it",
                path.display()
            );
        }
    }
}
