//! `s3dlio-direct probe`: what the kernel offers O_DIRECT on a path, found the way the
//! library finds it (F_SETFL, `align::discover`) and then confirmed with real I/O.

use crate::{absolute_globs, current_dir, error, warning, ProbeArgs, EXIT_OWN_FAILURE};
use s3dlio_engine::align::{self, Alignment};
use s3dlio_engine::config::{Config, MapMode, VAR_EXCLUDE, VAR_MAP, VAR_MAP_BUDGET, VAR_PATHS, VAR_PROGRAMS};
use s3dlio_engine::pathmatch::normalize_into;
use s3dlio_engine::probe::{self, errno_name, Refusal};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A yes/no answer and the kernel's words for it; `None`: could not be tried.
struct Answer {
    ok: Option<bool>,
    detail: String,
}

impl Answer {
    fn json(&self) -> Value {
        json!({ "supported": self.ok, "detail": self.detail })
    }
}

struct Mount {
    fstype: String,
    source: String,
    point: PathBuf,
}

struct Report {
    path: PathBuf,
    /// The file actually opened, when it is not `path` itself.
    tested: Option<PathBuf>,
    note: Option<String>,
    mount: Option<Mount>,
    direct: Answer,
    align: Option<Alignment>,
    effective: Option<Alignment>,
    dontcache: Answer,
    pattern: Pattern,
    /// What a mapping (mmap) of the path would get.
    mapping: String,
    /// The path with its symlinks resolved, when that is another name, and what the library
    /// would decide for a program that opens it by that name.
    resolved: Option<(PathBuf, Pattern)>,
}

struct Pattern {
    direct: bool,
    entry: Option<String>,
    detail: String,
}

pub fn main(args: ProbeArgs) -> i32 {
    let cwd = match current_dir() {
        Ok(c) => c,
        Err(e) => {
            error(&e);
            return 1;
        }
    };
    let cfg = match config(&args, &cwd) {
        Ok(cfg) => cfg,
        Err(e) => {
            error(&e);
            return EXIT_OWN_FAILURE;
        }
    };
    let mut failed = false;
    let mut reports = Vec::new();
    for target in &args.targets {
        match probe(target, &cwd, &cfg) {
            Ok(r) => reports.push(r),
            Err(e) => {
                error(&e);
                failed = true;
            }
        }
    }
    if args.json {
        println!("{}", Value::Array(reports.iter().map(report_json).collect()));
    } else {
        for (i, r) in reports.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{}", report_text(r));
        }
    }
    i32::from(failed)
}

/// The configuration `run` would give the library: `--paths`/`--exclude` over the
/// environment. PROGRAMS is left out: it would be judged against this command's own name.
/// A malformed `--paths` or `--exclude` is a usage error, as in `run`; a malformed variable
/// in the environment is what the library would meet, so it is reported as the library
/// would and the probe goes on.
fn config(args: &ProbeArgs, cwd: &Path) -> Result<Config, String> {
    let mut vars: Vec<(OsString, OsString)> = Vec::new();
    let mut options = Vec::new();
    if !args.paths.is_empty() {
        vars.push((VAR_PATHS.into(), absolute_globs(&args.paths, cwd)));
        options.push((VAR_PATHS, "--paths"));
    }
    if !args.exclude.is_empty() {
        vars.push((VAR_EXCLUDE.into(), absolute_globs(&args.exclude, cwd)));
        options.push((VAR_EXCLUDE, "--exclude"));
    }
    let inherited =
        std::env::vars_os().filter(|(k, _)| k.as_bytes().starts_with(b"S3DLIO_DIRECT_") && k != VAR_PROGRAMS);
    let (cfg, warnings) = Config::from_vars_by_var(vars.into_iter().chain(inherited));
    let mut refused = Vec::new();
    for (var, w) in warnings {
        match var.and_then(|v| options.iter().find(|(name, _)| *name == v.name)) {
            Some((_, opt)) => refused.push(format!("{}: fix {opt} and try again", w.trim_end_matches("; skipped"))),
            None => warning(&w),
        }
    }
    match refused.is_empty() {
        true => Ok(cfg),
        false => Err(refused.join("\n  ")),
    }
}

