//! Where the graceful-upgrade socket and the pid file live. The old process hands its listening
//! sockets to whoever listens on the upgrade socket, so it must sit in a directory no other user
//! can write: `$RUNTIME_DIRECTORY` (systemd), else `/run/switchyard`, else a `0700` directory of
//! this user in the temp dir. Its name comes from the config file's path, so two instances
//! with different files never share one.

use std::fs::{DirBuilder, Permissions};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The upgrade socket and the pid file beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub socket: PathBuf,
    pub pid_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum UpgradePathError {
    #[error("cannot create the runtime directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a private directory of this user (owner uid {owner}, mode {mode:o}); \
         remove it or set server.upgrade_socket"
    )]
    NotPrivate {
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
    #[error("the upgrade socket path {0} is longer than 107 bytes; set server.upgrade_socket")]
    TooLong(PathBuf),
}

/// The paths for a config read from `config_path` (`None`: the built-in example), with the
/// `server.upgrade_socket` it names, if any.
pub fn resolve(
    configured: Option<&Path>,
    config_path: Option<&Path>,
) -> Result<Paths, UpgradePathError> {
    let socket = match configured {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.exists() {
                    create_private(dir)?;
                }
                if let Ok(meta) = dir.metadata() {
                    if meta.mode() & 0o022 != 0 {
                        log::warn!(
                            "server.upgrade_socket is in {}, which other users can write: one of them could take the listening sockets at the next upgrade",
                            dir.display()
                        );
                    }
                }
            }
            path.to_path_buf()
        }
        None => default_dir()?.join(format!("{}.sock", stem(config_path))),
    };
    if socket.as_os_str().len() > 107 {
        return Err(UpgradePathError::TooLong(socket));
    }
    let pid_file = socket.with_extension("pid");
    Ok(Paths { socket, pid_file })
}

/// `switchyard-<hash of the config file's canonical path>`, or `switchyard`.
fn stem(config_path: Option<&Path>) -> String {
    match config_path {
        Some(path) => {
            let full = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            let hash = xxhash_rust::xxh3::xxh3_64(full.as_os_str().as_encoded_bytes());
            format!("switchyard-{hash:016x}")
        }
        None => "switchyard".to_string(),
    }
}

fn default_dir() -> Result<PathBuf, UpgradePathError> {
    let systemd = std::env::var_os("RUNTIME_DIRECTORY").and_then(|dirs| {
        // systemd lists several directories separated by `:`; the first is ours.
        let first = dirs.to_string_lossy().split(':').next()?.to_string();
        (!first.is_empty()).then(|| PathBuf::from(first))
    });
    if let Some(dir) = systemd {
        // systemd made it for this service (mode 0755 by default): only its owner can write.
        check_owned(&dir, 0o022)?;
        return Ok(dir);
    }
    let run = Path::new("/run/switchyard");
    if create_private(run).is_ok() && check_owned(run, 0o077).is_ok() {
        return Ok(run.to_path_buf());
    }
    let uid = nix::unistd::geteuid().as_raw();
    let dir = std::env::temp_dir().join(format!("switchyard-{uid}"));
    create_private(&dir)?;
    check_owned(&dir, 0o077)?;
    Ok(dir)
}

/// Creates `dir` (and missing parents) with mode 0700 unless it exists.
fn create_private(dir: &Path) -> Result<(), UpgradePathError> {
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(source) => Err(UpgradePathError::Create {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// `dir` must be a directory of this user with none of the `forbidden` mode bits.
fn check_owned(dir: &Path, forbidden: u32) -> Result<(), UpgradePathError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|source| UpgradePathError::Create {
        path: dir.to_path_buf(),
        source,
    })?;
    let uid = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & forbidden != 0 {
        return Err(UpgradePathError::NotPrivate {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Pingora creates the upgrade socket of a new process with mode 0666 (for a server that
/// changes user after binding, which Switchyard does not do). Narrows it to 0600 as soon as it
/// appears, and stops once it is gone again (the sockets were received) or after `within`.
pub fn tighten_socket_when_created(socket: PathBuf, within: Duration) {
    std::thread::spawn(move || {
        let deadline = Instant::now() + within;
        let mut seen = false;
        while Instant::now() < deadline {
            match std::fs::symlink_metadata(&socket) {
                Ok(meta) if meta.file_type().is_socket() => {
                    seen = true;
                    if meta.mode() & 0o777 != 0o600 {
                        if let Err(e) =
                            std::fs::set_permissions(&socket, Permissions::from_mode(0o600))
                        {
                            log::warn!("cannot restrict {}: {e}", socket.display());
                        }
                    }
                }
                Err(_) if seen => return,
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_socket_and_pid_file_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sub/up.sock");
        let paths = resolve(Some(&socket), None).unwrap();
        assert_eq!(paths.socket, socket);
        assert_eq!(paths.pid_file, dir.path().join("sub/up.pid"));
        let mode = std::fs::metadata(dir.path().join("sub")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        let long = dir.path().join("x".repeat(120));
        assert!(matches!(
            resolve(Some(&long), None),
            Err(UpgradePathError::TooLong(_))
        ));
    }

    #[test]
    fn default_names_differ_per_config_file_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        let pa = resolve(None, Some(&a)).unwrap();
        let pb = resolve(None, Some(&b)).unwrap();
        assert_ne!(pa.socket, pb.socket);
        assert_eq!(pa, resolve(None, Some(&a)).unwrap(), "stable for one file");
        assert!(!pa.socket.starts_with("/tmp/switchyard_upgrade"));
        let parent = pa.socket.parent().unwrap();
        let meta = std::fs::metadata(parent).unwrap();
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
        assert_eq!(
            meta.mode() & 0o022,
            0,
            "{} is writable by others",
            parent.display()
        );
        assert_eq!(pa.pid_file, pa.socket.with_extension("pid"));
    }

    #[test]
    fn a_directory_of_someone_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            check_owned(&open, 0o077),
            Err(UpgradePathError::NotPrivate { .. })
        ));
        std::fs::set_permissions(&open, Permissions::from_mode(0o700)).unwrap();
        assert!(check_owned(&open, 0o077).is_ok());
    }

    #[test]
    fn the_socket_is_narrowed_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.sock");
        tighten_socket_when_created(path.clone(), Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o666)).unwrap();
        let start = Instant::now();
        while std::fs::metadata(&path).unwrap().mode() & 0o777 != 0o600 {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "still open to others"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
