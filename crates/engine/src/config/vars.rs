//! The `S3DLIO_DIRECT_*` variables, each declared once in [`VARS`]: its name, doc line,
//! default, and the function that parses a value of it into a [`Config`].
//!
//! [`Config::from_vars`] reads through this table, so does `s3dlio-direct run` when it checks
//! the values it is about to pass on, and a test checks README's table against it. The
//! defaults are the `DEFAULT_*` constants below; their texts (README, warnings) are derived
//! from them.

use super::{parse_size, Config, LogLevel, MapMode, Mode, ProgramSet, GIB, KIB, MIB};
use crate::pathmatch::PatternSet;
use std::borrow::Cow;
use std::fmt;

/// Default for `S3DLIO_DIRECT_SYNC`: no O_SYNC added.
pub const DEFAULT_SYNC: bool = false;
/// Default for `S3DLIO_DIRECT_MIN_SIZE`: every matched file goes direct.
pub const DEFAULT_MIN_SIZE: u64 = 0;
/// Default for `S3DLIO_DIRECT_LOG`.
pub const DEFAULT_LOG_LEVEL: LogLevel = LogLevel::Warn;
/// Default for `S3DLIO_DIRECT_POOL`: 64 MiB of bounce buffers.
pub const DEFAULT_POOL_BYTES: usize = 64 << 20;
/// Smallest accepted `S3DLIO_DIRECT_POOL`: smaller values are raised to this (the pool must
/// hold at least one bounce buffer for a large aligned superset).
pub const MIN_POOL_BYTES: usize = 1 << 20;
/// Largest accepted `S3DLIO_DIRECT_ALIGN` (1 GiB); no device needs more.
pub const MAX_ALIGN: usize = 1 << 30;
/// Default for `S3DLIO_DIRECT_READAHEAD`: one device request of this size runs at the
/// device's full speed (measured: 1 MiB at a time reaches about half of it).
pub const DEFAULT_READAHEAD: usize = 4 << 20;
/// Smallest read-ahead window other than 0 (off); windows are multiples of it.
pub const MIN_READAHEAD: usize = 64 << 10;
/// Default for `S3DLIO_DIRECT_WRITE_BEHIND`: below this size a direct write costs a device
/// round trip each, and the page cache written back behind the program is faster.
pub const DEFAULT_WRITE_BEHIND: usize = 1 << 20;
/// Largest accepted read-ahead window and write-behind size.
pub const MAX_TUNING: usize = 1 << 30;
/// Default for `S3DLIO_DIRECT_MODE`.
pub const DEFAULT_MODE: Mode = Mode::Direct;

/// Default for `S3DLIO_DIRECT_MAP`.
pub const DEFAULT_MAP: MapMode = MapMode::Direct;