fn probe(given: &Path, cwd: &Path, cfg: &Config) -> Result<Report, String> {
    let mut note = None;
    let mut existing = cwd.join(given);
    while std::fs::metadata(&existing).is_err() {
        let Some(parent) = existing.parent() else {
            return Err(format!("{}: nothing along this path exists", given.display()));
        };
        existing = parent.to_path_buf();
        note = Some(format!("does not exist; probed its nearest existing parent {}", existing.display()));
    }
    let real = existing.canonicalize().map_err(|e| format!("{}: {e}", existing.display()))?;
    let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    let mount = mount_of(&real);
    let size = meta.is_file().then_some(meta.len());
    let pattern = pattern(given, cwd, cfg, size);
    let resolved = resolved_name(given, cwd, &existing, &real).map(|r| {
        let p = pattern_of(r.as_os_str().as_bytes(), cfg, size);
        (r, p)
    });

    let opened = if meta.is_dir() {
        open_in_dir(&real)
    } else if meta.is_file() || meta.file_type().is_block_device() {
        File::open(&real).map(|f| Some((f, None, false))).map_err(|e| format!("cannot open {}: {e}", real.display()))
    } else {
        Ok(None)
    };
    let (file, tested, scratch) = match opened? {
        Some(found) => found,
        None => {
            let why = if meta.is_dir() {
                "cannot create a file in this directory and it holds none to open: probe a file in it"
            } else {
                "not a regular file or block device: the library leaves it alone"
            };
            let unknown = || Answer { ok: None, detail: why.to_string() };
            return Ok(Report {
                path: given.to_path_buf(),
                tested: None,
                note,
                mount,
                direct: unknown(),
                align: None,
                effective: None,
                dontcache: unknown(),
                mapping: mapping_text(cfg, &pattern, None),
                pattern,
                resolved,
            });
        }
    };
    let fd = file.as_raw_fd();
    let alignment = align::discover(fd);
    let (effective, align_warning) = alignment.with_minimum(cfg.align);
    if let Some(w) = align_warning {
        warning(&w);
    }
    let dontcache = try_dontcache(fd);
    let direct = try_direct(fd, &alignment, scratch);
    Ok(Report {
        path: given.to_path_buf(),
        tested,
        note,
        mount,
        direct,
        align: Some(alignment),
        effective: (effective != alignment).then_some(effective),
        dontcache,
        mapping: mapping_text(cfg, &pattern, (!scratch && meta.is_file()).then_some((fd, real.as_path()))),
        pattern,
        resolved,
    })
}

/// What a mapping of a file the pattern decision `p` describes would get under the
/// library; the file (open for reading, and its path) tells how its footprint would be
/// measured and given back for this user.
fn mapping_text(cfg: &Config, p: &Pattern, file: Option<(i32, &Path)>) -> String {
    if p.entry.is_none() || !p.detail.starts_with("matches") {
        return "served by the page cache, as without the library (not matched)".into();
    }
    if cfg.map == MapMode::Off {
        return format!("served by the page cache, as without the library ({VAR_MAP}=off)");
    }
    let (budget, whence) = match cfg.map_budget {
        Some(b) => (b, VAR_MAP_BUDGET.to_string()),
        None => (s3dlio_engine::mapped::budget::default_budget(), "the default for this process's memory limit".into()),
    };
    let bounded = format!(
        "bounded, not direct: served by the page cache, at most {} of it per process ({whence})",
        crate::units::human(budget)
    );
    let mut t = match (cfg.map, s3dlio_engine::mapped::direct::available()) {
        (MapMode::Direct, Ok(())) => format!(
            "direct for a read-only mapping while no process has the file open for writing (userfaultfd: this \
             user may), at most {} of memory per process; otherwise {bounded}",
            crate::units::human(budget)
        ),
        (MapMode::Direct, Err(why)) => format!("{bounded}; not direct for this user: {}", why.text()),
        (_, Ok(())) => {
            format!("{bounded}; {VAR_MAP}=direct would serve read-only mappings from the device for this user")
        }
        (_, Err(_)) => bounded,
    };
    if let Some((fd, path)) = file {
        if s3dlio_engine::sys::cachestat(fd).is_err() {
            t.push_str("; measured with mincore (cachestat is refused to a user who may not write the file)");
        }
        let writable = std::ffi::CString::new(path.as_os_str().as_bytes()).is_ok_and(|c| {
            // SAFETY: `c` is NUL-terminated for the call.
            unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
        });
        if !writable {
            t.push_str("; a private writable mapping (np.memmap mode='c', torch.load(mmap=True)) stays unbounded for this user");
        }
    }
    t
}

