//! The chart's README lists every value of `values.yaml` with its default and the comment
//! above it, generated from that file: a value added, renamed or re-documented without the
//! README following fails here. `FLUXMEDIC_UPDATE_CHART_README=1 cargo test --test
//! chart_readme` rewrites the table.

use std::path::Path;

use serde_yaml_ng::Value;

const BEGIN: &str = "<!-- values:begin (generated from values.yaml by tests/chart_readme.rs) -->";
const END: &str = "<!-- values:end -->";

/// One documented key: its dotted path and the comment lines right above it.
struct Key {
    path: Vec<String>,
    doc: String,
}

/// The keys of a values file, in order, with the comments above each (a blank line ends a
/// comment; list items belong to the key above them).
fn keys(text: &str) -> Vec<Key> {
    let mut stack: Vec<(usize, String)> = vec![];
    let mut pending: Vec<String> = vec![];
    let mut out = vec![];
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.is_empty() {
            pending.clear();
        } else if let Some(c) = trimmed.strip_prefix('#') {
            pending.push(c.trim().to_string());
        } else if trimmed.starts_with("- ") {
            pending.clear();
        } else if let Some((key, _)) = trimmed.split_once(':') {
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            stack.push((indent, key.trim().to_string()));
            out.push(Key {
                path: stack.iter().map(|(_, k)| k.clone()).collect(),
                doc: pending.join(" "),
            });
            pending.clear();
        }
    }
    out
}

fn lookup<'a>(root: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(root, |v, k| v.get(k.as_str()))
}

/// The README's values table.
fn table(values_yaml: &str) -> String {
    let root: Value = serde_yaml_ng::from_str(values_yaml).expect("values.yaml parses");
    let mut out = String::from("| Key | Default | Description |\n| --- | --- | --- |\n");
    for k in keys(values_yaml) {
        let value = lookup(&root, &k.path).expect("every key is in the parsed values");
        let section = value.as_mapping().is_some_and(|m| !m.is_empty());
        if section && k.doc.is_empty() {
            continue;
        }
        let default = match section {
            true => String::new(),
            false => format!("`{}`", serde_json::to_string(value).unwrap()),
        };
        let doc = k.doc.replace('|', "\\|");
        out.push_str(&format!("| `{}` | {default} | {doc} |\n", k.path.join(".")));
    }
    out
}

#[test]
fn the_chart_readme_lists_every_value_as_values_yaml_has_it() {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/fluxmedic");
    let values = std::fs::read_to_string(chart.join("values.yaml")).unwrap();
    let readme_path = chart.join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let (head, rest) = readme
        .split_once(BEGIN)
        .expect("the README has the begin marker");
    let (_, tail) = rest.split_once(END).expect("the README has the end marker");
    let fresh = format!("{head}{BEGIN}\n{}{END}{tail}", table(&values));
    if std::env::var_os("FLUXMEDIC_UPDATE_CHART_README").is_some() {
        std::fs::write(&readme_path, &fresh).unwrap();
    }
    assert!(
        readme == fresh,
        "charts/fluxmedic/README.md is stale: run `FLUXMEDIC_UPDATE_CHART_README=1 cargo test --test chart_readme` and commit it"
    );
}

#[test]
fn keys_carry_their_own_comment_and_nesting() {
    let text = "# top\na: 1\nb:\n  # inner\n  c: [x]\n  d:\n  - e\n\n# lost\n\nf: {}\n";
    let ks = keys(text);
    let got: Vec<(String, &str)> = ks
        .iter()
        .map(|k| (k.path.join("."), k.doc.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a".into(), "top"),
            ("b".into(), ""),
            ("b.c".into(), "inner"),
            ("b.d".into(), ""),
            ("f".into(), ""),
        ]
    );
    let t = table(text);
    assert!(t.contains("| `a` | `1` | top |"), "{t}");
    assert!(t.contains("| `b.c` | `[\"x\"]` | inner |"), "{t}");
    assert!(
        !t.contains("| `b` |"),
        "an undocumented section has no row of its own: {t}"
    );
    assert!(t.contains("| `f` | `{}` |"), "{t}");
}