/// Declares the variables: a `VAR_*` constant with each one's name, and [`VARS`].
macro_rules! vars {
    ($( #[doc = $doc:literal] $konst:ident = $name:literal, $default:expr, $apply:path; )+) => {
        $( #[doc = $doc] pub const $konst: &str = $name; )+

        /// Every variable the configuration reads. Any other
        /// `S3DLIO_DIRECT_*` name gets an "unknown variable" warning (most likely a typo the
        /// user wants to hear about).
        pub static VARS: &[Var] = &[
            $( Var { name: $konst, doc: $doc.trim_ascii(), default: $default, apply: $apply }, )+
        ];
    };
}

vars! {
    /// Colon-separated absolute globs/prefixes of files to make direct.
    VAR_PATHS = "S3DLIO_DIRECT_PATHS", DefaultValue::Prose("unset: the shim changes nothing"), paths;
    /// Same syntax as PATHS; a match here wins over PATHS.
    VAR_EXCLUDE = "S3DLIO_DIRECT_EXCLUDE", DefaultValue::Prose("unset"), exclude;
    /// Boolean: add O_SYNC at open of matched files.
    VAR_SYNC = "S3DLIO_DIRECT_SYNC", DefaultValue::Word(on_off(DEFAULT_SYNC)), sync;
    /// Power of two raising memory and offset alignment.
    VAR_ALIGN = "S3DLIO_DIRECT_ALIGN", DefaultValue::Prose("the kernel's alignment"), align;
    /// Size below which read-only opens stay buffered.
    VAR_MIN_SIZE = "S3DLIO_DIRECT_MIN_SIZE", DefaultValue::Size(DEFAULT_MIN_SIZE), min_size;
    /// Log level word.
    VAR_LOG = "S3DLIO_DIRECT_LOG", DefaultValue::Word(DEFAULT_LOG_LEVEL.as_str()), log;
    /// Log destination instead of stderr.
    VAR_LOG_FILE = "S3DLIO_DIRECT_LOG_FILE", DefaultValue::Prose("stderr"), log_file;
    /// Statistics file template (`%p`, `%h`).
    VAR_STATS = "S3DLIO_DIRECT_STATS", DefaultValue::Prose("unset"), stats;
    /// Bytes of bounce buffers kept.
    VAR_POOL = "S3DLIO_DIRECT_POOL", DefaultValue::Size(DEFAULT_POOL_BYTES as u64), pool;
    /// Colon-separated globs of the program names the shim works in.
    VAR_PROGRAMS = "S3DLIO_DIRECT_PROGRAMS", DefaultValue::Prose("unset: every program"), programs;
    /// Read-ahead window for small sequential reads (0: off).
    VAR_READAHEAD = "S3DLIO_DIRECT_READAHEAD", DefaultValue::Size(DEFAULT_READAHEAD as u64), readahead;
    /// Writes shorter than this go through the page cache, written back and dropped behind (0: off).
    VAR_WRITE_BEHIND = "S3DLIO_DIRECT_WRITE_BEHIND", DefaultValue::Size(DEFAULT_WRITE_BEHIND as u64), write_behind;
    /// `direct` or `dontcache`.
    VAR_MODE = "S3DLIO_DIRECT_MODE", DefaultValue::Word(DEFAULT_MODE.as_str()), mode;
    /// `cache`, `direct` or `off`: what mappings of matched files get.
    VAR_MAP = "S3DLIO_DIRECT_MAP", DefaultValue::Word(DEFAULT_MAP.as_str()), map;
    /// Bytes of mapped matched files the process may keep in the page cache.
    VAR_MAP_BUDGET = "S3DLIO_DIRECT_MAP_BUDGET", DefaultValue::Prose("a sixteenth of the process's memory limit (its cgroup's `memory.max`, else `RLIMIT_AS`, else RAM), at least `64MiB`"), map_budget;
}

/// One variable of [`VARS`].
pub struct Var {
    /// `S3DLIO_DIRECT_...`.
    pub name: &'static str,
    /// What it sets, in one line.
    pub doc: &'static str,
    /// What holds when it is unset or empty, and after a malformed value.
    pub default: DefaultValue,
    apply: fn(&mut Config, &Value<'_>, &mut Vec<String>),
}

impl fmt::Debug for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Var").field("name", &self.name).field("default", &self.default).finish()
    }
}

impl Var {
    /// The variable called `name`, if the configuration reads it.
    pub fn lookup(name: &[u8]) -> Option<&'static Var> {
        VARS.iter().find(|v| v.name.as_bytes() == name)
    }

    /// Parses `raw` into `cfg`, pushing at most one warning (PATHS/EXCLUDE: one per skipped
    /// entry), which names the variable, the bad value and what is used instead.
    pub fn apply(&'static self, cfg: &mut Config, raw: &[u8], warnings: &mut Vec<String>) {
        (self.apply)(cfg, &Value { var: self, raw }, warnings)
    }
}

