//! The layers of docs/architecture.md, checked from the code: every `crate::<module>` a
//! top-level module's product code names must be of a lower layer. Test code (`tests.rs`
//! files, `tests/` directories, and a trailing `#[cfg(test)] mod tests { .. }`) may reach
//! anywhere; so may the test tooling (`testkit`, `fuzz`) and the composition root (`app`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module and its layer (lower layers may be imported by higher ones only).
const LAYERS: &[(&str, u8)] = &[
    ("identity", 0),
    ("drain", 0),
    ("sys", 0),
    ("tasks", 0),
    ("workers", 0),
    ("config", 1),
    ("cli", 1),
    ("state", 2),
    ("tls", 2),
    ("sockets", 2),
    ("authz", 3),
    ("ops", 4),
    ("control", 5),
    ("dns", 5),
    ("dataplane", 6),
    ("controlplane", 6),
    ("app", 9),
    ("testkit", 10),
    ("fuzz", 10),
];

/// Modules whose every import is allowed.
const ROOTS: &[&str] = &["app", "testkit", "fuzz"];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Product code of a file: everything before a trailing `#[cfg(test)] mod tests {`.
fn product_code(text: &str) -> &str {
    let mut at = 0;
    while let Some(i) = text[at..].find("#[cfg(test)]") {
        let start = at + i;
        let rest = text[start + "#[cfg(test)]".len()..].trim_start();
        let rest = rest.strip_prefix("pub(crate) ").unwrap_or(rest);
        if rest.starts_with("mod tests {") {
            return &text[..start];
        }
        at = start + 1;
    }
    text
}

/// The top-level modules named as `crate::<name>` in `code`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let tail = &rest[i + "crate::".len()..];
        let name: String = tail
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        // `super::crate::`-like suffixes of other paths (e.g. `foo_crate::`) are not ours.
        let before = rest[..i].chars().last();
        if !name.is_empty() && !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            out.push(name);
        }
        rest = tail;
    }
    out
}

#[test]
fn every_import_points_down_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut checked = 0;
    let mut upward: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let rel_s = rel.to_string_lossy().replace('\\', "/");
        let top = rel_s
            .split('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_string();
        if matches!(top.as_str(), "main" | "lib" | "bin") || ROOTS.contains(&top.as_str()) {
            continue;
        }
        if rel_s.ends_with("/tests.rs") || rel_s.contains("/tests/") {
            continue;
        }
        let from = layer(&top).unwrap_or_else(|| {
            panic!("top-level module `{top}` has no layer in LAYERS (and docs/architecture.md)")
        });
        let text = std::fs::read_to_string(file).expect("readable file");
        checked += 1;
        for dep in crate_paths(product_code(&text)) {
            if dep == top {
                continue;
            }
            let Some(to) = layer(&dep) else {
                continue; // a crate-root item (VERSION), not a module
            };
            if to >= from {
                upward
                    .entry((top.clone(), dep))
                    .or_default()
                    .push(rel_s.clone());
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} files checked: is the walk broken?"
    );
    let report: Vec<String> = upward
        .iter()
        .map(|((from, to), files)| {
            let mut files = files.clone();
            files.dedup();
            format!("{from} -> {to}: {}", files.join(", "))
        })
        .collect();
    assert!(
        report.is_empty(),
        "imports that do not point down a layer (docs/architecture.md):\n{}",
        report.join("\n")
    );
}

/// Module internals that code outside their owner must not name: the owner's public face
/// (its re-exports) is the way in. `(path, owner directory)`.
const INTERNALS: &[(&str, &str)] = &[
    // The CA client's issuing, store and dump internals: what a CA shares lives in `tls::ca`.
    ("control::ca::local", "control/"),
    ("control::ca::snapshot", "control/"),
    ("control::ca::store", "control/"),
    ("control::ca::client", "control/"),
    // A pod's DNS proxy is started beside its listeners by the composition root; the data
    // plane knows only the hostname resolver (`dns::ResolveHost`).
    ("dns::start", "app"),
    ("dns::PodDns", "app"),
    ("dns::metrics", "app"),
];

/// The internals of [`INTERNALS`] `code` names as `crate::<path>`.
fn reach_ins(code: &str) -> Vec<&'static str> {
    INTERNALS
        .iter()
        .filter(|(path, _)| {
            code.match_indices(&format!("crate::{path}")).any(|(i, m)| {
                let next = code[i + m.len()..].chars().next();
                !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
            })
        })
        .map(|(path, _)| *path)
        .collect()
}

