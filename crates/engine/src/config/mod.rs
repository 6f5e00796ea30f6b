//! Reading the `S3DLIO_DIRECT_*` environment variables into a [`Config`], with exactly one warning per malformed variable.
//!
//! A bad value never stops the program and never affects another variable: it is replaced by
//! a documented fallback and reported once. An empty value means the same as unset, without a
//! warning. If a name occurs twice in the environment the first occurrence wins, as with
//! `getenv`. Values are read as raw bytes: `PATHS`, `EXCLUDE`, `PROGRAMS`, `LOG_FILE` and
//! `STATS` may hold any non-NUL bytes (file names need not be UTF-8); the other variables
//! must be ASCII words or numbers.
//!
//! The variables, their defaults and their parsers are declared once, in [`VARS`].

use crate::pathmatch::PatternSet;
use crate::sys;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;

mod vars;
pub use vars::*;

const PREFIX: &str = "S3DLIO_DIRECT_";
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// How matched files' calls reach the device (`S3DLIO_DIRECT_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// O_DIRECT, with read-ahead and write-behind for small calls (the default).
    Direct,
    /// Every call through the page cache with RWF_DONTCACHE (Linux 6.14+), which drops the
    /// pages it brought in; for comparison and for devices where that is faster.
    Dontcache,
}

impl Mode {
    /// Every mode, in the order warnings list them.
    pub const ALL: [Mode; 2] = [Mode::Direct, Mode::Dontcache];

    /// Parse `direct` or `dontcache` in any case (surrounding whitespace ignored).
    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| s.trim().eq_ignore_ascii_case(m.as_str()))
    }

    /// The lower-case word, as accepted by [`Mode::parse`].
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Dontcache => "dontcache",
        }
    }
}

/// What a mapping of a matched file gets (`S3DLIO_DIRECT_MAP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapMode {
    /// Served by the page cache, its footprint there kept within `S3DLIO_DIRECT_MAP_BUDGET`
    /// (the default).
    Cache,
    /// Served by the page cache as without the library.
    Off,
    /// Read-only mappings served straight from the device (userfaultfd, O_DIRECT) where the
    /// process may and no one writes the file; the others as `Cache`.
    Direct,
}

impl MapMode {
    /// Every mode, in the order warnings list them.
    pub const ALL: [MapMode; 3] = [MapMode::Cache, MapMode::Off, MapMode::Direct];

    /// Parse `cache`, `off` or `direct` in any case (surrounding whitespace ignored).
    pub fn parse(s: &str) -> Option<MapMode> {
        MapMode::ALL.into_iter().find(|m| s.trim().eq_ignore_ascii_case(m.as_str()))
    }

    /// The lower-case word, as accepted by [`MapMode::parse`].
    pub const fn as_str(self) -> &'static str {
        match self {
            MapMode::Cache => "cache",
            MapMode::Off => "off",
            MapMode::Direct => "direct",
        }
    }
}

/// How much the shim logs. Ordered: a message is emitted when its level is `<=` the
/// configured one (`Error` is the least verbose).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Only failures that change behaviour.
    Error,
    /// Also fallbacks and malformed configuration (the default).
    Warn,
    /// Also notable decisions (which files went direct, and why not).
    Info,
    /// Everything the shim can say (still one line per distinct cause).
    Debug,
}

impl LogLevel {
    /// Every level, least verbose first.
    pub const ALL: [LogLevel; 4] = [LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug];

    /// Parse `error`, `warn`, `info`, `debug` in any case (surrounding whitespace ignored).
    pub fn parse(s: &str) -> Option<LogLevel> {
        LogLevel::ALL.into_iter().find(|l| s.trim().eq_ignore_ascii_case(l.as_str()))
    }

    /// The lower-case word, as accepted by [`LogLevel::parse`].
    pub const fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// The shim's configuration, read once at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// `S3DLIO_DIRECT_PATHS`: files to make direct. Empty: the shim changes nothing.
    pub paths: PatternSet,
    /// `S3DLIO_DIRECT_EXCLUDE`: wins over `paths`.
    pub exclude: PatternSet,
    /// `S3DLIO_DIRECT_SYNC`: add O_SYNC at open of matched files (default [`DEFAULT_SYNC`]).
    pub sync: bool,
    /// `S3DLIO_DIRECT_ALIGN`, a power of two in 1..=[`MAX_ALIGN`]; `None`: the kernel's alignment.
    pub align: Option<usize>,
    /// `S3DLIO_DIRECT_MIN_SIZE`: read-only opens of smaller regular files stay buffered
    /// (default [`DEFAULT_MIN_SIZE`]).
    pub min_size: u64,
    /// `S3DLIO_DIRECT_LOG`, default [`DEFAULT_LOG_LEVEL`].
    pub log_level: LogLevel,
    /// `S3DLIO_DIRECT_LOG_FILE`; `None`: stderr.
    pub log_file: Option<OsString>,
    /// `S3DLIO_DIRECT_STATS`, the raw template: `%p`/`%h` are NOT expanded here (the pid
    /// changes at fork, so expansion happens when the file is written).
    pub stats_path: Option<OsString>,
    /// `S3DLIO_DIRECT_POOL`, default [`DEFAULT_POOL_BYTES`], at least [`MIN_POOL_BYTES`].
    pub pool_bytes: usize,
    /// `S3DLIO_DIRECT_PROGRAMS`; `None`: every program.
    pub programs: Option<ProgramSet>,
    /// `S3DLIO_DIRECT_READAHEAD`, default [`DEFAULT_READAHEAD`], 0: off; else a multiple of
    /// [`MIN_READAHEAD`].
    pub readahead: usize,
    /// `S3DLIO_DIRECT_WRITE_BEHIND`, default [`DEFAULT_WRITE_BEHIND`], 0: off.
    pub write_behind: usize,
    /// `S3DLIO_DIRECT_MODE`, default [`DEFAULT_MODE`].
    pub mode: Mode,
    /// `S3DLIO_DIRECT_MAP`, default [`DEFAULT_MAP`].
    pub map: MapMode,
    /// `S3DLIO_DIRECT_MAP_BUDGET` in bytes; `None`: derived from the process's memory limit
    /// when the library loads (`crate::mapped::budget`).
    pub map_budget: Option<u64>,
    /// Whether this process is one of `programs`: decided once, when the variables are read,
    /// because `enabled` runs inside every `open()`.
    pub program_selected: bool,
}