/// What a variable means when it is not set: a value one could set (a word such as `warn`,
/// or a size written as [`size_text`] writes it), or a sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    /// A word the variable accepts.
    Word(&'static str),
    /// A size in bytes.
    Size(u64),
    /// What happens without the variable.
    Prose(&'static str),
}

impl DefaultValue {
    /// As README's table shows it: values as code (`` `64MiB` ``), prose as it is.
    pub fn markdown(&self) -> String {
        match self {
            DefaultValue::Prose(p) => p.to_string(),
            _ => format!("`{self}`"),
        }
    }
}

impl fmt::Display for DefaultValue {
    /// As warnings say it ("...; using 64MiB").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DefaultValue::Word(w) | DefaultValue::Prose(w) => f.write_str(w),
            DefaultValue::Size(n) => f.write_str(&size_text(*n)),
        }
    }
}

const fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// A size as the variables accept it, in the largest unit that divides it: `64MiB`, `4KiB`,
/// `1000`, `0`.
pub fn size_text(n: u64) -> String {
    [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")]
        .into_iter()
        .find(|(unit, _)| n != 0 && n.is_multiple_of(*unit))
        .map_or_else(|| n.to_string(), |(unit, suffix)| format!("{}{suffix}", n / unit))
}

/// One value of a variable, as the environment holds it.
struct Value<'a> {
    var: &'static Var,
    raw: &'a [u8],
}

impl Value<'_> {
    fn shown(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.raw)
    }

    /// The text of a word or number variable; `None` when empty or blank, which means the
    /// default, silently. Non-UTF-8 bytes give a text every parser refuses.
    fn text(&self) -> Option<&str> {
        match std::str::from_utf8(self.raw) {
            Ok(v) if v.trim().is_empty() => None,
            Ok(v) => Some(v),
            Err(_) => Some("\u{0}"),
        }
    }

    /// "NAME='value' why; using what".
    fn warning(&self, why: impl fmt::Display, using: impl fmt::Display) -> String {
        format!("{}='{}' {why}; using {using}", self.var.name, self.shown())
    }

    /// A value that is no use at all: the default holds.
    fn bad(&self, why: impl fmt::Display) -> String {
        self.warning(why, self.var.default)
    }

    /// The raw bytes, or `None` when empty.
    fn raw_non_empty(&self) -> Option<std::ffi::OsString> {
        use std::os::unix::ffi::OsStrExt;
        (!self.raw.is_empty()).then(|| std::ffi::OsStr::from_bytes(self.raw).to_os_string())
    }
}

fn paths(c: &mut Config, v: &Value<'_>, w: &mut Vec<String>) {
    let (set, warnings) = PatternSet::parse_bytes(v.var.name, v.raw);
    c.paths = set;
    w.extend(warnings);
}

fn exclude(c: &mut Config, v: &Value<'_>, w: &mut Vec<String>) {
    let (set, warnings) = PatternSet::parse_bytes(v.var.name, v.raw);
    c.exclude = set;
    w.extend(warnings);
}

fn sync(c: &mut Config, v: &Value<'_>, w: &mut Vec<String>) {
    let Some(text) = v.text() else { return };
    match parse_bool(text) {
        Some(b) => c.sync = b,
        None => w.push(v.bad("is not a boolean (use 1/0, true/false, yes/no, on/off)")),
    }
}

fn align(c: &mut Config, v: &Value<'_>, w: &mut Vec<String>) {
    let Some(text) = v.text() else { return };
    match parse_size(text).and_then(|n| usize::try_from(n).ok()).filter(|&n| n.is_power_of_two() && n <= MAX_ALIGN) {
        Some(a) => c.align = Some(a),
        None => w.push(v.bad(format_args!(
            "is not a power of two between 1 and {} (e.g. 4096, 4K, 1MiB)",
            size_text(MAX_ALIGN as u64)
        ))),
    }
}

fn min_size(c: &mut Config, v: &Value<'_>, w: &mut Vec<String>) {
    let Some(text) = v.text() else { return };
    match parse_size(text) {
        Some(n) => c.min_size = n,
        None => w.push(v.bad("is not a size (use e.g. 4096, 64K, 1MiB)")),
    }
}

fn log(c: &mut Config, v: &Value<'_>, w: &mut Vec<String>) {
    let Some(text) = v.text() else { return };
    match LogLevel::parse(text) {
        Some(l) => c.log_level = l,
        None => {
            let words: Vec<&str> = LogLevel::ALL.iter().map(|l| l.as_str()).collect();
            w.push(v.bad(format_args!("is not one of {}", words.join(", "))));
        }
    }
}

