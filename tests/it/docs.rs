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