#[test]
fn no_module_reaches_into_another_ones_internals() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let rel_s = rel.to_string_lossy().replace('\\', "/");
        if rel_s.ends_with("/tests.rs") || rel_s.contains("/tests/") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("readable file");
        for path in reach_ins(product_code(&text)) {
            let owner = INTERNALS.iter().find(|(p, _)| *p == path).map(|(_, o)| *o);
            if !owner.is_some_and(|o| rel_s.starts_with(o)) {
                found.push(format!("{rel_s} names crate::{path}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "reach-ins into another module's internals (docs/architecture.md):\n{}",
        found.join("\n")
    );
}

/// The module path of a source file (`dataplane/proxy.rs` → `[dataplane, proxy]`).
fn module_of(rel: &str) -> Vec<String> {
    let path = rel.trim_end_matches(".rs");
    let path = path.strip_suffix("/mod").unwrap_or(path);
    path.split('/').map(String::from).collect()
}

/// Code without its comment lines (doc links name modules without depending on them).
fn without_comments(code: &str) -> String {
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths `code`, in module `module`, names through `super::` and `crate::`,
/// absolute; a `{a, b::c}` group yields one path per item.
fn named_paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (kw, base) in [
        ("super::", module[..module.len().saturating_sub(1)].to_vec()),
        ("crate::", Vec::new()),
    ] {
        for (i, _) in code.match_indices(kw) {
            if code[..i]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            {
                continue; // part of a longer path (`super::super::`, `my_crate::`)
            }
            let mut base = base.clone();
            let mut rest = &code[i + kw.len()..];
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            let mut path = base.clone();
            loop {
                if let Some(group) = rest.strip_prefix('{') {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    for item in group.split(',') {
                        let mut p = path.clone();
                        p.extend(item.trim().split("::").map(ident).filter(|s| !s.is_empty()));
                        out.push(p);
                    }
                    break;
                }
                let name = ident(rest);
                if name.is_empty() {
                    out.push(path);
                    break;
                }
                rest = &rest[name.len()..];
                path.push(name);
                match rest.strip_prefix("::") {
                    Some(r) => rest = r,
                    None => {
                        out.push(path);
                        break;
                    }
                }
            }
        }
    }
    out
}

/// Modules of the same parent that import each other, directly or around a circle.
#[test]
fn no_file_imports_form_a_circle_within_a_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut code = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let rel_s = rel.to_string_lossy().replace('\\', "/");
        let top = rel_s
            .split('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".rs");
        if matches!(top, "main" | "lib" | "bin") || ROOTS.contains(&top) {
            continue;
        }
        if rel_s.ends_with("/tests.rs") || rel_s.contains("/tests/") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("readable file");
        code.insert(module_of(&rel_s), without_comments(product_code(&text)));
    }
    // Edges between siblings: a module naming anything inside a sibling depends on it.
    let mut edges: BTreeMap<Vec<String>, std::collections::BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in &code {
        let depth = module.len();
        for path in named_paths(text, module) {
            let Some(target) = (1..=path.len())
                .rev()
                .map(|k| path[..k].to_vec())
                .find(|p| code.contains_key(p))
            else {
                continue;
            };
            if target.len() >= depth
                && target[..depth - 1] == module[..depth - 1]
                && target[..depth] != module[..]
            {
                edges
                    .entry(module.clone())
                    .or_default()
                    .insert(target[..depth].to_vec());
            }
        }
    }
    // A circle: a module that reaches itself.
    let mut circles = Vec::new();
    for start in edges.keys() {
        let mut seen = std::collections::BTreeSet::new();
        let mut stack: Vec<Vec<Vec<String>>> = vec![vec![start.clone()]];
        while let Some(trail) = stack.pop() {
            let last = trail.last().expect("non-empty trail");
            for next in edges.get(last).into_iter().flatten() {
                if next == start {
                    let names: Vec<String> = trail.iter().map(|m| m.join("/")).collect();
                    circles.push(format!("{} -> {}", names.join(" -> "), start.join("/")));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push(t);
                }
            }
        }
    }
    assert!(
        code.len() > 50,
        "only {} files checked: is the walk broken?",
        code.len()
    );
    assert!(
        circles.is_empty(),
        "files that import each other (move the shared type down a file):\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_checker_sees_an_upward_import() {
    let code = "use crate::dataplane::Proxy;\nfn f() { crate::state::new(); }\n\
                #[cfg(test)]\nmod tests {\n use crate::testkit::lab;\n}\n";
    assert_eq!(crate_paths(product_code(code)), ["dataplane", "state"]);
    assert!(layer("dataplane") >= layer("ops"));
    assert!(crate_paths("my_crate::x").is_empty());
    assert_eq!(
        reach_ins("use crate::control::ca::local::backdate;\nuse crate::control::ca::LocalCa;"),
        ["control::ca::local"]
    );
    assert!(reach_ins("use crate::control::ca::local_thing;").is_empty());
    let here = ["dataplane".to_string(), "inbound".to_string()];
    let paths = named_paths(
        "use super::{route, tcp::canonical};\nfn f() { super::super::tls::x(); crate::a::b(); }",
        &here,
    );
    let paths: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        paths,
        [
            "dataplane::route",
            "dataplane::tcp::canonical",
            "tls::x",
            "a::b"
        ]
    );
}
