//! The documentation stays true to the tree: every module under `src/` is in the README's
//! source layout and in `lib.rs`'s layout list, and neither names one that is gone.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The top-level modules of `src/` by name: a `name.rs` file, a `name/` directory or both.
fn modules() -> BTreeSet<String> {
    std::fs::read_dir(root().join("src"))
        .expect("read src")
        .filter_map(|entry| {
            let entry = entry.expect("src entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() {
                Some(name)
            } else {
                name.strip_suffix(".rs").map(str::to_string)
            }
        })
        .collect()
}

/// The text of the section that starts at `heading` and ends at the next heading.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text.find(heading).expect("section heading") + heading.len();
    let rest = &text[start..];
    let end = rest.find("\n#").unwrap_or(rest.len());
    &rest[..end]
}

/// The modules named by code spans: `` `name.rs` `` or `` `name/` ``.
fn named(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| !span.contains(' '))
        // Top-level names only: `admin/guard.rs` is a part of `admin`.
        .filter(|span| !span.trim_end_matches('/').contains('/'))
        .filter_map(|span| span.strip_suffix(".rs").or_else(|| span.strip_suffix('/')))
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_source_layout_names_every_module() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let listed = named(section(&readme, "### Source layout"));
    assert_eq!(listed, modules(), "README source layout vs src/");
}

#[test]
fn lib_layout_lists_every_module() {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).expect("lib.rs");
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|line| line.strip_prefix("pub mod "))
        .map(|name| name.trim_end_matches(';').to_string())
        .collect();
    let documented: BTreeSet<String> = lib
        .lines()
        .filter_map(|line| line.strip_prefix("//! - [`"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|name| !name.contains("::"))
        .map(str::to_string)
        .collect();
    assert_eq!(documented, declared, "lib.rs # Layout vs its pub mods");
    let on_disk: BTreeSet<String> = modules()
        .into_iter()
        .filter(|m| m != "lib" && m != "main")
        .collect();
    assert_eq!(declared, on_disk, "lib.rs pub mods vs src/");
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

/// Every source file as its module path (`proxy::ctx`), with its text up to its tests.
fn module_files() -> Vec<(Vec<String>, String)> {
    let src = root().join("src");
    let paths = rust_files(&src);
    paths
        .into_iter()
        .filter_map(|path| {
            let rel = path
                .strip_prefix(&src)
                .expect("under src")
                .with_extension("");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            if parts.last().is_some_and(|p| p == "tests") {
                return None;
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or("")
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            Some((parts, code))
        })
        .collect()
}

/// The paths a file names from `crate::` and `super::`, as segment lists from the crate root
/// (one level of `{a, b}` groups expanded).
fn named_paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|seg| {
                seg.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|seg| !seg.is_empty())
            .collect()
    };
    let mut out = Vec::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", module[..module.len().saturating_sub(1)].to_vec()),
    ] {
        for (at, _) in code.match_indices(prefix) {
            let before = code[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &code[at + prefix.len()..];
            let head: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut path = base.clone();
            path.extend(ident(&head));
            let after = &rest[head.len()..];
            if head.ends_with("::") && after.starts_with('{') {
                let group = &after[1..after.find('}').unwrap_or(after.len())];
                for item in group.split(',') {
                    let mut p = path.clone();
                    p.extend(ident(item.trim()));
                    out.push(p);
                }
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// No module imports one that imports it back, directly or around a longer circle. (A child
/// using its parent's items, `super::X`, is not counted: the parent declares the child.)
#[test]
fn no_import_circles_between_modules() {
    let files = module_files();
    let known: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: std::collections::BTreeMap<Vec<String>, BTreeSet<Vec<String>>> =
        Default::default();
    for (module, code) in &files {
        for path in named_paths(module, code) {
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| known.contains(p));
            if let Some(target) = target {
                if &target != module && !module.starts_with(&target) {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    assert!(
        edges
            .get(&vec!["proxy".to_string(), "balance".to_string()])
            .is_some_and(|e| e.contains(&vec!["proxy".to_string(), "ctx".to_string()])),
        "the scan sees imports (proxy::balance uses proxy::ctx)"
    );
    let mut circles = Vec::new();
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, trail)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    circles.push(trail.iter().map(|m| m.join("::")).collect::<Vec<_>>());
                } else if seen.insert(next.clone()) {
                    let mut longer = trail.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    assert!(circles.is_empty(), "import circles: {circles:?}");
}

/// Every source file opens with a `//!` line saying what it is for, and stays short enough to
/// read in one sitting (test files aside).
#[test]
fn every_source_file_opens_with_its_purpose_and_stays_short() {
    let paths = rust_files(&root().join("src"));
    assert!(paths.len() > 40, "found the sources");
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("read source");
        assert!(
            text.starts_with("//!"),
            "{} does not open with a //! line",
            path.display()
        );
        let code_lines = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .count();
        let is_tests = path.file_name().is_some_and(|n| n == "tests.rs");
        assert!(
            is_tests || code_lines <= 520,
            "{} has {code_lines} lines before its tests",
            path.display()
        );
    }
}
