//! The crate's modules form layers: no top-level module reaches back into one that reaches it
//! (no import cycle), `net` (the networks' names) is a leaf, and the configuration sits at the
//! bottom, above the leaves only. Read from the source (every `crate::MODULE` outside comments
//! and test modules), so that a new edge that closes a loop fails here with its path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap();
            let top = rel.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs").to_string();
            if top == "main" || top == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            // Up to the unit tests, which may reach anywhere.
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            let edges = g.entry(top.clone()).or_default();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (at, _) in line.match_indices("crate::") {
                    let name: String = line[at + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                    if !name.is_empty() && name != top {
                        edges.insert(name);
                    }
                }
            }
        }
    }
    g
}

/// A path from `from` back to itself, if there is one.
fn cycle_through(g: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in g.get(last).into_iter().flatten() {
            if next == from {
                let mut p = path.clone();
                p.push(next.clone());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push(p);
            }
        }
    }
    None
}

#[test]
fn no_module_reaches_back_into_one_that_reaches_it() {
    let g = graph();
    assert!(g.len() > 20, "read {} modules", g.len());
    assert!(g["train"].contains("sink") && g["metrics"].contains("sink"), "the reader finds edges: {g:?}");
    for m in g.keys() {
        if let Some(c) = cycle_through(&g, m) {
            panic!("import cycle: {}", c.join(" -> "));
        }
    }
    assert!(g["net"].is_empty(), "net is a leaf: {:?}", g["net"]);
    let config: Vec<&String> = g["config"].iter().collect();
    assert_eq!(config, ["logging", "net"], "the configuration depends on leaves only");
}

/// The test finds a cycle when there is one.
#[test]
fn a_cycle_is_found() {
    let mut g = graph();
    g.get_mut("net").unwrap().insert("config".into());
    assert_eq!(cycle_through(&g, "net").unwrap(), ["net", "config", "net"]);
}
