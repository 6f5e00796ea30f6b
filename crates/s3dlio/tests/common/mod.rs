//! Test beds and kernel-level checks shared by the integration tests.
//!
//! Every test runs on three filesystems:
//! * `disk`: a directory on the ordinary disk (under /var/tmp, not tmpfs);
//! * `strict4k`: a fresh ext4 on a loop device with 4096-byte logical sectors, which rejects
//!   any misaligned direct I/O (root only);
//! * `ramfs`: which refuses O_DIRECT, so the store must fall back and say so (root only).
//!
//! Without root the root-only beds are skipped with a loud `SKIPPED:` line on stderr; with
//! `CI=true` a missing bed is a failure instead. Each test makes its own mounts and removes
//! them (also when it panics).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// O_DIRECT as `/proc/<pid>/fdinfo` shows it (octal 040000 on x86-64).
pub const FDINFO_O_DIRECT: u32 = libc::O_DIRECT as u32;
/// O_SYNC (`__O_SYNC | O_DSYNC`, octal 04010000).
pub const FDINFO_O_SYNC: u32 = libc::O_SYNC as u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Disk,
    Strict4k,
    Ramfs,
}

impl FsKind {
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Disk => "disk",
            FsKind::Strict4k => "strict4k-ext4",
            FsKind::Ramfs => "ramfs",
        }
    }
}

/// One mounted (or plain) test directory, removed on drop.
pub struct TestFs {
    pub kind: FsKind,
    /// An empty directory on the filesystem, for the test's objects.
    pub dir: PathBuf,
    /// Whether O_DIRECT works here, as a raw `open(O_DIRECT)` says (not the store's own probe).
    pub direct_expected: bool,
    mount: Option<PathBuf>,
    loopdev: Option<String>,
    image: Option<PathBuf>,
}

impl TestFs {
    /// `file://` URI of `name` in this bed's directory.
    pub fn uri(&self, name: &str) -> String {
        format!("file://{}/{}", self.dir.display(), name)
    }

    /// `direct://` URI of `name`.
    pub fn direct_uri(&self, name: &str) -> String {
        format!("direct://{}/{}", self.dir.display(), name)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }
}