/// `given` with its symlinks resolved (the existing part canonical, the rest as written),
/// when that differs from the name as a program spells it: the library matches that name,
/// so a program opening the resolved one may be matched differently.
fn resolved_name(given: &Path, cwd: &Path, existing: &Path, real: &Path) -> Option<PathBuf> {
    let spelled = normalized(given, cwd)?;
    let tail = cwd.join(given).strip_prefix(existing).ok()?.to_path_buf();
    let resolved = normalized(&real.join(tail), Path::new("/"))?;
    (resolved != spelled).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&resolved)))
}

/// `path` made absolute against `cwd` and lexically normalised, as the library sees it.
fn normalized(path: &Path, cwd: &Path) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 8192];
    let n = normalize_into(cwd.as_os_str().as_bytes(), path.as_os_str().as_bytes(), &mut buf)?;
    buf.truncate(n);
    Some(buf)
}

/// A file to test a directory with: a new one, deleted at once (so the write test cannot
/// touch anyone's data), else the first file already there, opened read-only. The bool
/// says whether it is the new one.
fn open_in_dir(dir: &Path) -> Result<Option<(File, Option<PathBuf>, bool)>, String> {
    let name = dir.join(format!(".s3dlio-direct-probe.{}", std::process::id()));
    let created = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&name);
    if let Ok(f) = created {
        let _ = std::fs::remove_file(&name);
        return Ok(Some((f, None, true)));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for e in entries.filter_map(Result::ok).take(10_000) {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_file()) {
            if let Ok(f) = File::open(&p) {
                return Ok(Some((f, Some(p), false)));
            }
        }
    }
    Ok(None)
}

/// A one-byte read with RWF_DONTCACHE (Linux 6.14+): the kernel checks the flag before it
/// looks at the file's size, so an empty file answers as well as a full one.
fn try_dontcache(fd: i32) -> Answer {
    let mut byte = [0u8; 1];
    // The raw system call: glibc gained preadv2 only in 2.26, and the wheel's command is
    // built against 2.17.
    // SAFETY: `byte` is writable for one byte and outlives the call.
    let r = unsafe { s3dlio_engine::sys::preadv2(fd, byte.as_mut_ptr(), 1, 0, libc::RWF_DONTCACHE) };
    let Err(e) = r else {
        return Answer { ok: Some(true), detail: "yes: a read with RWF_DONTCACHE went through".into() };
    };
    let why = match (e, kernel_at_least(6, 14)) {
        (libc::EOPNOTSUPP, true) => "this filesystem does not support it",
        (libc::EOPNOTSUPP, false) => "this kernel is older than 6.14, which brought it",
        _ => "the kernel refused it",
    };
    Answer { ok: Some(false), detail: format!("no: {why} ({})", errno_name(e)) }
}

/// Whether the running kernel's release (uname) is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    have >= (major, minor)
}

/// O_DIRECT turned on the way the library does it (F_SETFL after open), then one aligned
/// read (and on a scratch file first one aligned write) to see the kernel take it.
fn try_direct(fd: i32, a: &Alignment, scratch: bool) -> Answer {
    match probe::direct_round_trip(fd, a, scratch) {
        Ok(_) => {
            let what = if scratch { "an aligned write and read went through" } else { "an aligned read went through" };
            Answer { ok: Some(true), detail: format!("yes: {what}") }
        }
        Err(Refusal::NoMemory) => Answer { ok: None, detail: Refusal::NoMemory.to_string() },
        Err(r @ Refusal::FsNoDirect(_)) => {
            Answer { ok: Some(false), detail: format!("no: {r}; the library keeps such files buffered") }
        }
        Err(r) => Answer { ok: Some(false), detail: format!("no: {r}") },
    }
}

/// What the library would decide for `given` as a program spells it (lexically
/// normalised, symlinks not followed), with the entry that decided it.
fn pattern(given: &Path, cwd: &Path, cfg: &Config, size: Option<u64>) -> Pattern {
    pattern_of(&normalized(given, cwd).unwrap_or_default(), cfg, size)
}

