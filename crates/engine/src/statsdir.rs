//! The files the library keeps in the statistics directory, and how it writes them safely
//! in a directory other users can write to (`/tmp`).
//!
//! For a template T (`S3DLIO_DIRECT_STATS`, e.g. `/st/run-%h-%p.json`) and a process with
//! pid P and start time S (field 22 of `/proc/P/stat`):
//!
//! - **the index**, T with `%p` as `index` (a final `.json` becomes `.jsonl`; without `%p`,
//!   `.index` is appended): one JSON object per line, appended by every process that loads the
//!   library (`load`), by every fork child (`fork`), at the first matched open (`matched`),
//!   before exec (`exec`) and at exit (`exit`). Each line has `pid`, `starttime`, `host`,
//!   `uid` and `program`; a process that matched nothing leaves only its lines here.
//! - **the counters file**, `J.S.live` where J is T expanded for P: one page the process maps
//!   shared and counts into with atomic adds ([`crate::stats::Stats`]), created at its first
//!   count (the first matched open), so the counts survive any ending up to the last call.
//!   An exec'd image (same P and S) continues it. Removed at a normal exit, once J is written.
//!   Layout: [`LIVE_SIZE`] bytes, native byte order; see [`parse_live`].
//! - **the files log**, `J.S.files`: one line per matched file the process was done with
//!   ([`crate::filelog`]), appended (never rewritten) so the lines survive any ending.
//! - **the statistics file** J, written (temporary file and rename) at exit, `_exit` and
//!   before exec when the process counted anything ([`crate::stats::json_document`]).
//!
//! Every file is created and reopened as [`crate::safefile`] does it (a name someone planted
//! is never followed nor reused; a file that is not this user's is never trusted); anything
//! refused is ignored with one warning.

use crate::config::LogLevel;
use crate::log::{self, Cause};
use crate::safefile::{check_ours, create_new, euid, read_ours, unlink, Refusal};
pub use crate::safefile::{open_append, write_atomically};
use crate::stats::{self, Block, Stats, SLOTS};
use crate::sys;
use std::ffi::CString;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::sync::OnceLock;

/// Size of a counters file: one page.
pub const LIVE_SIZE: usize = 4096;
/// First bytes of a counters file.
pub const LIVE_MAGIC: [u8; 8] = *b"S3DLLIVE";
/// Layout version of a counters file.
pub const LIVE_LAYOUT: u32 = 1;
const OFF_PROGRAM: usize = 64;
const PROGRAM_LEN: usize = 16;
const OFF_HOST: usize = 80;
const HOST_LEN: usize = 64;
const OFF_NAMES: usize = 256;
const OFF_VALUES: usize = 2048;
/// At most this many values fit in a counters file.
pub const MAX_SLOTS: usize = (LIVE_SIZE - OFF_VALUES) / 8;
const _: () = assert!(SLOTS <= MAX_SLOTS);
/// Suffix of counters files.
pub const LIVE_SUFFIX: &str = ".live";
/// Suffix of files logs ([`crate::filelog`]).
pub const FILES_SUFFIX: &str = ".files";
/// First key of every index line.
pub const INDEX_KEY: &str = "s3dlio_index";

// ------------------------------------------------------------------------------- names

/// The statistics file of `pid`: the template expanded.
pub fn json_path(template: &[u8], pid: i32, host: &[u8]) -> Vec<u8> {
    stats::expand_path(template, pid, host)
}

/// The counters file beside statistics file `json` of the process started at `starttime`.
pub fn live_path(json: &[u8], starttime: u64) -> Vec<u8> {
    let mut p = json.to_vec();
    let _ = write!(Bytes(&mut p), ".{starttime}{LIVE_SUFFIX}");
    p
}

/// The index of a template: `%p` as `index`, a final `.json` as `.jsonl`.
pub fn index_path(template: &[u8], host: &[u8]) -> Vec<u8> {
    let mut p = stats::expand_with(template, b"index", host);
    if p.ends_with(b".json") {
        p.push(b'l');
    }
    p
}

struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The files log beside statistics file `json` of the process started at `starttime`.
pub fn files_path(json: &[u8], starttime: u64) -> Vec<u8> {
    let mut p = json.to_vec();
    let _ = write!(Bytes(&mut p), ".{starttime}{}", FILES_SUFFIX);
    p
}