impl Default for Config {
    /// Every variable unset: no paths, so the shim changes nothing; the `DEFAULT_*`
    /// constants for the rest.
    fn default() -> Self {
        Config {
            paths: PatternSet::default(),
            exclude: PatternSet::default(),
            sync: DEFAULT_SYNC,
            align: None,
            min_size: DEFAULT_MIN_SIZE,
            log_level: DEFAULT_LOG_LEVEL,
            log_file: None,
            stats_path: None,
            pool_bytes: DEFAULT_POOL_BYTES,
            readahead: DEFAULT_READAHEAD,
            write_behind: DEFAULT_WRITE_BEHIND,
            mode: DEFAULT_MODE,
            map: DEFAULT_MAP,
            map_budget: None,
            programs: None,
            program_selected: true,
        }
    }
}

impl Config {
    /// Build from (name, value) pairs (tests pass them directly; the shim passes the process
    /// environment). Names not starting with `S3DLIO_DIRECT_` are ignored; unknown
    /// `S3DLIO_DIRECT_*` names get a warning ("unknown variable ... ignored").
    ///
    /// Returns the config and the warnings: exactly one message per malformed variable,
    /// naming the variable, the bad value and the value used instead, e.g.
    /// "S3DLIO_DIRECT_MIN_SIZE='12Q' is not a size (use e.g. 4096, 64K, 1MiB); using 0".
    /// `PATHS`/`EXCLUDE` give one warning per skipped entry instead (see
    /// [`PatternSet::parse`]).
    pub fn from_vars<I, K, V>(vars: I) -> (Config, Vec<String>)
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let (cfg, warnings) = Self::from_vars_by_var(vars);
        (cfg, warnings.into_iter().map(|(_, w)| w).collect())
    }

    /// [`Config::from_vars`], each warning with the variable it is about (`None`: an unknown
    /// name), for a caller that says which of its inputs to fix.
    pub fn from_vars_by_var<I, K, V>(vars: I) -> (Config, Vec<(Option<&'static Var>, String)>)
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut cfg = Config::default();
        let mut warnings = Vec::new();
        let mut seen: Vec<&'static str> = Vec::new();
        for (k, v) in vars {
            let name_bytes = k.as_ref().as_bytes();
            if !name_bytes.starts_with(PREFIX.as_bytes()) {
                continue;
            }
            let Some(var) = Var::lookup(name_bytes) else {
                let known: Vec<&str> = VARS.iter().map(|v| v.name).collect();
                let text = format!(
                    "unknown variable {} ignored (known: {})",
                    String::from_utf8_lossy(name_bytes),
                    known.join(", ")
                );
                warnings.push((None, text));
                continue;
            };
            if seen.contains(&var.name) {
                continue;
            }
            seen.push(var.name);
            let mut w = Vec::new();
            var.apply(&mut cfg, v.as_ref().as_bytes(), &mut w);
            warnings.extend(w.into_iter().map(|w| (Some(var), w)));
        }
        if let Some(programs) = &cfg.programs {
            let names = current_program_names();
            cfg.program_selected = programs.matches_any(names.iter().map(Vec::as_slice));
        }
        (cfg, warnings)
    }

    /// [`Config::from_vars`] over the process environment (`std::env::vars_os`).
    pub fn from_env() -> (Config, Vec<String>) {
        Self::from_vars(std::env::vars_os())
    }

    /// True when PATHS has at least one usable entry and PROGRAMS (if set) names this
    /// program: otherwise the shim changes nothing.
    pub fn enabled(&self) -> bool {
        self.program_selected && !self.paths.is_empty()
    }

    /// Whether `path` (absolute and normalised) should be direct: PATHS matches, EXCLUDE does
    /// not, and it is not in /proc or /sys (pseudo-files there break under O_DIRECT and are
    /// never data). File-type checks happen at open, not here.
    pub fn wants(&self, path: &[u8]) -> bool {
        self.enabled() && !is_pseudo_fs(path) && self.paths.matches(path) && !self.exclude.matches(path)
    }
}

/// The `S3DLIO_DIRECT_PROGRAMS` list: globs in the PATHS language (`*`, `?`, `[...]`, `\`)
/// over a program's base name, so `python3*` matches `/usr/bin/python3.11`.
#[derive(Clone, Default)]
pub struct ProgramSet {
    /// Each usable entry made into a one-component absolute glob (`/python3*`), which gives
    /// names exactly the PATHS glob semantics.
    globs: PatternSet,
    texts: Vec<String>,
}