/// [`pattern`] for a name already absolute and normalised.
fn pattern_of(norm: &[u8], cfg: &Config, size: Option<u64>) -> Pattern {
    let norm = norm.to_vec();
    if cfg.paths.is_empty() {
        return Pattern {
            direct: false,
            entry: None,
            detail: format!("{VAR_PATHS} is not set (nor --paths given): the library would change nothing"),
        };
    }
    if let Some(e) = cfg.exclude.first_match(&norm) {
        return Pattern {
            direct: false,
            entry: Some(e.to_string()),
            detail: format!("excluded by '{e}': stays buffered"),
        };
    }
    let Some(entry) = cfg.paths.first_match(&norm) else {
        return Pattern { direct: false, entry: None, detail: "no entry of the paths matches: stays buffered".into() };
    };
    if !cfg.wants(&norm) {
        return Pattern {
            direct: false,
            entry: Some(entry.to_string()),
            detail: format!("matches '{entry}', but /proc and /sys are never made direct"),
        };
    }
    let small = size.is_some_and(|s| s < cfg.min_size);
    let detail = if small {
        format!("matches '{entry}'; smaller than the minimum size, so read-only opens stay buffered")
    } else {
        format!("matches '{entry}': direct under the library")
    };
    Pattern { direct: !small, entry: Some(entry.to_string()), detail }
}

/// The mount holding `real` (a canonical path): the last-mounted of the longest mount
/// points that contain it, as /proc/self/mountinfo lists them.
fn mount_of(real: &Path) -> Option<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<Mount> = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else { continue };
        let (Some(point), Some(fstype), Some(source)) = (fields.get(4), fields.get(dash + 1), fields.get(dash + 2))
        else {
            continue;
        };
        let point = PathBuf::from(unescape_mountinfo(point));
        if !real.starts_with(&point) {
            continue;
        }
        let longer = best.as_ref().is_none_or(|b| point.as_os_str().len() >= b.point.as_os_str().len());
        if longer {
            best = Some(Mount { fstype: fstype.to_string(), source: unescape_mountinfo(source), point });
        }
    }
    best
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d[0] <= b'3' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], octal) {
            out.push(d.iter().fold(0u8, |v, c| v * 8 + (c - b'0')));
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn align_text(a: &Alignment) -> String {
    let read = if a.read_offset != a.offset { format!(" (reads {})", a.read_offset) } else { String::new() };
    format!("memory {}, offset and length {}{read}", a.mem, a.offset)
}

fn align_source(a: &Alignment) -> &'static str {
    match a.source {
        align::AlignSource::Statx => "statx STATX_DIOALIGN",
        align::AlignSource::BlockDevice => "the block device's logical block size",
        align::AlignSource::PageSize => "the page size (the kernel reported nothing better)",
    }
}

fn report_text(r: &Report) -> String {
    let mut out = format!("{}\n", r.path.display());
    let mut line = |k: &str, v: &str| out.push_str(&format!("  {k:<14} {v}\n"));
    if let Some(n) = &r.note {
        line("note", n);
    }
    if let Some(t) = &r.tested {
        line("tested with", &t.display().to_string());
    }
    match &r.mount {
        Some(m) => line("filesystem", &format!("{} ({} on {})", m.fstype, m.source, m.point.display())),
        None => line("filesystem", "unknown (not in /proc/self/mountinfo)"),
    }
    line("O_DIRECT", &r.direct.detail);
    match &r.align {
        Some(a) => {
            line("alignment", &format!("{}, from {}", align_text(a), align_source(a)));
            if let Some(e) = &r.effective {
                line("with --align", &align_text(e));
            }
        }
        None => line("alignment", "unknown"),
    }
    line("RWF_DONTCACHE", &r.dontcache.detail);
    line("pattern", &r.pattern.detail);
    line("mapping", &r.mapping);
    if let Some((path, p)) = &r.resolved {
        line("resolves to", &path.display().to_string());
        line("  pattern", &format!("{} (for a program that opens it by this name)", p.detail));
    }
    out
}