fn log_file(c: &mut Config, v: &Value<'_>, _: &mut Vec<String>) {
    c.log_file = v.raw_non_empty();
}

fn stats(c: &mut Config, v: &Value<'_>, _: &mut Vec<String>) {
    c.stats_path = v.raw_non_empty();
}

fn pool(c: &mut Config, v: &Value<'_>, w: &mut Vec<String>) {
    let Some(text) = v.text() else { return };
    match parse_size(text).map(|n| usize::try_from(n).unwrap_or(usize::MAX)) {
        Some(n) if n >= MIN_POOL_BYTES => c.pool_bytes = n,
        Some(_) => {
            c.pool_bytes = MIN_POOL_BYTES;
            let min = size_text(MIN_POOL_BYTES as u64);
            w.push(v.warning(format_args!("is below the minimum of {min}"), &min));
        }
        None => w.push(v.bad("is not a size (use e.g. 64MiB, 256M, 1G)")),
    }
}

/// A read-ahead or write-behind size: `None` if malformed or above [`MAX_TUNING`].
fn tuning_size(text: &str) -> Option<usize> {
    parse_size(text).and_then(|n| usize::try_from(n).ok()).filter(|&n| n <= MAX_TUNING)
}

fn not_a_tuning_size(v: &Value<'_>) -> String {
    v.bad(format_args!("is not a size up to {} (use e.g. 0, 256K, 8MiB)", size_text(MAX_TUNING as u64)))
}

fn readahead(c: &mut Config, v: &Value<'_>, w: &mut Vec<String>) {
    let Some(text) = v.text() else { return };
    match tuning_size(text) {
        Some(n) if n != 0 && n < MIN_READAHEAD => {
            c.readahead = MIN_READAHEAD;
            let min = size_text(MIN_READAHEAD as u64);
            w.push(v.warning(format_args!("is below the minimum of {min} (0 turns it off)"), &min));
        }
        Some(n) => c.readahead = n.next_multiple_of(MIN_READAHEAD),
        None => w.push(not_a_tuning_size(v)),
    }
}

fn write_behind(c: &mut Config, v: &Value<'_>, w: &mut Vec<String>) {
    let Some(text) = v.text() else { return };
    match tuning_size(text) {
        Some(n) => c.write_behind = n,
        None => w.push(not_a_tuning_size(v)),
    }
}

fn mode(c: &mut Config, v: &Value<'_>, w: &mut Vec<String>) {
    let Some(text) = v.text() else { return };
    match Mode::parse(text) {
        Some(m) => c.mode = m,
        None => {
            let words: Vec<&str> = Mode::ALL.iter().map(|m| m.as_str()).collect();
            w.push(v.bad(format_args!("is not one of {}", words.join(", "))));
        }
    }
}

fn map(c: &mut Config, v: &Value<'_>, w: &mut Vec<String>) {
    let Some(text) = v.text() else { return };
    match MapMode::parse(text) {
        Some(m) => c.map = m,
        None => {
            let words: Vec<&str> = MapMode::ALL.iter().map(|m| m.as_str()).collect();
            w.push(v.bad(format_args!("is not one of {}", words.join(", "))));
        }
    }
}

fn map_budget(c: &mut Config, v: &Value<'_>, w: &mut Vec<String>) {
    let Some(text) = v.text() else { return };
    match parse_size(text) {
        Some(n) if n > 0 => c.map_budget = Some(n),
        _ => w.push(v.bad("is not a size above 0 (use e.g. 4096, 256MiB, 2G)")),
    }
}