// --------------------------------------------------------------------- the counters file

/// One counters file, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFile {
    pub pid: u64,
    pub starttime: u64,
    /// The uid of the process that created it.
    pub uid: u32,
    pub program: String,
    pub host: String,
    /// Counter keys and values, in file order.
    pub counters: Vec<(String, u64)>,
    /// Fallback reasons and counts, in file order.
    pub fallbacks: Vec<(String, u64)>,
}

fn put_u32(p: &mut [u8], off: usize, v: u32) {
    p[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(p: &mut [u8], off: usize, v: u64) {
    p[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(p: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(p[off..off + 4].try_into().expect("4 bytes"))
}

fn get_u64(p: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(p[off..off + 8].try_into().expect("8 bytes"))
}

fn put_text(p: &mut [u8], off: usize, len: usize, text: &[u8]) {
    let n = text.len().min(len - 1);
    p[off..off + len].fill(0);
    p[off..off + n].copy_from_slice(&text[..n]);
}

/// A new counters page: header, key names, `values` (slot order).
///
/// ```text
///   0  magic "S3DLLIVE"      8  layout (u32)      12  page size (u32)
///  16  pid (u64)            24  start time (u64)  32  counters (u32)  36  fallbacks (u32)
///  40  names offset (u32)   44  names length (u32) 48  values offset (u32)  52  uid (u32)
///  64  program (16 bytes, NUL-padded)   80  host (64 bytes, NUL-padded)
/// 256  the keys, one per line: counters, then fallback reasons
/// 2048 the values, one u64 per key, counted into with atomic adds
/// ```
pub fn live_page(pid: i32, starttime: u64, uid: u32, program: &[u8], host: &[u8], values: &[u64; SLOTS]) -> Vec<u8> {
    let mut p = vec![0u8; LIVE_SIZE];
    p[..8].copy_from_slice(&LIVE_MAGIC);
    put_u32(&mut p, 8, LIVE_LAYOUT);
    put_u32(&mut p, 12, LIVE_SIZE as u32);
    put_u64(&mut p, 16, pid as u64);
    put_u64(&mut p, 24, starttime);
    put_u32(&mut p, 32, stats::Counter::ALL.len() as u32);
    put_u32(&mut p, 36, stats::Fallback::COUNTED.len() as u32);
    let mut names = Vec::new();
    for k in stats::slot_keys() {
        names.extend_from_slice(k.as_bytes());
        names.push(b'\n');
    }
    assert!(names.len() <= OFF_VALUES - OFF_NAMES, "the key names do not fit");
    put_u32(&mut p, 40, OFF_NAMES as u32);
    put_u32(&mut p, 44, names.len() as u32);
    put_u32(&mut p, 48, OFF_VALUES as u32);
    put_u32(&mut p, 52, uid);
    put_text(&mut p, OFF_PROGRAM, PROGRAM_LEN, program);
    put_text(&mut p, OFF_HOST, HOST_LEN, host);
    p[OFF_NAMES..OFF_NAMES + names.len()].copy_from_slice(&names);
    for (i, v) in values.iter().enumerate() {
        put_u64(&mut p, OFF_VALUES + 8 * i, *v);
    }
    p
}

fn text_field(p: &[u8], off: usize, len: usize, what: &str) -> Result<String, String> {
    let f = &p[off..off + len];
    let end = f.iter().position(|&b| b == 0).ok_or_else(|| format!("its {what} is not terminated"))?;
    if f[end..].iter().any(|&b| b != 0) {
        return Err(format!("its {what} field has bytes after the end"));
    }
    Ok(String::from_utf8_lossy(&f[..end]).chars().map(|c| if c.is_control() { '?' } else { c }).collect())
}

/// Reads a counters file back, trusting nothing in it: every offset and count is checked,
/// and an error says what is wrong.
pub fn parse_live(p: &[u8]) -> Result<LiveFile, String> {
    if p.len() != LIVE_SIZE {
        return Err(format!("it has {} bytes, not {LIVE_SIZE}", p.len()));
    }
    if p[..8] != LIVE_MAGIC {
        return Err("it does not start with S3DLLIVE".into());
    }
    let layout = get_u32(p, 8);
    if layout != LIVE_LAYOUT || get_u32(p, 12) as usize != LIVE_SIZE {
        return Err(format!("layout {layout} (this version reads {LIVE_LAYOUT})"));
    }
    let (pid, starttime) = (get_u64(p, 16), get_u64(p, 24));
    if pid == 0 || pid > i32::MAX as u64 {
        return Err(format!("its pid {pid} is impossible"));
    }
    let (nc, nf) = (get_u32(p, 32) as usize, get_u32(p, 36) as usize);
    let (noff, nlen, voff) = (get_u32(p, 40) as usize, get_u32(p, 44) as usize, get_u32(p, 48) as usize);
    if nc + nf > MAX_SLOTS || noff != OFF_NAMES || voff != OFF_VALUES || nlen > OFF_VALUES - OFF_NAMES {
        return Err("its header is inconsistent".into());
    }
    if p[noff + nlen..voff].iter().any(|&b| b != 0) {
        return Err("it has bytes after its key names".into());
    }
    let names = std::str::from_utf8(&p[noff..noff + nlen]).map_err(|_| "its key names are not text".to_string())?;
    let keys: Vec<&str> = names.strip_suffix('\n').map(|n| n.split('\n').collect()).unwrap_or_default();
    if keys.len() != nc + nf {
        return Err(format!("it names {} keys for {} values", keys.len(), nc + nf));
    }
    for (i, k) in keys.iter().enumerate() {
        let good = !k.is_empty()
            && k.len() <= 64
            && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !good || keys[..i].contains(k) {
            return Err(format!("its key {k:?} is malformed or repeated"));
        }
    }
    if p[OFF_VALUES + 8 * (nc + nf)..].iter().any(|&b| b != 0) {
        return Err("it has bytes after its values".into());
    }
    let values: Vec<(String, u64)> =
        keys.iter().enumerate().map(|(i, k)| (k.to_string(), get_u64(p, OFF_VALUES + 8 * i))).collect();
    let (counters, fallbacks) = values.split_at(nc);
    Ok(LiveFile {
        pid,
        starttime,
        uid: get_u32(p, 52),
        program: text_field(p, OFF_PROGRAM, PROGRAM_LEN, "program")?,
        host: text_field(p, OFF_HOST, HOST_LEN, "host")?,
        counters: counters.to_vec(),
        fallbacks: fallbacks.to_vec(),
    })
}

fn map_shared(fd: i32) -> Result<*mut u8, Refusal> {
    // SAFETY: a new shared mapping of LIVE_SIZE bytes of `fd`; raw call, so the shim's own
    // mmap hook is not entered.
    let p = unsafe { sys::mmap(0, LIVE_SIZE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
    p.map(|p| p as *mut u8).map_err(Refusal::Errno)
}

fn unmap(p: *mut u8) {
    // SAFETY: `p` is a mapping of LIVE_SIZE bytes this module made, no longer used.
    unsafe { sys::munmap(p as usize, LIVE_SIZE) };
}

// ------------------------------------------------------------------ the process's files

struct Ctx {
    template: Vec<u8>,
    host: Vec<u8>,
    index: CString,
}

static CTX: OnceLock<Ctx> = OnceLock::new();
static PID: AtomicI32 = AtomicI32::new(0);
static START: AtomicU64 = AtomicU64::new(0);
/// The mapped counters page of this process (null: none).
static PAGE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
/// Set when a process that counts in memory (no counters file) has warned about it.
static WARNED: AtomicBool = AtomicBool::new(false);

fn comm() -> ([u8; 64], usize) {
    let mut c = [0u8; 64];
    let n = sys::read_small_file(c"/proc/self/comm", &mut c).unwrap_or(0);
    let n = c[..n].iter().rposition(|&b| b != b'\n').map_or(0, |i| i + 1);
    (c, n)
}

/// The program name (`/proc/self/comm`).
pub fn program() -> String {
    let (c, n) = comm();
    String::from_utf8_lossy(&c[..n]).into_owned()
}

fn ppid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::syscall(libc::SYS_getppid) as i32 }
}

fn warn_once(what: std::fmt::Arguments<'_>) {
    log::once(LogLevel::Warn, Cause::StatsFiles, what);
}

/// Appends one line to the index: `event` and what every line has, then `extra` (which
/// starts with a comma when not empty).
fn append_index(event: &str, extra: std::fmt::Arguments<'_>) {
    let Some(ctx) = CTX.get() else { return };
    let mut line = String::with_capacity(256);
    let _ = write!(
        line,
        "{{\"{INDEX_KEY}\":1,\"event\":\"{event}\",\"pid\":{},\"starttime\":{},\"host\":\"{}\",\"uid\":{},\
         \"program\":\"{}\",\"version\":\"{}\"",
        PID.load(Ordering::Relaxed),
        START.load(Ordering::Relaxed),
        stats::json_escape(&String::from_utf8_lossy(&ctx.host)),
        euid(),
        stats::json_escape(&program()),
        env!("CARGO_PKG_VERSION"),
    );
    let _ = line.write_fmt(extra);
    line.push_str("}\n");
    match open_append(&ctx.index) {
        Ok(fd) => {
            let _ = sys::write_all(fd, line.as_bytes());
            let _ = sys::close(fd);
        }
        Err(e) => warn_once(format_args!(
            "cannot append to the statistics index {}: {e}",
            String::from_utf8_lossy(ctx.index.to_bytes())
        )),
    }
}

/// True if this process keeps statistics files (and so a files log).
pub fn keeps_files() -> bool {
    CTX.get().is_some()
}

/// Appends `line` to this process's files log.
pub fn append_files(line: &[u8]) {
    let Some((json, _)) = paths() else { return };
    let Ok(path) = CString::new(files_path(&json, START.load(Ordering::Relaxed))) else { return };
    match open_append(&path) {
        Ok(fd) => {
            let _ = sys::write_all(fd, line);
            let _ = sys::close(fd);
        }
        // The program has used up its descriptors (the `no_descriptor` fallback is this):
        // the line is lost, the counters still count the open, and nothing is printed into
        // a program that ran out of them on its own.
        Err(Refusal::Errno(libc::EMFILE | libc::ENFILE)) => {}
        Err(e) => {
            warn_once(format_args!("cannot append to the files log {}: {e}", String::from_utf8_lossy(path.to_bytes())))
        }
    }
}

fn paths() -> Option<(Vec<u8>, Vec<u8>)> {
    let ctx = CTX.get()?;
    let json = json_path(&ctx.template, PID.load(Ordering::Relaxed), &ctx.host);
    let live = live_path(&json, START.load(Ordering::Relaxed));
    Some((json, live))
}

fn values_of(page: *mut u8) -> *mut Block {
    // SAFETY: the values start OFF_VALUES bytes into a LIVE_SIZE-byte page, 8-aligned.
    unsafe { page.add(OFF_VALUES) as *mut Block }
}

/// Makes this process's counters file with `values` and maps it: the block to count into.
fn create_live(values: &[u64; SLOTS]) -> Result<*mut u8, (Vec<u8>, Refusal)> {
    let (_, live) = paths().ok_or((Vec::new(), Refusal::Errno(libc::EINVAL)))?;
    let ctx = CTX.get().ok_or((Vec::new(), Refusal::Errno(libc::EINVAL)))?;
    let (c, n) = comm();
    let page =
        live_page(PID.load(Ordering::Relaxed), START.load(Ordering::Relaxed), euid(), &c[..n], &ctx.host, values);
    let fail = |e| (live.clone(), e);
    let clive = CString::new(live.clone()).map_err(|_| fail(Refusal::Errno(libc::EINVAL)))?;
    let mut made = None;
    for attempt in 0..16u32 {
        let mut tmp = live.clone();
        let _ = write!(Bytes(&mut tmp), ".tmp{}", sys::gettid());
        if attempt > 0 {
            let _ = write!(Bytes(&mut tmp), ".{attempt}");
        }
        let ctmp = CString::new(tmp).map_err(|_| fail(Refusal::Errno(libc::EINVAL)))?;
        match create_new(&ctmp, libc::O_RDWR) {
            Err(Refusal::Errno(libc::EEXIST)) => continue, // someone else's name: another one
            Err(e) => return Err(fail(e)),
            Ok(fd) => {
                made = Some((ctmp, fd));
                break;
            }
        }
    }
    let (ctmp, fd) = made.ok_or_else(|| fail(Refusal::Errno(libc::EEXIST)))?;
    // The whole page is written (not only sized), so the filesystem has its block before
    // the mapping is written to.
    // SAFETY: `page` is LIVE_SIZE readable bytes.
    let r = match unsafe { sys::pwrite(fd, page.as_ptr(), LIVE_SIZE, 0) } {
        Ok(LIVE_SIZE) => map_shared(fd).and_then(|p| match sys::rename(&ctmp, &clive) {
            Ok(()) => Ok(p),
            Err(e) => {
                unmap(p);
                Err(Refusal::Errno(e))
            }
        }),
        Ok(_) => Err(Refusal::Errno(libc::EIO)),
        Err(e) => Err(Refusal::Errno(e)),
    };
    let _ = sys::close(fd);
    if r.is_err() {
        unlink(&ctmp);
    }
    r.map_err(fail)
}

/// The [`stats::AttachHook`]: at the first count, the counters file.
fn attach_hook() -> *mut Block {
    match create_live(&[0; SLOTS]) {
        Ok(page) => {
            PAGE.store(page, Ordering::Release);
            let (_, live) = paths().unwrap_or_default();
            let name = live.rsplit(|&b| b == b'/').next().unwrap_or(&[]).to_vec();
            append_index(
                "matched",
                format_args!(",\"live\":\"{}\"", stats::json_escape(&String::from_utf8_lossy(&name))),
            );
            values_of(page)
        }
        Err((path, e)) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                warn_once(format_args!(
                    "cannot create the counters file {}: {e}; this process's statistics will exist only if it exits \
                     normally",
                    String::from_utf8_lossy(&path)
                ));
            }
            std::ptr::null_mut()
        }
    }
}

/// Takes over the counters a previous image of this process (same pid and start time: an
/// exec) left: its counters file, or failing that its statistics file.
fn continue_predecessor(st: &Stats) {
    let Some((json, live)) = paths() else { return };
    let Ok(clive) = CString::new(live.clone()) else { return };
    let flags = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    match sys::openat(libc::AT_FDCWD, &clive, flags, 0) {
        Ok(fd) => {
            let r = adopt_live(fd, st);
            let _ = sys::close(fd);
            if let Err(e) = r {
                warn_once(format_args!(
                    "ignored the counters file {} of a previous image of this process: {e}",
                    String::from_utf8_lossy(&live)
                ));
            }
            return;
        }
        Err(libc::ENOENT) => {}
        Err(e) => {
            warn_once(format_args!(
                "ignored the counters file {}: {}",
                String::from_utf8_lossy(&live),
                Refusal::Errno(e)
            ));
            return;
        }
    }
    let Ok(cjson) = CString::new(json.clone()) else { return };
    let mut buf = vec![0u8; 65536];
    let text = match read_ours(&cjson, &mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(Refusal::Errno(libc::ENOENT)) => return,
        Err(e) => {
            warn_once(format_args!("ignored the statistics file {}: {e}", String::from_utf8_lossy(&json)));
            return;
        }
    };
    let ours = stats::json_int(&text, "schema") == Some(1)
        && stats::json_int(&text, "pid") == Some(PID.load(Ordering::Relaxed) as u64)
        && stats::json_int(&text, "starttime") == Some(START.load(Ordering::Relaxed));
    if !ours {
        return; // an earlier process with this pid: not ours to continue
    }
    let base = Stats::new();
    base.absorb(&text);
    match create_live(&base.snapshot()) {
        Ok(page) => {
            PAGE.store(page, Ordering::Release);
            // SAFETY: the page stays mapped for the life of this process image.
            unsafe { st.attach(values_of(page)) };
        }
        Err(_) => st.absorb(&text),
    }
}

/// Maps a predecessor's counters file if it is this process's and of this layout; a file of
/// another layout (another version of the library) is read into memory and replaced.
fn adopt_live(fd: i32, st: &Stats) -> Result<(), Refusal> {
    let s = check_ours(fd, false)?;
    if s.st_size as usize != LIVE_SIZE {
        return Err(Refusal::Corrupt);
    }
    let mut page = vec![0u8; LIVE_SIZE];
    // SAFETY: `page` is writable for LIVE_SIZE bytes.
    let n = unsafe { sys::pread(fd, page.as_mut_ptr(), LIVE_SIZE, 0) }.map_err(Refusal::Errno)?;
    let f = parse_live(&page[..n]).map_err(|_| Refusal::Corrupt)?;
    if f.pid != PID.load(Ordering::Relaxed) as u64 || f.starttime != START.load(Ordering::Relaxed) {
        return Err(Refusal::Corrupt);
    }
    let keys: Vec<&str> = f.counters.iter().chain(&f.fallbacks).map(|(k, _)| k.as_str()).collect();
    if keys.iter().copied().eq(stats::slot_keys()) && f.counters.len() == stats::Counter::ALL.len() {
        let p = map_shared(fd)?;
        let (c, n) = comm();
        // SAFETY: `p` is a LIVE_SIZE-byte mapping; the program field is only ever read as
        // text, a torn read shows a mixed name for a moment.
        unsafe { put_text(std::slice::from_raw_parts_mut(p, LIVE_SIZE), OFF_PROGRAM, PROGRAM_LEN, &c[..n]) };
        PAGE.store(p, Ordering::Release);
        // SAFETY: the mapping stays for the life of this process image.
        unsafe { st.attach(values_of(p)) };
        return Ok(());
    }
    let values: [u64; SLOTS] = std::array::from_fn(|i| {
        let key = stats::slot_keys().nth(i).unwrap_or("");
        f.counters.iter().chain(&f.fallbacks).find(|(k, _)| k == key).map_or(0, |(_, v)| *v)
    });
    let p = create_live(&values).map_err(|(_, e)| e)?;
    PAGE.store(p, Ordering::Release);
    // SAFETY: as above.
    unsafe { st.attach(values_of(p)) };
    Ok(())
}

/// Called once when the library loads with statistics on: remembers where the files go,
/// appends the `load` line, continues what a previous image of this process counted, and
/// (when the library is active here) arranges for the counters file at the first count.
/// `inactive`: why the library does nothing in this process, if it does not.
pub fn at_load(st: &Stats, template: &[u8], inactive: Option<&str>) {
    let host = stats::hostname();
    let Ok(index) = CString::new(index_path(template, &host)) else { return };
    if CTX.set(Ctx { template: template.to_vec(), host, index }).is_err() {
        return;
    }
    PID.store(sys::getpid(), Ordering::Relaxed);
    START.store(stats::process_starttime(), Ordering::Relaxed);
    let why = inactive.map(stats::json_escape).unwrap_or_default();
    append_index(
        "load",
        format_args!(
            ",\"ppid\":{},\"active\":{}{}{}{}",
            ppid(),
            inactive.is_none(),
            if inactive.is_some() { ",\"inactive\":\"" } else { "" },
            why,
            if inactive.is_some() { "\"" } else { "" }
        ),
    );
    continue_predecessor(st);
    if inactive.is_none() && !st.attached() {
        st.arm(attach_hook);
    }
}

/// In a fork child, before fork returns: counts of its own from zero, in a counters file of
/// its own made at its first count, and a `fork` line in the index.
pub fn after_fork_child(st: &Stats, active: bool) {
    if CTX.get().is_none() {
        return;
    }
    let parent = PID.load(Ordering::Relaxed);
    st.detach();
    let old = PAGE.swap(std::ptr::null_mut(), Ordering::AcqRel);
    if !old.is_null() {
        unmap(old);
    }
    WARNED.store(false, Ordering::Relaxed);
    PID.store(sys::getpid(), Ordering::Relaxed);
    START.store(stats::process_starttime(), Ordering::Relaxed);
    append_index("fork", format_args!(",\"ppid\":{parent},\"active\":{active}"));
    if active {
        st.arm(attach_hook);
    }
}

/// At exit, `_exit` (`exiting`) and before exec: the statistics file if this process counted
/// anything, then the `exit` or `exec` line; at exit the counters file goes, its counts
/// being in the statistics file. Returns the statistics file and why it could not be written.
pub fn at_end(st: &Stats, exiting: bool) -> Result<(), String> {
    if CTX.get().is_none() {
        return Ok(());
    }
    let mut r = Ok(());
    let mut wrote = false;
    if st.attached() || !st.is_zero() {
        if let Some((json, live)) = paths() {
            let doc = stats::json_document(
                &st.snapshot(),
                PID.load(Ordering::Relaxed),
                START.load(Ordering::Relaxed),
                &program(),
            );
            match write_atomically(&json, doc.as_bytes()) {
                Ok(()) => {
                    wrote = true;
                    if exiting && !PAGE.load(Ordering::Acquire).is_null() {
                        if let Ok(c) = CString::new(live) {
                            unlink(&c);
                        }
                    }
                }
                Err(e) => r = Err(format!("cannot write the statistics file {}: {e}", String::from_utf8_lossy(&json))),
            }
        }
    }
    append_index(if exiting { "exit" } else { "exec" }, format_args!(",\"stats\":{wrote}"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn names() {
        assert_eq!(index_path(b"/s/r.%h.%p.json", b"n"), b"/s/r.n.index.jsonl");
        assert_eq!(index_path(b"/s/st.json", b"n"), b"/s/st.json.index");
        assert_eq!(live_path(b"/s/r.n.7.json", 99), b"/s/r.n.7.json.99.live");
        assert_eq!(files_path(b"/s/r.n.7.json", 99), b"/s/r.n.7.json.99.files");
    }

    #[test]
    fn a_page_reads_back() {
        let mut v = [0u64; SLOTS];
        v[stats::Counter::ReadBytes as usize] = 123;
        v[SLOTS - 1] = 4;
        let p = live_page(42, 77, 1000, b"python3", b"node1", &v);
        let f = parse_live(&p).unwrap();
        assert_eq!((f.pid, f.starttime, f.uid), (42, 77, 1000));
        assert_eq!((f.program.as_str(), f.host.as_str()), ("python3", "node1"));
        assert_eq!(f.counters.len(), stats::Counter::ALL.len());
        assert!(f.counters.contains(&("read_bytes".to_string(), 123)));
        assert_eq!(f.fallbacks.last().unwrap().1, 4);
        let long = live_page(1, 1, 0, &[b'x'; 40], &[b'h'; 100], &v);
        assert_eq!(parse_live(&long).unwrap().program, "x".repeat(15));
    }

    #[test]
    fn damaged_pages_are_refused() {
        let good = live_page(42, 77, 0, b"p", b"h", &[0; SLOTS]);
        let damage: &[(usize, u8)] = &[
            (0, b'X'),
            (8, 9),
            (16, 0),
            (23, 0x80),
            (32, 0xff),
            (40, 1),
            (44, 0xff),
            (49, 0),
            (OFF_NAMES + 2, b'\n'),
            (OFF_NAMES + 1, b'A'),
            (OFF_PROGRAM + PROGRAM_LEN - 1, b'x'),
            (LIVE_SIZE - 1, 1),
        ];
        for &(at, b) in damage {
            let mut p = good.clone();
            p[at] = b;
            if at == 16 {
                p[16..24].fill(0);
            }
            assert!(parse_live(&p).is_err(), "damage at {at} accepted");
        }
        assert!(parse_live(&good[..100]).is_err());
        assert!(parse_live(&[0u8; LIVE_SIZE]).is_err());
        assert!(parse_live(b"").is_err());
    }

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("s3dlio-statsdir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn links_are_never_followed() {
        let d = tmpdir("links");
        let victim = d.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = d.join("log");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let c = CString::new(link.as_os_str().as_bytes()).unwrap();
        assert_eq!(open_append(&c), Err(Refusal::Errno(libc::ELOOP)));
        let target = d.join("st.json");
        std::os::unix::fs::symlink(&victim, d.join(format!("st.json.tmp{}", sys::gettid()))).unwrap();
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_atomically(target.as_os_str().as_bytes(), b"{}\n").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&target).unwrap(), b"{}\n");
        assert!(!std::fs::symlink_metadata(&target).unwrap().file_type().is_symlink());
        let fresh = CString::new(d.join("new").as_os_str().as_bytes()).unwrap();
        let fd = open_append(&fresh).unwrap();
        sys::close(fd).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(d.join("new")).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