impl fmt::Debug for ProgramSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.texts).finish()
    }
}

impl ProgramSet {
    /// Parse a colon-separated list (`\:` is a literal colon). Returns the set and one
    /// description per unusable entry: one with a `/` (a base name has none), `.`, `..`, or
    /// a malformed glob. Empty entries are ignored.
    pub fn parse(spec: &[u8]) -> (ProgramSet, Vec<String>) {
        let mut joined = Vec::with_capacity(spec.len() + 8);
        let mut texts = Vec::new();
        let mut bad = Vec::new();
        for entry in crate::pathmatch::split_list(spec).filter(|e| !e.is_empty()) {
            let text = String::from_utf8_lossy(entry).into_owned();
            let mut glob = Vec::with_capacity(entry.len() + 1);
            glob.push(b'/');
            glob.extend_from_slice(entry);
            let why = if entry.contains(&b'/') {
                Some("contains '/'")
            } else if entry == b"." || entry == b".." {
                Some("is not a program name")
            } else if !PatternSet::parse_bytes(VAR_PROGRAMS, &glob).1.is_empty() {
                Some("is not a valid glob")
            } else {
                None
            };
            match why {
                Some(why) => bad.push(format!("'{text}' {why}")),
                None => {
                    if !joined.is_empty() {
                        joined.push(b':');
                    }
                    joined.extend_from_slice(&glob);
                    texts.push(text);
                }
            }
        }
        let (globs, _) = PatternSet::parse_bytes(VAR_PROGRAMS, &joined);
        (ProgramSet { globs, texts }, bad)
    }

    /// True when no usable entry was parsed: no program matches.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Whether `name` (a base name, no `/`) matches an entry.
    pub fn matches(&self, name: &[u8]) -> bool {
        let mut path = Vec::with_capacity(name.len() + 1);
        path.push(b'/');
        path.extend_from_slice(name);
        !name.is_empty() && !name.contains(&b'/') && self.globs.matches(&path)
    }

    /// Whether any of `names` matches (a program is known by more than one name).
    pub fn matches_any<'a>(&self, mut names: impl Iterator<Item = &'a [u8]>) -> bool {
        names.any(|n| self.matches(n))
    }
}

/// The base names this process goes by: that of its executable (/proc/self/exe) and that of
/// its argv[0] (a script run through an interpreter, a symlink such as `python3` to
/// `python3.11`, or a multi-call binary differ there). Read with raw calls: this runs in the
/// shim's constructor.
fn current_program_names() -> Vec<Vec<u8>> {
    let mut names = Vec::with_capacity(2);
    let mut buf = [0u8; 4096];
    if let Ok(n @ 1..) = sys::readlink(c"/proc/self/exe", &mut buf) {
        names.push(base_name(&buf[..n]).to_vec());
    }
    if let Ok(n) = sys::read_small_file(c"/proc/self/cmdline", &mut buf) {
        if let Some(argv0) = buf[..n].split(|&b| b == 0).next().filter(|a| !a.is_empty()) {
            names.push(base_name(argv0).to_vec());
        }
    }
    names
}

fn base_name(path: &[u8]) -> &[u8] {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    trimmed.rsplit(|&b| b == b'/').next().unwrap_or(trimmed)
}

/// `/proc`, `/sys` and anything below them (whole components: `/procfs` is not).
fn is_pseudo_fs(path: &[u8]) -> bool {
    [b"/proc".as_slice(), b"/sys".as_slice()]
        .iter()
        .any(|p| path.strip_prefix(*p).is_some_and(|rest| rest.is_empty() || rest[0] == b'/'))
}

