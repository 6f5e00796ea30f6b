//! Where `run` finds `libs3dlio_direct.so`, and the name it gives `LD_PRELOAD`.
//!
//! ld.so splits `LD_PRELOAD` at spaces and colons, so a library whose path has one (a venv
//! or a prefix under "My Projects") cannot be named there. `run` then names it through a
//! symlink at a plain path, in a directory private to the user:
//! `$TMPDIR/s3dlio-direct-UID/libs3dlio_direct-HASH.so` (`/tmp` when `TMPDIR` is unset or
//! itself not plain). The link is made afresh at every run and never removed: any process of
//! the job may exec, and so load the library again through it, until the job's very end. It
//! is not put in `$XDG_RUNTIME_DIR`, which is removed at logout, under jobs started with
//! nohup; nor is `/proc/self/fd/N` used, which breaks in every child started with its
//! descriptors closed (Python's subprocess does that by default).

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The library's file name, looked for beside this command and in `../lib`.
pub const LIBRARY: &str = "libs3dlio_direct.so";

/// The library beside this executable (a build tree: `target/release/`; the Python
/// package, which holds both files) or in `../lib` (an installation: `PREFIX/bin` and
/// `PREFIX/lib`). `current_exe` resolves symlinks, so a link to the command elsewhere still
/// finds the library of the real installation.
pub fn find() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot tell where s3dlio-direct is: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let candidates = [dir.join(LIBRARY), dir.join("../lib").join(LIBRARY)];
    let Some(found) = candidates.iter().find(|p| p.is_file()) else {
        return Err(format!(
            "cannot find {LIBRARY}: looked for {} and {}.\n  In a source tree, build it with `make build`; \
             an installation needs both files: `make install PREFIX=...` puts the command in PREFIX/bin \
             and the library in PREFIX/lib (`pip install` puts both in the s3dlio_direct package)",
            candidates[0].display(),
            candidates[1].display()
        ));
    };
    found.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", found.display()))
}

/// True if `path` would be split into several `LD_PRELOAD` entries.
fn splits_preload(path: &[u8]) -> bool {
    path.iter().any(|b| b" :\t\n".contains(b))
}

/// `lib` itself when `LD_PRELOAD` can name it, else a link to it at a plain path (see the
/// module's documentation).
pub fn for_preload(lib: &Path) -> Result<PathBuf, String> {
    if !splits_preload(lib.as_os_str().as_bytes()) {
        return Ok(lib.to_path_buf());
    }
    let base = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && !splits_preload(d.as_os_str().as_bytes()))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    link_in(&base, lib).map_err(|e| {
        format!(
            "the library's path {} contains a space or a colon, which separate LD_PRELOAD entries, and \
             no link to it could be made at a plain path: {e}",
            lib.display()
        )
    })
}

/// Makes `base/s3dlio-direct-UID/libs3dlio_direct-HASH.so` a symlink to `lib` (HASH of
/// `lib`'s path, so that two installations never share a link) and returns its path.
fn link_in(base: &Path, lib: &Path) -> Result<PathBuf, String> {
    // SAFETY: geteuid has no arguments and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let dir = base.join(format!("s3dlio-direct-{uid}"));
    private_dir(&dir, uid)?;
    let name = format!("libs3dlio_direct-{:016x}.so", fnv1a(lib.as_os_str().as_bytes()));
    let link = dir.join(&name);
    // A new link under a name no one else uses (symlink never follows or replaces an
    // existing name), renamed over the old one: runs that start at once each get a whole
    // link, and an age-based cleaner of /tmp sees a fresh one.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{name}.{}.{nanos}", std::process::id()));
    std::os::unix::fs::symlink(lib, &tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, &link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot rename {} to {}: {e}", tmp.display(), link.display()));
    }
    Ok(link)
}

/// Creates `dir` with mode 0700, or checks that the existing one is a real directory owned
/// by `uid` that no one else can write to (in a shared /tmp anyone may have made it first).
fn private_dir(dir: &Path, uid: u32) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot examine {}: {e}", dir.display()))?;
    if !m.file_type().is_dir() || m.uid() != uid || m.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is not a directory of this user that only it can write to (a {}, owner uid {}, mode {:o}): \
             remove it, or set TMPDIR to a directory of yours",
            dir.display(),
            if m.file_type().is_symlink() {
                "symlink"
            } else if m.is_dir() {
                "directory"
            } else {
                "file"
            },
            m.uid(),
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

/// FNV-1a, 64 bits: a stable name for a path (std's hasher is randomly keyed per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("s3dlio-library-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_plain_path_is_used_as_it_is() {
        let p = Path::new("/opt/s3dlio/lib/libs3dlio_direct.so");
        assert_eq!(for_preload(p).unwrap(), p);
    }

    #[test]
    fn a_path_with_a_space_gets_a_private_link() {
        let base = scratch("link");
        let lib = base.join("My Projects/lib/libs3dlio_direct.so");
        std::fs::create_dir_all(lib.parent().unwrap()).unwrap();
        std::fs::write(&lib, b"not really a library").unwrap();
        let link = link_in(&base, &lib).unwrap();
        assert!(!splits_preload(link.as_os_str().as_bytes()), "{}", link.display());
        assert_eq!(std::fs::read_link(&link).unwrap(), lib);
        assert_eq!(std::fs::read(&link).unwrap(), b"not really a library");
        let dir = link.parent().unwrap();
        assert_eq!(std::fs::symlink_metadata(dir).unwrap().mode() & 0o777, 0o700);
        // Again: the same name, replaced; nothing left behind.
        assert_eq!(link_in(&base, &lib).unwrap(), link);
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);
        // Another library, another name.
        let other = base.join("Other Place/libs3dlio_direct.so");
        assert_ne!(link_in(&base, &other).unwrap(), link);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_directory_someone_else_could_write_is_refused() {
        let base = scratch("open");
        // SAFETY: geteuid has no arguments.
        let dir = base.join(format!("s3dlio-direct-{}", unsafe { libc::geteuid() }));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let e = link_in(&base, Path::new("/a b/libs3dlio_direct.so")).unwrap_err();
        assert!(e.contains("only it can write to") && e.contains("mode 777"), "{e}");
        std::fs::remove_dir(&dir).unwrap();
        std::os::unix::fs::symlink("/", &dir).unwrap();
        let e = link_in(&base, Path::new("/a b/libs3dlio_direct.so")).unwrap_err();
        assert!(e.contains("(a symlink"), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