fn programs(c: &mut Config, v: &Value<'_>, w: &mut Vec<String>) {
    let (set, bad) = ProgramSet::parse(v.raw);
    if set.is_empty() && bad.is_empty() {
        return; // empty, or only separators: unset
    }
    if !bad.is_empty() {
        let using = if set.is_empty() {
            "matching no program, so the shim stays off".to_string()
        } else {
            format!("using '{}'", set.texts.join(":"))
        };
        w.push(format!(
            "{}='{}': {} (use base names or globs such as python3:python3.*); {using}",
            v.var.name,
            v.shown(),
            bad.join(", ")
        ));
    }
    c.programs = Some(set);
}

/// `1,true,yes,on` / `0,false,no,off` in any case (surrounding whitespace ignored); `None`
/// for anything else. (The empty value, also "off", is handled by the caller.)
fn parse_bool(s: &str) -> Option<bool> {
    let s = s.trim();
    let any = |words: &[&str]| words.iter().any(|w| s.eq_ignore_ascii_case(w));
    if any(&["1", "true", "yes", "on"]) {
        Some(true)
    } else if any(&["0", "false", "no", "off"]) {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_prefixed() {
        for (i, v) in VARS.iter().enumerate() {
            assert!(v.name.starts_with(super::super::PREFIX), "{v:?}");
            assert!(VARS[..i].iter().all(|o| o.name != v.name), "{} twice", v.name);
            assert!(std::ptr::eq(Var::lookup(v.name.as_bytes()).unwrap(), v));
            assert!(!v.doc.is_empty() && !v.doc.contains('\n') && v.doc == v.doc.trim(), "{v:?}");
        }
        assert!(Var::lookup(b"S3DLIO_DIRECT_PATH").is_none());
        assert!(Var::lookup(b"s3dlio_direct_paths").is_none());
    }

    /// A value-like default, set explicitly, is accepted without a warning and gives the
    /// configuration an unset variable gives: the texts are those of the constants.
    #[test]
    fn default_texts_are_the_defaults() {
        let unset = format!("{:?}", Config::default());
        for v in VARS {
            let text = v.default.to_string();
            match v.default {
                DefaultValue::Prose(_) => assert_eq!(v.default.markdown(), text),
                _ => {
                    let (c, w) = Config::from_vars([(v.name, text.as_str())]);
                    assert!(w.is_empty(), "{}={text}: {w:?}", v.name);
                    assert_eq!(format!("{c:?}"), unset, "{}={text}", v.name);
                    assert_eq!(v.default.markdown(), format!("`{text}`"));
                }
            }
        }
        assert_eq!(Var::lookup(VAR_POOL.as_bytes()).unwrap().default.to_string(), "64MiB");
        assert_eq!(Var::lookup(VAR_SYNC.as_bytes()).unwrap().default.to_string(), "off");
        assert_eq!(Var::lookup(VAR_MIN_SIZE.as_bytes()).unwrap().default.to_string(), "0");
    }

    #[test]
    fn size_texts() {
        for (n, want) in [
            (0u64, "0"),
            (1, "1"),
            (1000, "1000"),
            (1024, "1KiB"),
            (1536, "1536"),
            (64 << 10, "64KiB"),
            (1 << 20, "1MiB"),
            (3 << 29, "1536MiB"),
            (1 << 30, "1GiB"),
            (5 << 40, "5120GiB"),
        ] {
            assert_eq!(size_text(n), want, "{n}");
            assert_eq!(parse_size(want), Some(n), "{want}");
        }
    }

    #[test]
    fn warnings_name_their_variable() {
        let (_, w) = Config::from_vars_by_var([
            ("S3DLIO_DIRECT_PATHS", "rel:/ok"),
            ("S3DLIO_DIRECT_POOL", "huge"),
            ("S3DLIO_DIRECT_BOGUS", "1"),
            ("S3DLIO_DIRECT_MODE", "fast"),
        ]);
        let tags: Vec<Option<&str>> = w.iter().map(|(v, _)| v.map(|v| v.name)).collect();
        assert_eq!(tags, [Some(VAR_PATHS), Some(VAR_POOL), None, Some(VAR_MODE)], "{w:?}");
        for (v, text) in &w {
            if let Some(v) = v {
                assert!(text.starts_with(v.name), "{text}");
            }
        }
    }
}
