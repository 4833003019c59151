//! The JSON Schemas in `schemas/` and the Rust types in `ssf_hub::set` must agree on every
//! example payload in `schemas/examples/` (valid-* accepted by both, invalid-* refused by both).

use std::path::{Path, PathBuf};

use serde_json::Value;
use ssf_hub::schema::Schemas;
use ssf_hub::set::{Event, EventKind, Subject};

fn examples() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "json") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples"),
        &mut out,
    );
    out.sort();
    out
}

#[test]
fn schemas_and_rust_types_agree_on_every_example() {
    let schemas = Schemas::compile().expect("schemas compile");
    let all = examples();
    let (mut valid, mut invalid) = (0, 0);
    let mut disagreements = Vec::new();
    for path in &all {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let expect_valid = name.starts_with("valid-");
        assert!(
            expect_valid || name.starts_with("invalid-"),
            "{}",
            path.display()
        );
        let value: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("read"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let dir = path.parent().expect("parent");
        let (schema_ok, rust_ok) = if dir.ends_with("subject") {
            (
                schemas.check_subject(&value).is_ok(),
                Subject::parse(&value).is_ok(),
            )
        } else {
            let family = dir
                .parent()
                .and_then(Path::file_name)
                .expect("family")
                .to_string_lossy();
            let suffix = dir.file_name().expect("suffix").to_string_lossy();
            let kind = EventKind::parse_name(&format!("{family}/{suffix}"))
                .unwrap_or_else(|| panic!("no event kind for {}", dir.display()));
            (
                schemas.check_event(kind, &value).is_ok(),
                Event::decode(kind, &value).is_ok(),
            )
        };
        if schema_ok != expect_valid || rust_ok != expect_valid {
            disagreements.push(format!(
                "{}: schema {}, rust {}",
                path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
                    .unwrap_or(path)
                    .display(),
                if schema_ok { "accepts" } else { "refuses" },
                if rust_ok { "accepts" } else { "refuses" },
            ));
        }
        if expect_valid {
            valid += 1
        } else {
            invalid += 1
        }
    }
    assert!(
        disagreements.is_empty(),
        "disagreements:\n{}",
        disagreements.join("\n")
    );
    assert!(
        valid >= 24 && invalid >= 24,
        "too few examples: {valid} valid, {invalid} invalid"
    );
}

#[test]
fn every_event_kind_has_a_schema_and_a_valid_example() {
    for kind in EventKind::ALL {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas/examples")
            .join(kind.family())
            .join(kind.suffix());
        let has_valid = std::fs::read_dir(&dir)
            .unwrap_or_else(|_| panic!("no examples for {kind}"))
            .any(|e| {
                e.expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .starts_with("valid-")
            });
        assert!(has_valid, "no valid example for {kind}");
        assert!(ssf_hub::schema::FILES
            .iter()
            .any(|(p, _)| *p == kind.schema_path()));
    }
}