impl Drop for TestFs {
    fn drop(&mut self) {
        if let Some(m) = &self.mount {
            if run("umount", &[m.to_str().unwrap()]).is_err() {
                let _ = run("umount", &["-l", m.to_str().unwrap()]);
            }
            let _ = std::fs::remove_dir(m);
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        if let Some(d) = &self.loopdev {
            let _ = run("losetup", &["-d", d]);
        }
        if let Some(i) = &self.image {
            let _ = std::fs::remove_file(i);
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: no arguments.
    unsafe { libc::geteuid() == 0 }
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A line on the real stderr, past the test harness's output capture.
pub fn loud(msg: &str) {
    let _ = std::io::stderr().write_all(format!("\n*** {msg} ***\n").as_bytes());
}

/// Skips a bed loudly, or fails under CI.
pub fn skip(test: &str, what: &str) {
    if in_ci() {
        panic!("{test}: {what} (CI=true: every test bed must run)");
    }
    loud(&format!("SKIPPED: {test}: {what}"));
}

pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("{cmd} {args:?}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);
static SETUP: Mutex<()> = Mutex::new(());

fn base_dir() -> PathBuf {
    // /var/tmp is on the disk; /tmp may be tmpfs.
    if Path::new("/var/tmp").is_dir() {
        PathBuf::from("/var/tmp")
    } else {
        std::env::temp_dir()
    }
}

fn unique(tag: &str) -> PathBuf {
    base_dir().join(format!("s3dlio-it-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)))
}

/// Opens a file in `dir` with O_DIRECT at open time and one aligned write, with raw libc
/// calls only: the ground truth the store is compared with.
pub fn raw_direct_works(dir: &Path) -> bool {
    let p = dir.join(format!(".raw-probe-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_DIRECT, 0o600) };
    let ok = if fd >= 0 {
        let mut buf: *mut libc::c_void = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        unsafe { libc::posix_memalign(&mut buf, 4096, 4096) };
        // SAFETY: buf is 4096 valid bytes.
        let n = unsafe {
            std::ptr::write_bytes(buf as *mut u8, 7, 4096);
            libc::pwrite(fd, buf, 4096, 0)
        };
        // SAFETY: allocated by posix_memalign, fd opened above.
        unsafe {
            libc::free(buf);
            libc::close(fd);
        }
        n == 4096
    } else {
        false
    };
    let _ = std::fs::remove_file(&p);
    ok
}

fn disk() -> TestFs {
    let dir = unique("disk");
    std::fs::create_dir_all(&dir).unwrap();
    let direct_expected = raw_direct_works(&dir);
    if !direct_expected {
        loud(&format!(
            "NOTE: {} does not take O_DIRECT; the disk bed only checks the reported fallback",
            dir.display()
        ));
    }
    TestFs { kind: FsKind::Disk, dir, direct_expected, mount: None, loopdev: None, image: None }
}

fn strict4k() -> Result<TestFs, String> {
    let _g = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let image = unique("strict.img");
    std::fs::File::create(&image).and_then(|f| f.set_len(384 << 20)).map_err(|e| e.to_string())?;
    let mut fs = TestFs {
        kind: FsKind::Strict4k,
        dir: PathBuf::new(),
        direct_expected: true,
        mount: None,
        loopdev: None,
        image: Some(image.clone()),
    };
    let mut dev = Err(String::new());
    for _ in 0..5 {
        dev = run("losetup", &["--find", "--show", "--sector-size", "4096", image.to_str().unwrap()]);
        if dev.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let dev = dev?;
    fs.loopdev = Some(dev.clone());
    run("mkfs.ext4", &["-q", "-F", "-b", "4096", "-E", "nodiscard", &dev])?;
    let mnt = unique("strict-mnt");
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    run("mount", &[&dev, mnt.to_str().unwrap()]).inspect_err(|_| {
        let _ = std::fs::remove_dir(&mnt);
    })?;
    fs.mount = Some(mnt.clone());
    fs.dir = mnt.join("objects");
    std::fs::create_dir_all(&fs.dir).map_err(|e| e.to_string())?;
    // The bed must really be strict: 4096-byte offsets, per the kernel.
    let f = std::fs::File::create(fs.dir.join(".align-check")).map_err(|e| e.to_string())?;
    let a = s3dlio::align::discover(std::os::fd::AsRawFd::as_raw_fd(&f));
    drop(f);
    let _ = std::fs::remove_file(fs.dir.join(".align-check"));
    assert_eq!(a.offset, 4096, "the loop device with 4096-byte sectors must require 4096-byte offsets: {a:?}");
    assert!(raw_direct_works(&fs.dir), "ext4 on a loop device must take O_DIRECT");
    Ok(fs)
}

fn ramfs() -> Result<TestFs, String> {
    let _g = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let mnt = unique("ramfs");
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    run("mount", &["-t", "ramfs", "ramfs", mnt.to_str().unwrap()]).inspect_err(|_| {
        let _ = std::fs::remove_dir(&mnt);
    })?;
    let fs = TestFs {
        kind: FsKind::Ramfs,
        dir: mnt.join("objects"),
        direct_expected: false,
        mount: Some(mnt),
        loopdev: None,
        image: None,
    };
    std::fs::create_dir_all(&fs.dir).map_err(|e| e.to_string())?;
    assert!(!raw_direct_works(&fs.dir), "ramfs must refuse O_DIRECT");
    Ok(fs)
}

/// The three beds (root-only ones skipped loudly when not root; a failure under CI).
pub fn filesystems(test: &str) -> Vec<TestFs> {
    let mut v = vec![disk()];
    if !is_root() {
        skip(test, "strict 4096-sector ext4 and ramfs beds need root (loop devices, mount)");
        return v;
    }
    match strict4k() {
        Ok(fs) => v.push(fs),
        Err(e) => skip(test, &format!("could not set up the strict 4096-sector ext4 bed: {e}")),
    }
    match ramfs() {
        Ok(fs) => v.push(fs),
        Err(e) => skip(test, &format!("could not mount ramfs: {e}")),
    }
    for fs in &v {
        // Captured by the harness; shown with --nocapture or when the test fails.
        eprintln!("{test}: bed {} at {} (O_DIRECT expected: {})", fs.name(), fs.dir.display(), fs.direct_expected);
    }
    v
}

/// Deterministic bytes that differ between offsets and seeds (catches misplaced blocks).
/// Byte-for-byte equality without printing megabytes on failure.
pub fn same(got: &[u8], want: &[u8], ctx: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        panic!("{ctx}: {} bytes returned, {} expected, first difference at {at}", got.len(), want.len());
    }
}

/// A store with `config`.
pub fn store(
    config: s3dlio::file_store_direct::FileSystemConfig,
) -> s3dlio::file_store_direct::ConfigurableFileSystemObjectStore {
    s3dlio::file_store_direct::ConfigurableFileSystemObjectStore::new(config)
}

pub fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503)) >> 13) as u8).collect()
}

/// The `flags:` value of `/proc/self/fdinfo/<fd>` (octal).
pub fn fdinfo_flags(fd: i32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let line = s.lines().find(|l| l.starts_with("flags:"))?;
    u32::from_str_radix(line["flags:".len()..].trim(), 8).ok()
}

/// Watches this process's descriptors from another thread and records the fdinfo flags of
/// every descriptor whose path contains `needle`, while the store works.
pub struct FdWatch {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<u32>>>,
}

impl FdWatch {
    pub fn start(needle: &str) -> FdWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let needle = needle.to_string();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let Ok(rd) = std::fs::read_dir("/proc/self/fd") else { continue };
                for e in rd.flatten() {
                    let Ok(target) = std::fs::read_link(e.path()) else { continue };
                    if !target.to_string_lossy().contains(&needle) {
                        continue;
                    }
                    let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
                    let Some(flags) = fdinfo_flags(fd) else { continue };
                    // The same file still behind the number: the flags belong to it.
                    if std::fs::read_link(e.path()).ok().as_ref() == Some(&target) && !seen.contains(&flags) {
                        seen.push(flags);
                    }
                }
                std::thread::yield_now();
            }
            seen
        });
        FdWatch { stop, handle: Some(handle) }
    }

    /// The distinct flag words seen.
    pub fn finish(mut self) -> Vec<u32> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// Runs `op` (a future factory) until the watcher sees a descriptor whose path contains
/// `needle`, up to 8 times; returns the flag words seen. Panics if none is ever seen.
pub async fn fdinfo_during<F, Fut>(needle: &str, mut op: F) -> Vec<u32>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..8 {
        let w = FdWatch::start(needle);
        op().await;
        let seen = w.finish();
        if !seen.is_empty() {
            return seen;
        }
    }
    panic!("never saw a descriptor of {needle} in /proc/self/fd while the store worked");
}

/// Flag words in octal, as fdinfo shows them.
pub fn oct(v: &[u32]) -> String {
    let words: Vec<String> = v.iter().map(|f| format!("0{f:o}")).collect();
    format!("[{}]", words.join(", "))
}
