//! The project's own check that dependencies point one way. ARCHITECTURE.md's code map gives
//! every top-level module a layer and the modules it may import; this reads that table and the
//! source, and fails on any `crate::` (or root-level `super::`) path to a module the table does
//! not allow, on a table entry that points to a higher layer, and on a module missing from the
//! table. So the map and the code cannot drift apart, and a back-edge (realtime or a service
//! importing api, messaging importing the responder) fails `cargo test`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: [&str; 5] = ["foundation", "store", "service", "transport", "wiring"];

struct Entry {
    layer: usize,
    may_import: BTreeSet<String>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The rows of the code map: `| `module` | layer | `a`, `b` | what it is |`.
fn code_map() -> BTreeMap<String, Entry> {
    let path = root().join("../ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path).expect("ARCHITECTURE.md beside the workspace");
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("Code map"))
        .expect("ARCHITECTURE.md has a \"## Code map\" section");
    let mut map = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert!(
            cells.len() >= 3,
            "a code map row has module, layer, may import: {line}"
        );
        let module = cells[0].trim_matches('`').to_owned();
        let layer = LAYERS
            .iter()
            .position(|l| *l == cells[1])
            .unwrap_or_else(|| panic!("{module}: layer {:?} is not one of {LAYERS:?}", cells[1]));
        let may_import = cells[2]
            .split(',')
            .map(|m| m.trim().trim_matches('`').to_owned())
            .filter(|m| !m.is_empty() && m != "—" && m != "-")
            .collect();
        map.insert(module, Entry { layer, may_import });
    }
    map
}

/// `pub mod x;` / `mod x;` in lib.rs, outside test-only modules.
fn modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).expect("lib.rs");
    let mut test_only = false;
    let mut modules = BTreeSet::new();
    for line in lib.lines().map(str::trim) {
        if line.starts_with("#[cfg(test)]") {
            test_only = true;
            continue;
        }
        let name = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("mod "))
            .and_then(|rest| rest.strip_suffix(';'));
        if let Some(name) = name
            && !test_only
        {
            modules.insert(name.to_owned());
        }
        test_only = false;
    }
    modules
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file names: `crate::x`, `use crate::{x, y::z}`, and `super::x` where
/// `super` is the crate root.
fn imports(path: &Path, module_root: bool) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(path).expect("source file");
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        let mut names = Vec::new();
        for (index, _) in code.match_indices("crate::") {
            let rest = &code[index + "crate::".len()..];
            if rest.starts_with('{') {
                // Grouped imports may span lines: read on to the closing brace.
                let start: usize = text.lines().take(number).map(|l| l.len() + 1).sum();
                let group = &text[start + index + "crate::{".len()..];
                let group = &group[..group.find('}').unwrap_or(group.len())];
                names.extend(group.split(',').map(|part| head(part.trim())));
            } else {
                names.push(head(rest));
            }
        }
        if module_root {
            for (index, _) in code.match_indices("super::") {
                names.push(head(&code[index + "super::".len()..]));
            }
        }
        found.extend(
            names
                .into_iter()
                .filter(|n| !n.is_empty())
                .map(|n| (n, number + 1)),
        );
    }
    found
}

fn head(path: &str) -> String {
    path.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn dependencies_point_one_way_as_the_code_map_says() {
    let map = code_map();
    let modules = modules();
    let mut problems = Vec::new();
    for module in &modules {
        if !map.contains_key(module) {
            problems.push(format!(
                "`{module}` is missing from ARCHITECTURE.md's code map"
            ));
        }
    }
    for (module, entry) in &map {
        if !modules.contains(module) {
            problems.push(format!(
                "the code map lists `{module}`, which lib.rs does not have"
            ));
        }
        for allowed in &entry.may_import {
            match map.get(allowed) {
                None => problems.push(format!("`{module}` may import unknown `{allowed}`")),
                Some(target) if target.layer > entry.layer => problems.push(format!(
                    "`{module}` ({}) may not import `{allowed}` ({}): it is a layer above",
                    LAYERS[entry.layer], LAYERS[target.layer]
                )),
                Some(_) => {}
            }
        }
    }
    let src = root().join("src");
    for module in &modules {
        let Some(entry) = map.get(module) else {
            continue;
        };
        let mut files = Vec::new();
        let single = src.join(format!("{module}.rs"));
        if single.exists() {
            files.push(single);
        }
        let folder = src.join(module);
        if folder.is_dir() {
            rust_files(&folder, &mut files);
        }
        for file in files {
            let module_root = file.parent() == Some(src.as_path())
                || (file.file_name().is_some_and(|n| n == "mod.rs")
                    && file.parent().and_then(Path::parent) == Some(src.as_path()));
            for (imported, line) in imports(&file, module_root) {
                if imported == *module || !modules.contains(&imported) {
                    continue;
                }
                if !entry.may_import.contains(&imported) {
                    problems.push(format!(
                        "{}:{line}: `{module}` imports `{imported}`, which the code map does not allow",
                        file.strip_prefix(&src).unwrap_or(&file).display()
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "layering (see ARCHITECTURE.md, \"Code map\"):\n  {}",
        problems.join("\n  ")
    );
}
