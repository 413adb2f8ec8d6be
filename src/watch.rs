//! File watching: a callback when any of a set of files changes, debounced, and seeing an
//! editor's replace-by-rename and a ConfigMap volume's `..data` swap (the parent directories
//! are watched, not the files, whose inodes such a replace swaps).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecommendedWatcher;
use notify_debouncer_mini::{new_debouncer, DebounceEventResult, Debouncer};

/// How long a burst of writes (truncate, write, rename) must be quiet before the callback runs.
pub const SETTLE: Duration = Duration::from_millis(150);

/// What a Kubernetes ConfigMap or Secret volume swaps on an update: its files are symlinks
/// through `..data`, so their own names see no event. A change to it counts as a change to
/// every watched file in that directory (whose callers compare contents).
const KUBERNETES_SWAP: &str = "..data";

/// Watches while it lives; dropping it stops the watch.
pub struct FileWatch {
    _debouncer: Debouncer<RecommendedWatcher>,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileWatch")
    }
}

/// Calls `on_change` (on the watcher's own thread) after changes to any of `files` settle.
pub fn watch(
    files: &[PathBuf],
    mut on_change: impl FnMut() + Send + 'static,
) -> Result<FileWatch, notify::Error> {
    let names: BTreeSet<(PathBuf, OsString)> = files
        .iter()
        .filter_map(|file| Some((parent(file), file.file_name()?.to_os_string())))
        .collect();
    let dirs: BTreeSet<PathBuf> = names.iter().map(|(dir, _)| dir.clone()).collect();
    let wanted = names.clone();
    let mut debouncer = new_debouncer(SETTLE, move |result: DebounceEventResult| {
        let Ok(events) = result else {
            return;
        };
        let ours = events.iter().any(|event| {
            let dir = event.path.parent().map(Path::to_path_buf);
            let name = event.path.file_name().map(|n| n.to_os_string());
            matches!((dir, name), (Some(d), Some(n)) if wanted.iter().any(|(wd, wn)| same_dir(wd, &d) && (*wn == n || n == KUBERNETES_SWAP)))
        });
        if ours {
            on_change();
        }
    })?;
    for dir in &dirs {
        debouncer
            .watcher()
            .watch(dir, notify::RecursiveMode::NonRecursive)?;
    }
    Ok(FileWatch {
        _debouncer: debouncer,
    })
}

/// The directory holding `file` (`.` for a bare file name).
fn parent(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Event paths are absolute while configured ones may be relative: compare canonical forms.
fn same_dir(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (a.canonicalize(), b.canonicalize()),
            (Ok(x), Ok(y)) if x == y
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_replace_by_rename_is_seen_and_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let watched = dir.path().join("a.yaml");
        std::fs::write(&watched, "one").unwrap();
        let (tx, rx) = mpsc::channel();
        let _watch = watch(std::slice::from_ref(&watched), move || {
            let _ = tx.send(());
        })
        .unwrap();
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(600)).is_err());
        let tmp = dir.path().join(".a.yaml.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &watched).unwrap();
        rx.recv_timeout(Duration::from_secs(3))
            .expect("no callback for the renamed file");
    }
}