fn report_json(r: &Report) -> Value {
    let align = |a: &Alignment| {
        json!({
            "memory": a.mem,
            "offset": a.offset,
            "read_offset": a.read_offset,
            "source": a.source.to_string(),
        })
    };
    json!({
        "path": r.path.to_string_lossy(),
        "tested": r.tested.as_ref().map(|t| t.to_string_lossy().into_owned()),
        "note": r.note,
        "filesystem": r.mount.as_ref().map(|m| json!({
            "type": m.fstype,
            "source": m.source,
            "mount_point": m.point.to_string_lossy(),
        })),
        "o_direct": r.direct.json(),
        "alignment": r.align.as_ref().map(align),
        "effective_alignment": r.effective.as_ref().or(r.align.as_ref()).map(align),
        "rwf_dontcache": r.dontcache.json(),
        "pattern": pattern_json(&r.pattern),
        "mapping": r.mapping,
        "resolved": r.resolved.as_ref().map(|(path, p)| json!({
            "path": path.to_string_lossy(),
            "pattern": pattern_json(p),
        })),
    })
}

fn pattern_json(p: &Pattern) -> Value {
    json!({ "direct": p.direct, "entry": p.entry, "detail": p.detail })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\04"), "/end\\04");
    }

    #[test]
    fn kernel_release_comparison() {
        assert!(kernel_at_least(2, 6));
        assert!(!kernel_at_least(999, 0));
    }

    #[test]
    fn root_is_always_a_mount() {
        let m = mount_of(Path::new("/")).expect("/ is mounted");
        assert_eq!(m.point, Path::new("/"));
        assert!(!m.fstype.is_empty());
    }

    fn cfg(vars: &[(&str, &str)]) -> Config {
        Config::from_vars(vars.iter().copied()).0
    }

    #[test]
    fn what_a_mapping_gets() {
        let cache =
            [("S3DLIO_DIRECT_PATHS", "/data"), ("S3DLIO_DIRECT_MAP_BUDGET", "256MiB"), ("S3DLIO_DIRECT_MAP", "cache")];
        let c = cfg(&cache);
        let cwd = Path::new("/work");
        let t = mapping_text(&c, &pattern(Path::new("/data/x"), cwd, &c, None), None);
        assert!(t.starts_with("bounded, not direct") && t.contains("256.0 MiB"), "{t}");
        // the default: direct where this user may have a userfaultfd, else bounded with why
        let d = cfg(&cache[..2]);
        let t = mapping_text(&d, &pattern(Path::new("/data/x"), cwd, &d, None), None);
        match s3dlio_engine::mapped::direct::available() {
            Ok(()) => assert!(t.starts_with("direct for a read-only mapping"), "{t}"),
            Err(why) => assert!(t.starts_with("bounded, not direct") && t.contains(why.text()), "{t}"),
        }
        assert!(mapping_text(&c, &pattern(Path::new("/else"), cwd, &c, None), None).contains("not matched"));
        let off = cfg(&[("S3DLIO_DIRECT_PATHS", "/data"), ("S3DLIO_DIRECT_MAP", "off")]);
        assert!(mapping_text(&off, &pattern(Path::new("/data/x"), cwd, &off, None), None).contains("MAP=off"));
    }

    #[test]
    fn pattern_decisions() {
        let cwd = Path::new("/work");
        let c = cfg(&[("S3DLIO_DIRECT_PATHS", "/work/data:/proc"), ("S3DLIO_DIRECT_EXCLUDE", "/work/data/logs")]);
        let p = pattern(Path::new("data/x.bin"), cwd, &c, Some(10));
        assert!(p.direct);
        assert_eq!(p.entry.as_deref(), Some("/work/data"));
        let p = pattern(Path::new("/work/data/logs/a"), cwd, &c, None);
        assert!(!p.direct);
        assert!(p.detail.starts_with("excluded by '/work/data/logs'"), "{}", p.detail);
        assert!(!pattern(Path::new("/elsewhere"), cwd, &c, None).direct);
        assert!(pattern(Path::new("/proc/self/maps"), cwd, &c, None).detail.contains("never"));
        let small = cfg(&[("S3DLIO_DIRECT_PATHS", "/work"), ("S3DLIO_DIRECT_MIN_SIZE", "1M")]);
        assert!(!pattern(Path::new("f"), cwd, &small, Some(10)).direct);
        assert!(pattern(Path::new("f"), cwd, &small, Some(2 << 20)).direct);
        assert!(pattern(Path::new("f"), cwd, &cfg(&[]), None).detail.contains("is not set"));
    }
}
