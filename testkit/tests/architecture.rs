//! `docs/ARCHITECTURE.md` names only what exists: every repository path
//! it puts in backticks is a file or folder of the checkout, and every
//! Rust name it gives (`Type::method`, `f()`, `crate::module::ITEM`) is
//! defined in the crates' sources. A renamed file or function fails here
//! until the page follows.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit is a member of the workspace")
        .to_path_buf()
}

/// The text of every `.rs` file under `dir`.
fn sources(dir: &Path, into: &mut String) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name == "target") {
                continue;
            }
            sources(&path, into);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            into.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            into.push('\n');
        }
    }
}

/// The spans between backticks, outside fenced code blocks.
fn quoted(page: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut fenced = false;
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut parts = line.split('`');
        parts.next();
        while let (Some(span), Some(_)) = (parts.next(), parts.next()) {
            spans.push(span.to_owned());
        }
    }
    spans
}

const TOP: [&str; 9] = [
    "api/",
    "worker/",
    "shared/",
    "chat-system/",
    "bench/",
    "testkit/",
    "scripts/",
    "docs/",
    "deploy/",
];

/// A repository path: starts with a top-level folder of the checkout.
fn is_path(span: &str) -> bool {
    TOP.iter().any(|top| span.starts_with(top)) && !span.contains(' ')
}

/// Whether `path` (a glob's `*` matching any file name) exists.
fn exists(root: &Path, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    match path.rsplit_once("/*") {
        Some((folder, suffix)) => std::fs::read_dir(root.join(folder)).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|entry| entry.file_name().to_string_lossy().ends_with(suffix))
        }),
        None => root.join(path).exists(),
    }
}

fn is_identifier(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && word
            .chars()
            .all(|char| char.is_ascii_alphanumeric() || char == '_')
}

/// The Rust names a span gives: each segment of `a::b::c` or `f()`
/// (arguments and generics left out); nothing for prose, flags, paths.
fn rust_names(span: &str) -> Vec<String> {
    let bare = span.split(['(', '<', ' ', '{']).next().unwrap_or_default();
    let called = span.starts_with(&format!("{bare}("));
    if !(bare.contains("::") || called) {
        return Vec::new();
    }
    let segments: Vec<&str> = bare.split("::").collect();
    if !segments.iter().all(|segment| is_identifier(segment)) {
        return Vec::new();
    }
    segments
        .into_iter()
        .filter(|segment| {
            ![
                "crate", "self", "super", "std", "tokio", "lapin", "redis", "sqlx", "warp",
            ]
            .contains(segment)
        })
        .map(str::to_owned)
        .collect()
}

/// Whether `name` is defined in `code` (or is a crate, or a method of a
/// dependency that `code` calls).
fn defined(name: &str, code: &str) -> bool {
    let crates = ["api", "worker", "shared", "chat_system", "bench", "testkit"];
    if crates.contains(&name) {
        return true;
    }
    [
        "fn ",
        "struct ",
        "enum ",
        "trait ",
        "type ",
        "const ",
        "static ",
        "mod ",
        "macro_rules! ",
    ]
    .iter()
    .any(|keyword| {
        code.match_indices(&format!("{keyword}{name}"))
            .any(|(at, found)| {
                code[at + found.len()..]
                    .chars()
                    .next()
                    .is_none_or(|next| !(next.is_ascii_alphanumeric() || next == '_'))
            })
    }) || is_variant(name, code)
        || code.contains(&format!(".{name}("))
}

/// An enum variant or a field: `Name {`, `Name(`, `Name,` at the start of
/// a line of code.
fn is_variant(name: &str, code: &str) -> bool {
    code.lines().any(|line| {
        let line = line.trim_start();
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with([',', '(', ' ', '{', ':']) || rest.is_empty())
    })
}

#[test]
fn the_architecture_page_names_only_paths_and_symbols_that_exist() {
    let root = root();
    let page = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let mut code = String::new();
    for crate_dir in ["api", "worker", "shared", "chat-system", "bench", "testkit"] {
        sources(&root.join(crate_dir), &mut code);
    }
    let mut missing_paths = BTreeSet::new();
    let mut missing_names = BTreeSet::new();
    let mut checked = 0;
    for span in quoted(&page) {
        if is_path(&span) {
            checked += 1;
            if !exists(&root, &span) {
                missing_paths.insert(span);
            }
            continue;
        }
        for name in rust_names(&span) {
            checked += 1;
            if !defined(&name, &code) {
                missing_names.insert(format!("{name} (in `{span}`)"));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} names checked: is the page read?"
    );
    assert!(
        missing_paths.is_empty() && missing_names.is_empty(),
        "docs/ARCHITECTURE.md names what does not exist:\npaths: {missing_paths:#?}\nsymbols: {missing_names:#?}"
    );
}

#[test]
fn the_checker_catches_a_missing_path_and_a_missing_symbol() {
    let code = "pub fn draw() {}\nenum Outcome {\n    Stored,\n}\n";
    assert!(defined("draw", code));
    assert!(defined("Stored", code));
    assert!(!defined("dra", code));
    assert!(!defined("redraw", code));
    assert_eq!(rust_names("Numbers::draw()"), ["Numbers", "draw"]);
    assert!(rust_names("REDIS_URL").is_empty());
    assert!(rust_names("WITH (FORCE)").is_empty());
    assert!(rust_names("{p}.jobs").is_empty());
    assert!(is_path("api/src/numbers.rs") && !is_path("POST /records"));
    assert!(exists(&root(), "api/src/numbers.rs"));
    assert!(exists(&root(), "bench/src/*.rs"));
    assert!(!exists(&root(), "api/src/chat_system.rs"));
}

/// The modules of the crate whose sources are under `src`: module path
/// (`""` for the crate root, `routes::records`) → its code.
fn modules(src: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|extension| extension != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut segments: Vec<String> = relative
                .iter()
                .map(|segment| segment.to_string_lossy().into_owned())
                .collect();
            if matches!(
                segments.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                segments.pop();
            }
            found.push((segments.join("::"), std::fs::read_to_string(&path).unwrap()));
        }
    }
    found
}

