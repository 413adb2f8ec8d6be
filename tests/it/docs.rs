//! The documentation stays true to the tree: every module under `src/` is in the README's
//! source layout and in `lib.rs`'s layout list, and neither names one that is gone.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The top-level entries of `src/`: `name.rs` files and `name/` directories.
fn modules() -> BTreeSet<String> {
    std::fs::read_dir(root().join("src"))
        .expect("read src")
        .map(|entry| {
            let entry = entry.expect("src entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() {
                format!("{name}/")
            } else {
                name
            }
        })
        .filter(|name| name.ends_with('/') || name.ends_with(".rs"))
        .collect()
}

/// The text of the section that starts at `heading` and ends at the next heading.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text.find(heading).expect("section heading") + heading.len();
    let rest = &text[start..];
    let end = rest.find("\n#").unwrap_or(rest.len());
    &rest[..end]
}

/// The code spans that name a module: `` `name.rs` `` or `` `name/` ``.
fn named(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| span.ends_with(".rs") || span.ends_with('/'))
        .filter(|span| !span.contains(' '))
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
        .filter(|m| m != "lib.rs" && m != "main.rs")
        .map(|m| m.trim_end_matches(".rs").trim_end_matches('/').to_string())
        .collect();
    assert_eq!(declared, on_disk, "lib.rs pub mods vs src/");
}
