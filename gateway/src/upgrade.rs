//! Where the upgrade socket (`server.upgrade_sock`) lives, and the private directory around it.
//!
//! On SIGQUIT the running process connects to this path and hands its listening sockets to whatever
//! listens there. Anyone who can create or replace the socket gets them, so it must live in a directory
//! that only the gateway's user can write: never straight in `/tmp`. The default is
//! `$XDG_RUNTIME_DIR/tollgate/upgrade.sock`, else `/run/tollgate/upgrade.sock` for root, else
//! `/tmp/tollgate-<uid>/upgrade.sock`; [`prepare_dir`] creates that directory (mode 0700) and refuses one
//! that someone else owns or could write.

use std::ffi::OsStr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The socket's file name inside the default directory.
pub const SOCKET_NAME: &str = "upgrade.sock";

/// The default `server.upgrade_sock` for this process.
pub fn default_path() -> PathBuf {
    let uid = effective_uid().ok();
    // Root-owned /run with its owner write bit; a read-only mount is only found out when the directory
    // is created, with a clear error.
    let run_writable = uid == Some(0)
        && std::fs::metadata("/run")
            .is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o200 != 0);
    choose_default(
        std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
        uid,
        run_writable,
    )
}

/// The default for a given environment: `xdg` is `$XDG_RUNTIME_DIR`.
fn choose_default(xdg: Option<&OsStr>, uid: Option<u32>, run_writable: bool) -> PathBuf {
    // The XDG base directory spec says a relative XDG_RUNTIME_DIR is to be ignored.
    if let Some(dir) = xdg.map(Path::new).filter(|p| p.is_absolute()) {
        return dir.join("tollgate").join(SOCKET_NAME);
    }
    if run_writable {
        return Path::new("/run/tollgate").join(SOCKET_NAME);
    }
    // Without a uid, the name is still per user in spirit; `prepare_dir` then fails with the reason.
    let user = uid.map_or_else(|| "unknown".to_string(), |u| u.to_string());
    Path::new("/tmp")
        .join(format!("tollgate-{user}"))
        .join(SOCKET_NAME)
}

/// The effective uid of this process, without `unsafe` (the workspace forbids it): from
/// `/proc/self/status`, or else the owner of a file the process creates.
pub fn effective_uid() -> std::io::Result<u32> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        // `Uid:` real, effective, saved, filesystem.
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|u| u.parse().ok());
        if let Some(uid) = euid {
            return Ok(uid);
        }
    }
    let probe = std::env::temp_dir().join(format!(
        ".tollgate-uid-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    let uid = file.metadata().map(|m| m.uid());
    let _ = std::fs::remove_file(&probe);
    uid
}

/// Make sure the directory of the upgrade socket `sock` is private before the gateway runs: create it
/// (mode 0700) when it is missing, and refuse one that is a symbolic link, belongs to another user, or
/// is group- or world-writable. Applies to the default and to a configured path alike.
pub fn prepare_dir(sock: &Path) -> Result<(), String> {
    let dir = match sock.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let uid = effective_uid().map_err(|e| format!("cannot tell this process's uid: {e}"))?;
    check_dir(dir, uid)
}

fn check_dir(dir: &Path, uid: u32) -> Result<(), String> {
    let shown = dir.display();
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create the directory `{shown}`: {e}"))?;
            // Checked again below: someone may have created it first.
            std::fs::symlink_metadata(dir)
                .map_err(|e| format!("cannot inspect the directory `{shown}`: {e}"))?
        }
        Err(e) => return Err(format!("cannot inspect the directory `{shown}`: {e}")),
    };
    let fix = "set server.upgrade_sock to a path in a directory only this user can write";
    if meta.file_type().is_symlink() {
        return Err(format!(
            "`{shown}` is a symbolic link, which its owner can point elsewhere; {fix}"
        ));
    }
    if !meta.is_dir() {
        return Err(format!("`{shown}` is not a directory"));
    }
    if meta.uid() != uid {
        return Err(format!(
            "the directory `{shown}` belongs to uid {}, not to this process's uid {uid}: its owner could take over the listening sockets at the next upgrade; remove it, or {fix}",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "the directory `{shown}` is group- or world-writable (mode {mode:04o}): anyone who can write there could take over the listening sockets at the next upgrade; `chmod 700` it, or {fix}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_locations() {
        let sock = |xdg: Option<&str>, uid, run| choose_default(xdg.map(OsStr::new), uid, run);
        assert_eq!(
            sock(Some("/run/user/1000"), Some(1000), false),
            Path::new("/run/user/1000/tollgate/upgrade.sock")
        );
        assert_eq!(
            sock(Some("/run/user/0"), Some(0), true),
            Path::new("/run/user/0/tollgate/upgrade.sock"),
            "XDG_RUNTIME_DIR first"
        );
        assert_eq!(
            sock(None, Some(0), true),
            Path::new("/run/tollgate/upgrade.sock")
        );
        assert_eq!(
            sock(Some("relative/dir"), Some(0), false),
            Path::new("/tmp/tollgate-0/upgrade.sock"),
            "a relative XDG_RUNTIME_DIR is ignored"
        );
        assert_eq!(
            sock(None, Some(1000), false),
            Path::new("/tmp/tollgate-1000/upgrade.sock")
        );
        // Never the shared folder itself, whatever the environment.
        for (xdg, uid, run) in [(None, None, false), (None, Some(0), false)] {
            assert_ne!(sock(xdg, uid, run).parent(), Some(Path::new("/tmp")));
        }
    }

    #[test]
    fn effective_uid_is_the_owner_of_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "").unwrap();
        let owner = std::fs::metadata(&f).unwrap().uid();
        assert_eq!(effective_uid().unwrap(), owner);
    }

    #[test]
    fn the_directory_is_created_private_or_refused() {
        let base = tempfile::tempdir().unwrap();
        let uid = effective_uid().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;

        // Missing: created, 0700, and fine from then on.
        let dir = base.path().join("a/tollgate");
        prepare_dir(&dir.join(SOCKET_NAME)).unwrap();
        assert_eq!(mode(&dir), 0o700);
        prepare_dir(&dir.join(SOCKET_NAME)).unwrap();

        // Readable by others is fine; writable by others is not.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_dir(&dir, uid).is_ok());
        for m in [0o777, 0o770, 0o1777, 0o702] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(m)).unwrap();
            let e = check_dir(&dir, uid).unwrap_err();
            assert!(e.contains("group- or world-writable"), "{m:o}: {e}");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

        // Somebody else's directory (seen as such by asking for another uid).
        let e = check_dir(&dir, uid.wrapping_add(1)).unwrap_err();
        assert!(e.contains(&format!("belongs to uid {uid}")), "{e}");

        // A symbolic link to a good directory, and a file.
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let e = prepare_dir(&link.join(SOCKET_NAME)).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        let file = base.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(prepare_dir(&file.join(SOCKET_NAME)).is_err());
    }
}
