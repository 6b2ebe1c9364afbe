//! The architecture test: the gateway's modules depend on each other one way, as
//! `docs/architecture.md` documents it. The layering is read from that page (between its
//! `layers:begin` and `layers:end` markers), so the page and the test cannot drift apart:
//! every top-level module sits in exactly one layer, and a module may refer (`crate::...`,
//! or `super::` up to the crate root) only to modules of layers below its own. Modules of one
//! layer do not refer to each other, so there is no cycle either; the test checks that too,
//! independently of the layering.
//!
//! Test code (`#[cfg(test)]` modules) is left out: tests may build their inputs from any
//! layer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A reference from one top-level module to another: (from, to) -> the files that make it.
type Edges = BTreeMap<(String, String), BTreeSet<String>>;

/// The layers of `doc`, top first: each line of the fenced block between the markers names
/// the modules of one layer.
fn layers_of(doc: &str) -> Result<Vec<Vec<String>>, String> {
    let start = doc
        .find("<!-- layers:begin -->")
        .ok_or("no <!-- layers:begin --> marker")?;
    let end = doc[start..]
        .find("<!-- layers:end -->")
        .ok_or("no <!-- layers:end --> marker")?;
    let block = &doc[start..start + end];
    let layers: Vec<Vec<String>> = block
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("```") && !l.starts_with('#'))
        .map(|l| {
            l.split('#')
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
        .filter(|l: &Vec<String>| !l.is_empty())
        .collect();
    if layers.is_empty() {
        return Err("the layers block is empty".into());
    }
    Ok(layers)
}

/// The top-level modules `lib.rs` declares.
fn declared_modules(lib: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut test_only = false;
    for line in lib.lines().map(str::trim) {
        if line == "#[cfg(test)]" {
            test_only = true;
            continue;
        }
        let decl = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("pub(crate) mod "))
            .or_else(|| line.strip_prefix("mod "));
        if let Some(name) = decl.and_then(|d| d.strip_suffix(';')) {
            if !test_only {
                out.insert(name.to_string());
            }
        }
        test_only = false;
    }
    out
}

/// The identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The items of a `{...}` group (the text after its `{`), split at its top-level commas.
fn top_level_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut level, mut start) = (0usize, 0usize);
    for (k, c) in group.char_indices() {
        match c {
            '{' => level += 1,
            '}' if level == 0 => {
                items.push(group[start..k].trim());
                return items;
            }
            '}' => level -= 1,
            ',' if level == 0 => {
                items.push(group[start..k].trim());
                start = k + 1;
            }
            _ => {}
        }
    }
    items.push(group[start..].trim());
    items
}

/// The module names a path starting at `s` names: `x::...` gives `x`, `{x, y::z}` gives `x`
/// and `y`.
fn names_at(s: &str, out: &mut BTreeSet<String>) {
    match s.strip_prefix('{') {
        Some(group) => {
            for item in top_level_items(group) {
                let name = ident(item);
                if !name.is_empty() {
                    out.insert(name.to_string());
                }
            }
        }
        None => {
            let name = ident(s);
            if !name.is_empty() {
                out.insert(name.to_string());
            }
        }
    }
}

/// The top-level modules `code` refers to: `crate::x`, `crate::{x, y::z}`, and `super::`
/// chains that climb from `depth` (1 for a top-level module's own file) to the crate root.
fn references(code: &str, depth: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        let after = &rest[i + "crate::".len()..];
        rest = after;
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `my_crate::`, not `crate::`
        }
        names_at(after, &mut out);
    }
    let mut rest = code;
    while let Some(i) = rest.find("super::") {
        let before = rest[..i].chars().next_back();
        let mut tail = &rest[i..];
        rest = &rest[i + "super::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue; // the middle of a chain counted from its start
        }
        let mut climbs = 0;
        while let Some(t) = tail.strip_prefix("super::") {
            climbs += 1;
            tail = t;
        }
        if climbs >= depth {
            names_at(tail, &mut out);
        } else if let Some(group) = tail.strip_prefix('{') {
            // `super::{super::x, y}`: the climbs inside the group count too.
            for item in top_level_items(group) {
                let mut climbs_in = climbs;
                let mut t = item;
                while let Some(rest) = t.strip_prefix("super::") {
                    climbs_in += 1;
                    t = rest;
                }
                if climbs_in >= depth {
                    names_at(t, &mut out);
                }
            }
        }
    }
    out
}

