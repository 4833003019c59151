//! The crate's module graph stays acyclic: every `crate::` path in `src/**/*.rs` is an edge from
//! the top-level module the file belongs to (a folder module counts as one) to the top-level
//! module the path names, and the graph of those edges must have no cycle. Modules that import
//! each other cannot be read, tested or given a second backend on their own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The source with comments and the contents of string and char literals removed, so that
/// neither a doc comment nor `"crate::x"` in a message counts as a dependency.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#'))
                && !b[..i]
                    .last()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') =>
            {
                // Raw string: r"..." or r#"..."#.
                let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
                if b.get(i + 1 + hashes) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                i += 2 + hashes;
                while i < b.len() && !b[i..].starts_with(&close) {
                    i += 1;
                }
                i += close.len();
                out.push_str("\"\"");
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A char literal ('x', '\n', '"'), not a lifetime ('a).
            b'\'' if b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\') => {
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("' '");
            }
            _ => {
                let c = src[i..].chars().next().unwrap_or(' ');
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// The first segment of every `crate::` path in `code`, including each member of a
/// `crate::{a, b::{c, d}}` group.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue; // `my_crate::`, not `crate::`
        }
        let rest = code[at + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group's top level at commas; each member's first segment is a module.
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.insert(ident(&group[start..i]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(&group[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.remove("");
    out
}

/// Top-level module name → the top-level modules its files name in `crate::` paths.
fn graph_of(files: &[(String, String)]) -> Graph {
    let modules: BTreeSet<&str> = files.iter().map(|(m, _)| m.as_str()).collect();
    let mut graph = Graph::new();
    for (module, src) in files {
        let deps = graph.entry(module.clone()).or_default();
        for dep in crate_paths(&code_only(src)) {
            if dep != *module && modules.contains(dep.as_str()) {
                deps.insert(dep);
            }
        }
    }
    graph
}

/// A cycle, as the modules along it (first = last), if the graph has one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit<'a>(
        node: &'a str,
        graph: &'a Graph,
        done: &mut BTreeSet<&'a str>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node);
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

/// Every `.rs` file under `src/`, labelled with the top-level module it belongs to (`lib.rs`
/// and `main.rs` are the crate roots, not modules).
fn source_files(src: &Path) -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(src, &mut paths);
    paths
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(src).expect("under src");
            let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
            let module = first.trim_end_matches(".rs").to_owned();
            if rel.components().count() == 1 && (module == "lib" || module == "main") {
                return None;
            }
            Some((module, std::fs::read_to_string(&p).expect("read source")))
        })
        .collect()
}

#[test]
fn the_module_graph_has_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph_of(&source_files(&src));
    assert!(
        graph.len() > 20,
        "found only {} modules: is src/ laid out as expected?",
        graph.len()
    );
    // The root of everything: it composes the parts and nothing imports it.
    assert!(
        graph
            .iter()
            .all(|(m, deps)| m == "cli" || !deps.contains("app")),
        "only the CLI may import `app`: {graph:#?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "the crate's modules import each other in a cycle: {}\nfull graph: {graph:#?}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_cycle_check_sees_groups_nesting_and_ignores_comments_and_strings() {
    let files = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(m, s)| (m.to_string(), s.to_string()))
            .collect()
    };
    // A cycle through a nested `use` group and an inline path.
    let cyclic = files(&[
        ("a", "use crate::{x::{y, z}, b::Thing};"),
        ("b", "fn f() { crate::c::go(); }"),
        ("c", "use crate::a;"),
        ("x", ""),
    ]);
    let cycle = find_cycle(&graph_of(&cyclic)).expect("the cycle is found");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    // Mentions in comments, doc comments and strings are not imports; `my_crate::` is not
    // `crate::`; a module naming itself is no edge.
    let acyclic = files(&[
        (
            "a",
            "use crate::b; // crate::c\n/* crate::c */ const S: &str = \"crate::c\";",
        ),
        (
            "b",
            "/// see crate::a\nuse my_crate::a; fn f() { crate::b::g(); let _ = r#\"crate::a\"#; }",
        ),
        ("c", "use crate::{b, x};"),
        ("x", "fn q() { let _ = '\"'; crate::set::go() }"),
    ]);
    let graph = graph_of(&acyclic);
    assert_eq!(find_cycle(&graph), None, "{graph:#?}");
    assert_eq!(graph["a"], BTreeSet::from(["b".to_string()]));
    assert!(graph["b"].is_empty(), "{graph:#?}");
    assert_eq!(graph["c"].len(), 2);
}