/// Parse a byte size: decimal digits, optionally followed by a suffix `K`, `M`, `G`, `KiB`,
/// `MiB` or `GiB` in any case, all powers of 1024 (users of this knob think in blocks, and
/// `64K` meaning 64000 would never be what they wanted). Whitespace around the value and
/// between number and suffix is allowed ("64 KiB"). `None` if malformed (sign, fraction,
/// other suffix, no digits) or if the result overflows u64.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let (num, suffix) = s.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let suffix = suffix.trim_start();
    let mult = [("", 1), ("k", KIB), ("kib", KIB), ("m", MIB), ("mib", MIB), ("g", GIB), ("gib", GIB)]
        .into_iter()
        .find(|(w, _)| suffix.eq_ignore_ascii_case(w))
        .map(|(_, m)| m)?;
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn cfg(vars: &[(&str, &str)]) -> (Config, Vec<String>) {
        Config::from_vars(vars.iter().copied())
    }

    /// Parse and require exactly one warning, returned.
    fn one_warning(vars: &[(&str, &str)]) -> (Config, String) {
        let (c, w) = cfg(vars);
        assert_eq!(w.len(), 1, "{vars:?}: {w:?}");
        (c, w.into_iter().next().unwrap_or_default())
    }

    fn assert_default_except_nothing(c: &Config) {
        let d = Config::default();
        assert_eq!(c.sync, d.sync);
        assert_eq!(c.align, d.align);
        assert_eq!(c.min_size, d.min_size);
        assert_eq!(c.log_level, d.log_level);
        assert_eq!(c.log_file, d.log_file);
        assert_eq!(c.stats_path, d.stats_path);
        assert_eq!(c.pool_bytes, d.pool_bytes);
        assert!(c.paths.is_empty());
        assert!(c.exclude.is_empty());
    }

    #[test]
    fn defaults() {
        let d = Config::default();
        assert!(!d.enabled());
        assert!(!d.wants(b"/data/x"));
        assert!(!d.sync);
        assert_eq!(d.align, None);
        assert_eq!(d.min_size, 0);
        assert_eq!(d.log_level, LogLevel::Warn);
        assert_eq!(d.log_file, None);
        assert_eq!(d.stats_path, None);
        assert_eq!(d.pool_bytes, 64 << 20);
        let (c, w) = cfg(&[]);
        assert!(w.is_empty());
        assert_default_except_nothing(&c);
    }

    #[test]
    fn unrelated_variables_are_ignored_silently() {
        let (c, w) = cfg(&[
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
            ("S3DLIO_DIRECT", "x"),
            ("s3dlio_direct_paths", "/data"),
            ("XS3DLIO_DIRECT_PATHS", "/data"),
        ]);
        assert!(w.is_empty(), "{w:?}");
        assert_default_except_nothing(&c);
    }

    #[test]
    fn unknown_prefixed_variable_warns() {
        let (c, w) = one_warning(&[("S3DLIO_DIRECT_PATH", "/data"), ("S3DLIO_DIRECT_SYNC", "1")]);
        assert!(w.starts_with("unknown variable S3DLIO_DIRECT_PATH ignored"), "{w}");
        assert!(c.sync);
        assert!(!c.enabled());
    }

    #[test]
    fn empty_values_mean_default_without_warning() {
        let vars: Vec<(&str, &str)> = VARS.iter().map(|v| (v.name, "")).collect();
        let (c, w) = cfg(&vars);
        assert!(w.is_empty(), "{w:?}");
        assert_default_except_nothing(&c);
        let (_, w) = cfg(&[("S3DLIO_DIRECT_MIN_SIZE", "  "), ("S3DLIO_DIRECT_SYNC", " ")]);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn paths_and_exclude() {
        let (c, w) = cfg(&[("S3DLIO_DIRECT_PATHS", "/data:/scratch/**/*.bin"), ("S3DLIO_DIRECT_EXCLUDE", "/data/tmp")]);
        assert!(w.is_empty(), "{w:?}");
        assert!(c.enabled());
        assert!(c.wants(b"/data/x"));
        assert!(c.wants(b"/data"));
        assert!(!c.wants(b"/database"));
        assert!(!c.wants(b"/data/tmp"));
        assert!(!c.wants(b"/data/tmp/x"));
        assert!(c.wants(b"/data/tmpfile"));
        assert!(c.wants(b"/scratch/a/b.bin"));
        assert!(!c.wants(b"/scratch/a/b.txt"));
        assert!(!c.wants(b"/other"));
    }

    #[test]
    fn exclude_without_paths_is_not_enabled() {
        let (c, w) = cfg(&[("S3DLIO_DIRECT_EXCLUDE", "/x")]);
        assert!(w.is_empty());
        assert!(!c.enabled());
        assert!(!c.wants(b"/y"));
    }

    #[test]
    fn never_proc_or_sys() {
        let (c, _) = cfg(&[("S3DLIO_DIRECT_PATHS", "/")]);
        assert!(c.wants(b"/data/x"));
        assert!(c.wants(b"/"));
        for p in ["/proc", "/proc/self/fdinfo/3", "/sys", "/sys/block/sda/queue"] {
            assert!(!c.wants(p.as_bytes()), "{p}");
        }
        assert!(c.wants(b"/procfs"));
        assert!(c.wants(b"/system"));
        let (c, _) = cfg(&[("S3DLIO_DIRECT_PATHS", "/proc:/sys/**")]);
        assert!(c.enabled());
        assert!(!c.wants(b"/proc/1/maps"));
        assert!(!c.wants(b"/sys/x"));
    }

    #[test]
    fn paths_warnings_are_per_entry_and_others_apply() {
        let (c, w) = cfg(&[
            ("S3DLIO_DIRECT_PATHS", "rel:/ok:/bad["),
            ("S3DLIO_DIRECT_EXCLUDE", "also/rel:/ok/no"),
            ("S3DLIO_DIRECT_MIN_SIZE", "1K"),
        ]);
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(w[0], "S3DLIO_DIRECT_PATHS entry 'rel' is not absolute; skipped");
        assert!(w[1].starts_with("S3DLIO_DIRECT_PATHS entry '/bad['"));
        assert!(w[2].starts_with("S3DLIO_DIRECT_EXCLUDE entry 'also/rel'"));
        assert!(c.wants(b"/ok/yes"));
        assert!(!c.wants(b"/ok/no/f"));
        assert_eq!(c.min_size, 1024);
    }

    #[test]
    fn paths_all_bad_is_not_enabled() {
        let (c, w) = cfg(&[("S3DLIO_DIRECT_PATHS", "a:b")]);
        assert_eq!(w.len(), 2);
        assert!(!c.enabled());
    }

    #[test]
    fn paths_non_utf8_bytes_are_kept_exactly() {
        let name = OsString::from(VAR_PATHS);
        let value = OsString::from_vec(b"/d\xffx:/plain".to_vec());
        let (c, w) = Config::from_vars([(name, value)]);
        assert!(w.is_empty(), "{w:?}");
        assert!(c.wants(b"/d\xffx/f"));
        assert!(!c.wants(b"/d\xfex/f"));
        assert!(c.wants(b"/plain"));
    }

    #[test]
    fn sync_values() {
        for v in ["1", "true", "TRUE", "Yes", "on", "ON", " on "] {
            let (c, w) = cfg(&[("S3DLIO_DIRECT_SYNC", v)]);
            assert!(w.is_empty(), "{v}: {w:?}");
            assert!(c.sync, "{v}");
        }
        for v in ["0", "false", "False", "no", "NO", "off", "Off", ""] {
            let (c, w) = cfg(&[("S3DLIO_DIRECT_SYNC", v)]);
            assert!(w.is_empty(), "{v}: {w:?}");
            assert!(!c.sync, "{v}");
        }
        for v in ["2", "maybe", "y", "enable", "truee", "-1"] {
            let (c, w) = one_warning(&[("S3DLIO_DIRECT_SYNC", v)]);
            assert!(!c.sync);
            assert_eq!(
                w,
                format!("S3DLIO_DIRECT_SYNC='{v}' is not a boolean (use 1/0, true/false, yes/no, on/off); using off")
            );
        }
    }

    #[test]
    fn align_values() {
        for (v, want) in [
            ("1", 1usize),
            ("512", 512),
            ("4096", 4096),
            ("4K", 4096),
            ("4kib", 4096),
            ("1MiB", 1 << 20),
            ("1G", 1 << 30),
            (" 8192 ", 8192),
        ] {
            let (c, w) = cfg(&[("S3DLIO_DIRECT_ALIGN", v)]);
            assert!(w.is_empty(), "{v}: {w:?}");
            assert_eq!(c.align, Some(want), "{v}");
        }
        for v in ["0", "3", "3000", "2G", "4Q", "-4096", "x", "4096.0", "99999999999999999999"] {
            let (c, w) = one_warning(&[("S3DLIO_DIRECT_ALIGN", v)]);
            assert_eq!(c.align, None, "{v}");
            assert!(w.starts_with(&format!("S3DLIO_DIRECT_ALIGN='{v}' ")), "{w}");
            assert!(w.ends_with("using the kernel's alignment"), "{w}");
        }
    }

    #[test]
    fn min_size_values() {
        for (v, want) in [
            ("0", 0u64),
            ("4096", 4096),
            ("64K", 64 << 10),
            ("64k", 64 << 10),
            ("1M", 1 << 20),
            ("1MiB", 1 << 20),
            ("1mib", 1 << 20),
            ("2G", 2 << 30),
            ("2GiB", 2 << 30),
            ("3 KiB", 3 << 10),
        ] {
            let (c, w) = cfg(&[("S3DLIO_DIRECT_MIN_SIZE", v)]);
            assert!(w.is_empty(), "{v}: {w:?}");
            assert_eq!(c.min_size, want, "{v}");
        }
        let (c, w) = one_warning(&[("S3DLIO_DIRECT_MIN_SIZE", "12Q")]);
        assert_eq!(c.min_size, 0);
        assert_eq!(w, "S3DLIO_DIRECT_MIN_SIZE='12Q' is not a size (use e.g. 4096, 64K, 1MiB); using 0");
        for v in ["K", "-1", "1.5M", "1 M B", "1KB", "1T", "0x10", "18446744073709551616"] {
            let (c, w) = one_warning(&[("S3DLIO_DIRECT_MIN_SIZE", v)]);
            assert_eq!(c.min_size, 0, "{v}");
            assert!(w.ends_with("; using 0"), "{w}");
        }
    }

    #[test]
    fn log_values() {
        for (v, want) in [
            ("error", LogLevel::Error),
            ("WARN", LogLevel::Warn),
            ("Info", LogLevel::Info),
            ("debug", LogLevel::Debug),
            (" debug\n", LogLevel::Debug),
        ] {
            let (c, w) = cfg(&[("S3DLIO_DIRECT_LOG", v)]);
            assert!(w.is_empty(), "{v}: {w:?}");
            assert_eq!(c.log_level, want, "{v}");
        }
        let (c, w) = one_warning(&[("S3DLIO_DIRECT_LOG", "loud")]);
        assert_eq!(c.log_level, LogLevel::Warn);
        assert_eq!(w, "S3DLIO_DIRECT_LOG='loud' is not one of error, warn, info, debug; using warn");
        let (_, w) = one_warning(&[("S3DLIO_DIRECT_LOG", "warning")]);
        assert!(w.contains("'warning'"));
    }

    #[test]
    fn log_level_order_and_words() {
        assert!(LogLevel::Error < LogLevel::Warn);
        assert!(LogLevel::Warn < LogLevel::Info);
        assert!(LogLevel::Info < LogLevel::Debug);
        for l in [LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug] {
            assert_eq!(LogLevel::parse(l.as_str()), Some(l));
        }
        assert_eq!(LogLevel::parse(""), None);
    }

    #[test]
    fn log_file_and_stats_are_raw() {
        let (c, w) =
            cfg(&[("S3DLIO_DIRECT_LOG_FILE", "/tmp/s3dlio.log"), ("S3DLIO_DIRECT_STATS", "/tmp/stats-%h-%p.json")]);
        assert!(w.is_empty());
        assert_eq!(c.log_file, Some(OsString::from("/tmp/s3dlio.log")));
        assert_eq!(c.stats_path, Some(OsString::from("/tmp/stats-%h-%p.json")));
        // Non-UTF-8 bytes survive.
        let (c, w) = Config::from_vars([(OsString::from(VAR_STATS), OsString::from_vec(b"/tmp/\xff.json".to_vec()))]);
        assert!(w.is_empty());
        assert_eq!(c.stats_path.map(OsString::into_vec), Some(b"/tmp/\xff.json".to_vec()));
    }

    #[test]
    fn pool_values() {
        for (v, want) in [("1MiB", 1usize << 20), ("64M", 64 << 20), ("1G", 1 << 30), ("2097152", 2 << 20)] {
            let (c, w) = cfg(&[("S3DLIO_DIRECT_POOL", v)]);
            assert!(w.is_empty(), "{v}: {w:?}");
            assert_eq!(c.pool_bytes, want, "{v}");
        }
        for v in ["0", "1K", "1048575"] {
            let (c, w) = one_warning(&[("S3DLIO_DIRECT_POOL", v)]);
            assert_eq!(c.pool_bytes, 1 << 20, "{v}");
            assert_eq!(w, format!("S3DLIO_DIRECT_POOL='{v}' is below the minimum of 1MiB; using 1MiB"));
        }
        for v in ["lots", "64MB", "-1"] {
            let (c, w) = one_warning(&[("S3DLIO_DIRECT_POOL", v)]);
            assert_eq!(c.pool_bytes, 64 << 20, "{v}");
            assert!(w.ends_with("; using 64MiB"), "{w}");
            assert!(w.contains(&format!("'{v}'")), "{w}");
        }
    }

    #[test]
    fn readahead_values() {
        for (v, want) in [("0", 0usize), ("64K", 64 << 10), ("100K", 128 << 10), ("8MiB", 8 << 20), ("1G", 1 << 30)] {
            let (c, w) = cfg(&[("S3DLIO_DIRECT_READAHEAD", v)]);
            assert!(w.is_empty(), "{v}: {w:?}");
            assert_eq!(c.readahead, want, "{v}");
        }
        for v in ["1", "4K", "65535"] {
            let (c, w) = one_warning(&[("S3DLIO_DIRECT_READAHEAD", v)]);
            assert_eq!(c.readahead, 64 << 10, "{v}");
            assert_eq!(
                w,
                format!("S3DLIO_DIRECT_READAHEAD='{v}' is below the minimum of 64KiB (0 turns it off); using 64KiB")
            );
        }
        for v in ["lots", "2G", "-1", "1.5M"] {
            let (c, w) = one_warning(&[("S3DLIO_DIRECT_READAHEAD", v)]);
            assert_eq!(c.readahead, 4 << 20, "{v}");
            assert_eq!(
                w,
                format!("S3DLIO_DIRECT_READAHEAD='{v}' is not a size up to 1GiB (use e.g. 0, 256K, 8MiB); using 4MiB")
            );
        }
    }

    #[test]
    fn write_behind_values() {
        for (v, want) in [("0", 0usize), ("1", 1), ("3000", 3000), ("256K", 256 << 10), ("1G", 1 << 30)] {
            let (c, w) = cfg(&[("S3DLIO_DIRECT_WRITE_BEHIND", v)]);
            assert!(w.is_empty(), "{v}: {w:?}");
            assert_eq!(c.write_behind, want, "{v}");
        }
        for v in ["lots", "2G", "-1"] {
            let (c, w) = one_warning(&[("S3DLIO_DIRECT_WRITE_BEHIND", v)]);
            assert_eq!(c.write_behind, 1 << 20, "{v}");
            assert_eq!(
                w,
                format!(
                    "S3DLIO_DIRECT_WRITE_BEHIND='{v}' is not a size up to 1GiB (use e.g. 0, 256K, 8MiB); using 1MiB"
                )
            );
        }
    }

    #[test]
    fn mode_values() {
        for (v, want) in [("direct", Mode::Direct), ("DontCache", Mode::Dontcache), (" dontcache\n", Mode::Dontcache)] {
            let (c, w) = cfg(&[("S3DLIO_DIRECT_MODE", v)]);
            assert!(w.is_empty(), "{v}: {w:?}");
            assert_eq!(c.mode, want, "{v}");
        }
        let (c, w) = one_warning(&[("S3DLIO_DIRECT_MODE", "fast")]);
        assert_eq!(c.mode, Mode::Direct);
        assert_eq!(w, "S3DLIO_DIRECT_MODE='fast' is not one of direct, dontcache; using direct");
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.as_str()), Some(m));
        }
    }

    #[test]
    fn non_utf8_scalar_values_warn_with_lossy_text() {
        let (c, w) = Config::from_vars([
            (OsString::from(VAR_MIN_SIZE), OsString::from_vec(b"4\xffK".to_vec())),
            (OsString::from(VAR_SYNC), OsString::from("1")),
        ]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("S3DLIO_DIRECT_MIN_SIZE='4\u{fffd}K'"), "{}", w[0]);
        assert_eq!(c.min_size, 0);
        assert!(c.sync);
    }

    #[test]
    fn bad_variables_never_affect_the_others() {
        let good = [
            ("S3DLIO_DIRECT_PATHS", "/data"),
            ("S3DLIO_DIRECT_EXCLUDE", "/data/tmp"),
            ("S3DLIO_DIRECT_SYNC", "yes"),
            ("S3DLIO_DIRECT_ALIGN", "8K"),
            ("S3DLIO_DIRECT_MIN_SIZE", "1M"),
            ("S3DLIO_DIRECT_LOG", "debug"),
            ("S3DLIO_DIRECT_LOG_FILE", "/tmp/l"),
            ("S3DLIO_DIRECT_STATS", "/tmp/s"),
            ("S3DLIO_DIRECT_POOL", "8M"),
            ("S3DLIO_DIRECT_PROGRAMS", "*"),
            ("S3DLIO_DIRECT_READAHEAD", "8M"),
            ("S3DLIO_DIRECT_WRITE_BEHIND", "0"),
            ("S3DLIO_DIRECT_MODE", "dontcache"),
        ];
        let bad = [
            ("S3DLIO_DIRECT_PATHS", "rel"),
            ("S3DLIO_DIRECT_EXCLUDE", "rel"),
            ("S3DLIO_DIRECT_SYNC", "perhaps"),
            ("S3DLIO_DIRECT_ALIGN", "3"),
            ("S3DLIO_DIRECT_MIN_SIZE", "12Q"),
            ("S3DLIO_DIRECT_LOG", "loud"),
            ("S3DLIO_DIRECT_POOL", "huge"),
            ("S3DLIO_DIRECT_PROGRAMS", "a/b"),
            ("S3DLIO_DIRECT_READAHEAD", "huge"),
            ("S3DLIO_DIRECT_WRITE_BEHIND", "huge"),
            ("S3DLIO_DIRECT_MODE", "fast"),
            ("S3DLIO_DIRECT_BOGUS", "1"),
        ];
        // Swap one variable at a time for its bad value: one warning, all the rest intact.
        for (bad_name, bad_value) in bad {
            let mut vars: Vec<(&str, &str)> = good.iter().copied().filter(|(n, _)| *n != bad_name).collect();
            vars.insert(vars.len() / 2, (bad_name, bad_value));
            let (c, w) = cfg(&vars);
            assert_eq!(w.len(), 1, "{bad_name}: {w:?}");
            assert!(w[0].contains(bad_name), "{}", w[0]);
            let switched_off = bad_name == VAR_PATHS || bad_name == VAR_PROGRAMS;
            assert_eq!(c.enabled(), !switched_off, "{bad_name}");
            if !switched_off {
                assert!(c.wants(b"/data/x"));
                assert_eq!(c.wants(b"/data/tmp/x"), bad_name == VAR_EXCLUDE);
            }
            assert_eq!(c.sync, bad_name != VAR_SYNC);
            assert_eq!(c.align, (bad_name != VAR_ALIGN).then_some(8192));
            assert_eq!(c.min_size, if bad_name == VAR_MIN_SIZE { 0 } else { 1 << 20 });
            let want_log = if bad_name == VAR_LOG { LogLevel::Warn } else { LogLevel::Debug };
            assert_eq!(c.log_level, want_log);
            assert_eq!(c.log_file, Some(OsString::from("/tmp/l")));
            assert_eq!(c.stats_path, Some(OsString::from("/tmp/s")));
            let want_pool = if bad_name == VAR_POOL { 64 << 20 } else { 8 << 20 };
            assert_eq!(c.pool_bytes, want_pool);
            assert_eq!(c.readahead, if bad_name == VAR_READAHEAD { 4 << 20 } else { 8 << 20 });
            assert_eq!(c.write_behind, if bad_name == VAR_WRITE_BEHIND { 1 << 20 } else { 0 });
            assert_eq!(c.mode, if bad_name == VAR_MODE { Mode::Direct } else { Mode::Dontcache });
        }
        // All bad at once: one warning each, all defaults.
        let (c, w) = cfg(&bad);
        assert_eq!(w.len(), bad.len(), "{w:?}");
        assert!(!c.enabled());
        assert!(!c.sync);
        assert_eq!(c.align, None);
        assert_eq!(c.min_size, 0);
        assert_eq!(c.log_level, LogLevel::Warn);
        assert_eq!(c.pool_bytes, 64 << 20);
        assert_eq!(c.readahead, 4 << 20);
        assert_eq!(c.write_behind, 1 << 20);
        assert_eq!(c.mode, Mode::Direct);
    }

    fn own_exe_name() -> String {
        let exe = std::env::current_exe().expect("current_exe");
        exe.file_name().expect("file name").to_string_lossy().into_owned()
    }

    #[test]
    fn current_program_names_are_exe_and_argv0_base_names() {
        let names = current_program_names();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(names[0], own_exe_name().into_bytes());
        let argv0 = std::env::args_os().next().expect("argv[0]");
        assert_eq!(names[1], base_name(argv0.as_bytes()));
        assert!(names.iter().all(|n| !n.contains(&b'/')));
    }

    #[test]
    fn base_names() {
        assert_eq!(base_name(b"/usr/bin/python3.11"), b"python3.11");
        assert_eq!(base_name(b"python3"), b"python3");
        assert_eq!(base_name(b"./bin/cat"), b"cat");
        assert_eq!(base_name(b"/opt/tool/"), b"tool");
    }

    #[test]
    fn programs_unset_or_empty_selects_every_program() {
        for v in ["", ":", "::"] {
            let (c, w) = cfg(&[("S3DLIO_DIRECT_PATHS", "/data"), ("S3DLIO_DIRECT_PROGRAMS", v)]);
            assert!(w.is_empty(), "{v:?}: {w:?}");
            assert!(c.programs.is_none(), "{v:?}");
            assert!(c.enabled(), "{v:?}");
        }
    }

    #[test]
    fn programs_selects_this_process_by_its_names() {
        let me = own_exe_name();
        let prefix: String = me.chars().take(3).collect();
        for v in [me.clone(), format!("{prefix}*"), format!("nope:{me}"), "*".to_string(), "?*".to_string()] {
            let (c, w) = cfg(&[("S3DLIO_DIRECT_PATHS", "/data"), ("S3DLIO_DIRECT_PROGRAMS", v.as_str())]);
            assert!(w.is_empty(), "{v}: {w:?}");
            assert!(c.program_selected, "{v}");
            assert!(c.enabled(), "{v}");
            assert!(c.wants(b"/data/x"), "{v}");
        }
        for v in ["python3", "nope:cat", &format!("{me}x"), &format!("x{me}")] {
            let (c, w) = cfg(&[("S3DLIO_DIRECT_PATHS", "/data"), ("S3DLIO_DIRECT_PROGRAMS", v)]);
            assert!(w.is_empty(), "{v}: {w:?}");
            assert!(!c.program_selected, "{v}");
            assert!(!c.enabled(), "{v}");
            assert!(!c.wants(b"/data/x"), "{v}");
        }
    }

    #[test]
    fn program_set_matching() {
        let (p, bad) = ProgramSet::parse(b"python3*:cat:[dt]d:a\\:b:*.sh");
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(format!("{p:?}"), r#"["python3*", "cat", "[dt]d", "a\\:b", "*.sh"]"#);
        for yes in ["python3", "python3.11", "cat", "dd", "td", "a:b", "run.sh", ".sh"] {
            assert!(p.matches(yes.as_bytes()), "{yes}");
        }
        for no in ["python", "python2", "Cat", "cats", "xcat", "ddd", "a", "b", "run.shx", "", "/cat", "bin/cat"] {
            assert!(!p.matches(no.as_bytes()), "{no}");
        }
        assert!(p.matches_any([b"bash".as_slice(), b"cat".as_slice()].into_iter()));
        assert!(!p.matches_any([b"bash".as_slice(), b"sh".as_slice()].into_iter()));
        assert!(!p.matches_any(std::iter::empty()));
    }

    #[test]
    fn programs_malformed_entries_give_one_warning() {
        let (c, w) = one_warning(&[
            ("S3DLIO_DIRECT_PATHS", "/data"),
            ("S3DLIO_DIRECT_PROGRAMS", "/usr/bin/python3:..:py[:*"),
            ("S3DLIO_DIRECT_MIN_SIZE", "4K"),
        ]);
        assert_eq!(
            w,
            "S3DLIO_DIRECT_PROGRAMS='/usr/bin/python3:..:py[:*': '/usr/bin/python3' contains '/', \
             '..' is not a program name, 'py[' is not a valid glob \
             (use base names or globs such as python3:python3.*); using '*'"
        );
        assert!(c.enabled());
        assert_eq!(c.min_size, 4096);
        let (c, w) = one_warning(&[("S3DLIO_DIRECT_PATHS", "/data"), ("S3DLIO_DIRECT_PROGRAMS", "bin/cat")]);
        assert!(w.ends_with("; matching no program, so the shim stays off"), "{w}");
        assert!(c.programs.as_ref().is_some_and(ProgramSet::is_empty));
        assert!(!c.enabled());
    }

    #[test]
    fn programs_non_utf8_names() {
        let (p, bad) = ProgramSet::parse(b"tool\xff*");
        assert!(bad.is_empty());
        assert!(p.matches(b"tool\xff-x"));
        assert!(!p.matches(b"tool\xfe-x"));
    }

    #[test]
    fn split_list_honours_escapes() {
        let parts: Vec<&[u8]> = crate::pathmatch::split_list(b"a:b\\:c::d\\").collect();
        assert_eq!(parts, [b"a".as_slice(), b"b\\:c", b"", b"d\\"]);
        assert_eq!(crate::pathmatch::split_list(b"").collect::<Vec<_>>(), [b"".as_slice()]);
        assert_eq!(crate::pathmatch::split_list(b"x:").collect::<Vec<_>>(), [b"x".as_slice(), b""]);
    }

    #[test]
    fn first_occurrence_wins() {
        let (c, w) = cfg(&[("S3DLIO_DIRECT_MIN_SIZE", "4K"), ("S3DLIO_DIRECT_MIN_SIZE", "garbage")]);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.min_size, 4096);
    }

    #[test]
    fn parse_size_cases() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("007"), Some(7));
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("64KIB"), Some(65536));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("1mib"), Some(1 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("  2GiB\t"), Some(2 << 30));
        assert_eq!(parse_size("2 GiB"), Some(2 << 30));
        assert_eq!(parse_size("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_size("17179869184G"), None); // 2^34 GiB overflows
        assert_eq!(parse_size("18446744073709551616"), None);
        for bad in
            ["", " ", "K", "12Q", "-1", "+1", "1.5", "1e3", "1KB", "1Ki", "1 K i B", "1B", "0x10", "1T", "1_000", "1 2"]
        {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn from_env_reads_the_process_environment() {
        // Only checks it runs and agrees with from_vars over the same snapshot; the test
        // harness environment normally has no S3DLIO_DIRECT_* variables.
        let (a, wa) = Config::from_env();
        let (b, wb) = Config::from_vars(std::env::vars_os());
        assert_eq!(wa, wb);
        assert_eq!(a.enabled(), b.enabled());
        assert_eq!(a.pool_bytes, b.pool_bytes);
    }
}