/// `src` without what does not count: line comments (docs included) and, from an inline
/// `#[cfg(test)] mod tests` on, the rest of the file (test modules come last).
fn code_of(src: &str) -> String {
    let mut out = String::new();
    let mut lines = src.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t == "#[cfg(test)]"
            && lines.peek().is_some_and(|n| {
                let n = n.trim();
                n.starts_with("mod tests") && n.ends_with('{')
            })
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Files declared as `#[cfg(test)] mod name;` by `src` (the file at `path` under `root`).
fn test_only_children(root: &Path, path: &Path, src: &str) -> Vec<PathBuf> {
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    let dir = if file == "mod.rs" || file == "lib.rs" {
        path.parent().unwrap_or(root).to_path_buf()
    } else {
        path.with_extension("")
    };
    let mut out = Vec::new();
    let mut lines = src.lines().map(str::trim).peekable();
    while let Some(line) = lines.next() {
        if line != "#[cfg(test)]" {
            continue;
        }
        let Some(next) = lines.peek() else { break };
        let decl = next
            .strip_prefix("pub(crate) mod ")
            .or_else(|| next.strip_prefix("mod "))
            .and_then(|d| d.strip_suffix(';'));
        if let Some(name) = decl {
            out.push(dir.join(format!("{name}.rs")));
            out.push(dir.join(name).join("mod.rs"));
        }
    }
    out
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The references between top-level modules of the crate under `root` (its `src`).
fn edges_of(root: &Path) -> Edges {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files.sort();
    let sources: Vec<(PathBuf, String)> = files
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(&p).ok().map(|s| (p, s)))
        .collect();
    let test_only: BTreeSet<PathBuf> = sources
        .iter()
        .flat_map(|(p, s)| test_only_children(root, p, s))
        .collect();
    let mut edges = Edges::new();
    for (path, src) in &sources {
        let rel = path.strip_prefix(root).unwrap_or(path);
        let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
        let Some(first) = parts.first() else { continue };
        let top = first.trim_end_matches(".rs").to_string();
        if matches!(top.as_str(), "lib" | "main" | "architecture") || test_only.contains(path) {
            continue;
        }
        // Module depth of the file: `a.rs` and `a/mod.rs` are 1, `a/b.rs` 2, ...
        let depth = parts.len() - usize::from(parts.last() == Some(&"mod.rs"));
        for to in references(&code_of(src), depth) {
            if to != top {
                edges
                    .entry((top.clone(), to))
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    edges
}

/// Each reference that goes sideways or up in `layers`, or names a module no layer holds.
fn violations(layers: &[Vec<String>], edges: &Edges) -> Vec<String> {
    let layer_of: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (m.as_str(), i)))
        .collect();
    let mut out = Vec::new();
    for ((from, to), files) in edges {
        let (Some(&f), Some(&t)) = (layer_of.get(from.as_str()), layer_of.get(to.as_str())) else {
            out.push(format!(
                "{from} -> {to}: not both in the layers of docs/architecture.md ({files:?})"
            ));
            continue;
        };
        if t <= f {
            let how = if t == f {
                "its own layer"
            } else {
                "a layer above"
            };
            out.push(format!("{from} -> {to}: {to} is in {how} ({files:?})"));
        }
    }
    out
}

/// A cycle among the modules of `edges`, if there is one.
fn cycle(edges: &Edges) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    fn visit<'a>(
        n: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut c: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            c.push(n.to_string());
            return Some(c);
        }
        if !done.insert(n) {
            return None;
        }
        path.push(n);
        for m in next.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for n in next.keys() {
        if let Some(c) = visit(n, &next, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    fn layers() -> Vec<Vec<String>> {
        let doc = manifest().join("../docs/architecture.md");
        let text =
            std::fs::read_to_string(&doc).unwrap_or_else(|e| panic!("{}: {e}", doc.display()));
        layers_of(&text).unwrap_or_else(|e| panic!("{}: {e}", doc.display()))
    }

    #[test]
    fn every_module_is_in_exactly_one_layer() {
        let lib = std::fs::read_to_string(manifest().join("src/lib.rs")).unwrap();
        let declared = declared_modules(&lib);
        let layers = layers();
        let placed: Vec<&String> = layers.iter().flatten().collect();
        let unique: BTreeSet<String> = placed.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            placed.len(),
            unique.len(),
            "a module is in two layers: {layers:?}"
        );
        assert_eq!(
            unique, declared,
            "docs/architecture.md's layers and lib.rs's modules differ"
        );
    }

    #[test]
    fn modules_refer_only_to_layers_below_their_own_and_form_no_cycle() {
        let edges = edges_of(&manifest().join("src"));
        assert!(
            edges.len() > 20,
            "the scan found almost no references ({}); is it reading the sources?",
            edges.len()
        );
        let bad = violations(&layers(), &edges);
        assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
        assert_eq!(cycle(&edges), None);
    }

    #[test]
    fn the_checks_catch_an_upward_reference_and_a_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path();
        std::fs::create_dir_all(src.join("low")).unwrap();
        std::fs::write(src.join("top.rs"), "use crate::low::X;\n").unwrap();
        std::fs::write(
            src.join("low/mod.rs"),
            "//! Mentions crate::top in a doc comment only.\nmod inner;\n#[cfg(test)]\nmod helpers;\n",
        )
        .unwrap();
        // An upward reference hidden in a grouped import, from a nested file.
        std::fs::write(src.join("low/inner.rs"), "use crate::{top::Y, low::Z};\n").unwrap();
        std::fs::write(src.join("low/helpers.rs"), "use crate::top::T;\n").unwrap();
        let edges = edges_of(src);
        let keys: Vec<(String, String)> = edges.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                ("low".to_string(), "top".to_string()),
                ("top".to_string(), "low".to_string())
            ],
            "test-only files and comments are not references; the rest are"
        );
        let layers = vec![vec!["top".to_string()], vec!["low".to_string()]];
        let bad = violations(&layers, &edges);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(
            bad[0].starts_with("low -> top: top is in a layer above"),
            "{bad:?}"
        );
        assert!(cycle(&edges).is_some());
        let same = vec![vec!["top".to_string(), "low".to_string()]];
        assert_eq!(violations(&same, &edges).len(), 2);
    }

    #[test]
    fn super_chains_that_reach_the_root_count() {
        assert_eq!(
            references("use super::super::wal::X;\nuse super::y;", 2),
            BTreeSet::from(["wal".to_string()])
        );
        assert!(references("use super::y;", 2).is_empty());
        assert_eq!(
            references("use super::y;", 1),
            BTreeSet::from(["y".to_string()])
        );
        assert!(references("use my_crate::x;", 1).is_empty());
        // Groups after `super::` that reach the root, and climbs inside a group.
        assert_eq!(
            references("use super::{wal, share::X};", 1),
            BTreeSet::from(["share".to_string(), "wal".to_string()])
        );
        assert_eq!(
            references("use super::{super::wal::X, y};", 2),
            BTreeSet::from(["wal".to_string()])
        );
    }
}