/// The modules `code` (module `from`) uses, among `known`: paths through
/// `crate::`, `super::`, and its own child modules, resolved to the
/// longest known module.
fn imports(from: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let parent = from.rsplit_once("::").map_or("", |(parent, _)| parent);
    let join = |base: &str, rest: &str| {
        if base.is_empty() {
            rest.to_owned()
        } else {
            format!("{base}::{rest}")
        }
    };
    let mut used = BTreeSet::new();
    let code: String = code
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for (at, _) in code.match_indices("::") {
        // The path this `::` is part of, from its first segment.
        let start = code[..at]
            .rfind(|char: char| !(char.is_ascii_alphanumeric() || char == '_' || char == ':'))
            .map_or(0, |before| before + 1);
        if start != 0 && code[..start].ends_with("::") {
            continue;
        }
        let end = code[at..]
            .find(|char: char| !(char.is_ascii_alphanumeric() || char == '_' || char == ':'))
            .map_or(code.len(), |after| at + after);
        let path = &code[start..end];
        if !code[start..].starts_with(path) || path.split("::").next() != Some(&code[start..at]) {
            continue;
        }
        let absolute = if let Some(rest) = path.strip_prefix("crate::") {
            rest.to_owned()
        } else if let Some(rest) = path.strip_prefix("super::") {
            join(parent, rest)
        } else if known.contains(&join(from, path.split("::").next().unwrap_or_default())) {
            join(from, path)
        } else {
            continue;
        };
        let mut segments: Vec<&str> = absolute.split("::").collect();
        while !segments.is_empty() {
            let candidate = segments.join("::");
            if known.contains(&candidate) {
                if candidate != from {
                    used.insert(candidate);
                }
                break;
            }
            segments.pop();
        }
    }
    used
}

/// A circle of imports among `graph`'s modules, if there is one.
fn circle(graph: &[(String, BTreeSet<String>)]) -> Option<Vec<String>> {
    fn visit(
        module: &str,
        graph: &[(String, BTreeSet<String>)],
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|seen| seen == module) {
            let mut found = path[at..].to_vec();
            found.push(module.to_owned());
            return Some(found);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        let edges = graph
            .iter()
            .find(|(name, _)| name == module)
            .map(|(_, edges)| edges.clone())
            .unwrap_or_default();
        for next in &edges {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .iter()
        .find_map(|(module, _)| visit(module, graph, &mut Vec::new(), &mut done))
}

fn graph_of(modules: &[(String, String)]) -> Vec<(String, BTreeSet<String>)> {
    let known: BTreeSet<String> = modules.iter().map(|(name, _)| name.clone()).collect();
    modules
        .iter()
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, code)| {
            let mut used = imports(name, code, &known);
            used.remove("");
            (name.clone(), used)
        })
        .collect()
}

#[test]
fn no_module_of_a_crate_imports_one_that_imports_it_back() {
    let root = root();
    for crate_dir in ["api", "worker", "shared", "chat-system", "bench", "testkit"] {
        let modules = modules(&root.join(crate_dir).join("src"));
        assert!(modules.len() > 3, "{crate_dir}: its modules were not read");
        let graph = graph_of(&modules);
        assert!(
            graph.iter().any(|(_, edges)| !edges.is_empty()),
            "{crate_dir}: no import was read"
        );
        if let Some(found) = circle(&graph) {
            panic!("{crate_dir}: an import circle: {}", found.join(" -> "));
        }
    }
}

#[test]
fn the_circle_check_finds_a_child_importing_its_parent_and_a_three_step_circle() {
    let modules = |files: &[(&str, &str)]| -> Vec<(String, String)> {
        files
            .iter()
            .map(|(name, code)| (name.to_string(), code.to_string()))
            .collect()
    };
    let child_and_parent = modules(&[
        ("", "mod routes;"),
        ("routes", "mod records;\nfn f() { records::store(); }"),
        ("routes::records", "use super::answer;"),
    ]);
    assert_eq!(
        circle(&graph_of(&child_and_parent)),
        Some(vec![
            "routes".into(),
            "routes::records".into(),
            "routes".into()
        ])
    );
    let three = modules(&[
        ("", ""),
        ("a", "use crate::b::X;"),
        ("b", "fn f() { crate::c::g() }"),
        ("c", "use crate::a::{self, Y};"),
    ]);
    assert!(circle(&graph_of(&three)).is_some());
    let acyclic = modules(&[
        ("", ""),
        ("a", "use crate::b::X; // crate::c::g"),
        ("b", "use crate::c;"),
        ("c", "use shared::a::Y;"),
    ]);
    assert_eq!(circle(&graph_of(&acyclic)), None);
}
