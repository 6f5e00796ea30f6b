//! `s3dlio-direct stats` and the summary `run --stats` prints: reading what the library
//! leaves in a statistics directory (`s3dlio_engine::statsdir`: per-process JSON files,
//! counters files of processes that did not exit, the index of every process that loaded
//! the library, the files logs of what happened to each matched file), merging it, and
//! showing the result. Nothing read is trusted: a file that is
//! a link, someone else's, or not what the library writes is skipped with a warning.

use crate::files::{Files, Verdict};
use crate::units::human;
use crate::{error, warning, StatsArgs};
use s3dlio_engine::filelog::LOG_LIMIT;
use s3dlio_engine::stats::{Counter, Fallback};
use s3dlio_engine::statsdir::{self, FILES_SUFFIX, INDEX_KEY, LIVE_SIZE, LIVE_SUFFIX};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// One process's counts: from its statistics file (written at exit or exec), or from its
/// counters file (kept up to its last call however it ended), whichever is further along.
#[derive(Debug, Clone)]
pub struct ProcStats {
    pub pid: u64,
    /// `None` in files of versions that did not write it.
    pub starttime: Option<u64>,
    pub program: String,
    /// In [`Counter::ALL`] order.
    pub counters: Vec<u64>,
    /// Documented reasons first, in [`Fallback::COUNTED`] order, then any others in file order.
    pub fallbacks: Vec<(String, u64)>,
    /// Counters this version does not know (a newer library's), by key.
    pub extra: Vec<(String, u64)>,
    /// Read from a counters file: the process had not exited normally when it was read
    /// (killed, or still running).
    pub live: bool,
}

impl ProcStats {
    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }

    /// A counter by key, known to this version or not.
    pub fn key(&self, key: &str) -> Option<u64> {
        Counter::ALL
            .iter()
            .position(|c| c.key() == key)
            .map(|i| self.counters[i])
            .or_else(|| self.extra.iter().find(|(k, _)| k == key).map(|(_, v)| *v))
    }

    fn from_values(
        pid: u64,
        starttime: Option<u64>,
        program: String,
        values: &[(String, u64)],
        fb: &[(String, u64)],
    ) -> Self {
        let counters =
            Counter::ALL.iter().map(|c| values.iter().find(|(k, _)| k == c.key()).map_or(0, |(_, v)| *v)).collect();
        let extra = values.iter().filter(|(k, _)| !Counter::ALL.iter().any(|c| c.key() == k)).cloned().collect();
        let mut fallbacks = documented_fallbacks();
        for (r, n) in fb {
            add_to(&mut fallbacks, r, *n);
        }
        ProcStats { pid, starttime, program, counters, fallbacks, extra, live: false }
    }

    /// Keeps the larger of each count (both describe one process; counts only grow).
    fn merge_max(&mut self, other: &ProcStats) {
        for (a, b) in self.counters.iter_mut().zip(&other.counters) {
            *a = (*a).max(*b);
        }
        for (k, v) in &other.fallbacks {
            match self.fallbacks.iter_mut().find(|(r, _)| r == k) {
                Some((_, n)) => *n = (*n).max(*v),
                None => self.fallbacks.push((k.clone(), *v)),
            }
        }
        for (k, v) in &other.extra {
            match self.extra.iter_mut().find(|(r, _)| r == k) {
                Some((_, n)) => *n = (*n).max(*v),
                None => self.extra.push((k.clone(), *v)),
            }
        }
        if other.live {
            self.live = true;
            self.program = other.program.clone();
        }
    }
}

/// Several processes added up.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub processes: usize,
    pub counters: Vec<u64>,
    pub fallbacks: Vec<(String, u64)>,
    /// Program name and how many processes ran it, most first.
    pub programs: Vec<(String, usize)>,
}

impl Totals {
    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }
}

/// One process as the index tells it: every process that loaded the library with
/// statistics on has lines there, also one that matched nothing.
#[derive(Debug, Clone, Default)]
pub struct IndexProc {
    pub pid: u64,
    pub starttime: u64,
    pub host: String,
    /// The programs of its images, in order (a wrapper script that execs has several).
    pub programs: Vec<String>,
    /// Whether the library was active in its last image, and if not why.
    pub active: bool,
    pub inactive: Option<String>,
    /// It matched a file (its counters file was made).
    pub matched: bool,
    /// Its last line is `exit`: it ended normally.
    pub exited: bool,
}

impl IndexProc {
    /// The program of its last image.
    pub fn program(&self) -> &str {
        self.programs.last().map_or("?", String::as_str)
    }
}

/// Everything read from statistics files, counters files and indexes.
#[derive(Debug, Default)]
pub struct Collection {
    /// Processes with counts, one per process.
    pub procs: Vec<ProcStats>,
    /// Processes of the index, one per process.
    pub index: Vec<IndexProc>,
    /// What was skipped, and why.
    pub problems: Vec<String>,
    /// The matched files, from the files logs.
    pub files: Files,
}

impl Collection {
    /// Processes of the index that matched nothing and have no counts.
    pub fn matched_nothing(&self) -> Vec<&IndexProc> {
        self.index.iter().filter(|p| !p.matched && !self.has_counts(p)).collect()
    }

    fn has_counts(&self, p: &IndexProc) -> bool {
        self.procs.iter().any(|s| s.pid == p.pid && s.starttime.is_none_or(|t| t == p.starttime))
    }
}

/// What kind of file the library wrote, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Json,
    Live,
    Index,
    Files,
}

/// The kind of a file, from its name; `None` for temporary files and anything else.
pub fn kind_of(name: &str) -> Option<Kind> {
    if name.contains(".tmp") {
        None
    } else if name.ends_with(LIVE_SUFFIX) {
        Some(Kind::Live)
    } else if name.ends_with(FILES_SUFFIX) {
        Some(Kind::Files)
    } else if name.ends_with(".jsonl") || name.ends_with(".index") {
        Some(Kind::Index)
    } else if name.ends_with(".json")
        || name.rsplit_once(".json.").is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
    {
        Some(Kind::Json)
    } else {
        None
    }
}

/// Opens a file that is read back without trusting it: never through a symbolic link,
/// only a regular file of this user, at most `limit` bytes.
pub fn read_checked(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let f =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).map_err(
            |e| match e.raw_os_error() {
                Some(libc::ELOOP) => format!("ignored {}: it is a symbolic link", path.display()),
                _ => format!("cannot read {}: {e}", path.display()),
            },
        )?;
    let m = f.metadata().map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !m.file_type().is_file() {
        return Err(format!("ignored {}: not a regular file", path.display()));
    }
    // SAFETY: no arguments.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return Err(format!("ignored {}: it belongs to uid {}, not to you (uid {me})", path.display(), m.uid()));
    }
    if m.len() > limit {
        return Err(format!("ignored {}: {} bytes, too large for a file of s3dlio-direct", path.display(), m.len()));
    }
    let mut data = Vec::with_capacity(m.len() as usize);
    f.take(limit + 1).read_to_end(&mut data).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(data)
}

const JSON_LIMIT: u64 = 1 << 20;
const INDEX_LIMIT: u64 = 256 << 20;

/// Reads one statistics (JSON) file.
pub fn load(path: &Path) -> Result<ProcStats, String> {
    let data = read_checked(path, JSON_LIMIT)?;
    let not_ours = |why: &str| format!("{} is not a statistics file of s3dlio-direct ({why})", path.display());
    let text = String::from_utf8(data).map_err(|_| not_ours("not text"))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| not_ours(&format!("not JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| not_ours("not a JSON object"))?;
    match obj.get("schema").and_then(Value::as_u64) {
        Some(1) => {}
        Some(n) => {
            return Err(format!(
                "{} has schema {n}, written by a newer s3dlio-direct; this one reads schema 1",
                path.display()
            ))
        }
        None => return Err(not_ours("no \"schema\" key")),
    }
    let pid = obj.get("pid").and_then(Value::as_u64).filter(|&p| p > 0).ok_or_else(|| not_ours("no \"pid\""))?;
    let starttime = obj.get("starttime").and_then(Value::as_u64);
    let program = obj.get("program").and_then(Value::as_str).unwrap_or("?").to_string();
    const FIXED: [&str; 5] = ["schema", "version", "pid", "starttime", "program"];
    let mut values = Vec::new();
    for (k, v) in obj {
        if FIXED.contains(&k.as_str()) || k == "fallbacks" {
            continue;
        }
        let n = v.as_u64().ok_or_else(|| not_ours(&format!("\"{k}\" is not a count")))?;
        values.push((k.clone(), n));
    }
    let mut fallbacks = Vec::new();
    if let Some(f) = obj.get("fallbacks") {
        let f = f.as_object().ok_or_else(|| not_ours("\"fallbacks\" is not an object"))?;
        for (reason, n) in f {
            fallbacks.push((
                reason.clone(),
                n.as_u64().ok_or_else(|| not_ours(&format!("fallback \"{reason}\" is not a count")))?,
            ));
        }
    }
    Ok(ProcStats::from_values(pid, starttime, program, &values, &fallbacks))
}

/// Reads one counters file.
pub fn load_live(path: &Path) -> Result<ProcStats, String> {
    let data = read_checked(path, LIVE_SIZE as u64)?;
    let f = statsdir::parse_live(&data)
        .map_err(|why| format!("ignored {}: not a counters file of s3dlio-direct ({why})", path.display()))?;
    let mut p = ProcStats::from_values(f.pid, Some(f.starttime), f.program, &f.counters, &f.fallbacks);
    p.live = true;
    Ok(p)
}

/// Reads an index: its processes, and a problem for lines that are not index lines.
pub fn load_index(path: &Path, into: &mut BTreeMap<(String, u64, u64), IndexProc>) -> Result<(), String> {
    let data = read_checked(path, INDEX_LIMIT)?;
    index_text(&String::from_utf8_lossy(&data), path, into)
}

/// The lines of an index (`path` names it in the problem about lines that are not index
/// lines). A last line without its newline is being appended: it is left for later.
pub fn index_text(text: &str, path: &Path, into: &mut BTreeMap<(String, u64, u64), IndexProc>) -> Result<(), String> {
    let mut bad = 0usize;
    let mut lines = text.split_inclusive('\n').peekable();
    while let Some(line) = lines.next() {
        if !line.ends_with('\n') && lines.peek().is_none() {
            break;
        }
        match index_line(line.trim_end()) {
            Some(l) => apply_index_line(into, l),
            None => bad += 1,
        }
    }
    if bad > 0 {
        return Err(format!("{}: {bad} lines are not index lines of s3dlio-direct; ignored them", path.display()));
    }
    Ok(())
}

struct IndexLine {
    event: String,
    pid: u64,
    starttime: u64,
    host: String,
    program: String,
    active: Option<bool>,
    inactive: Option<String>,
}

fn index_line(line: &str) -> Option<IndexLine> {
    let v: Value = serde_json::from_str(line).ok()?;
    let o = v.as_object()?;
    if o.get(INDEX_KEY)?.as_u64()? != 1 {
        return None;
    }
    let text = |k: &str| {
        o.get(k).and_then(Value::as_str).map(|s| s.chars().filter(|c| !c.is_control()).take(256).collect::<String>())
    };
    Some(IndexLine {
        event: text("event")?,
        pid: o.get("pid")?.as_u64().filter(|&p| p > 0 && p <= i32::MAX as u64)?,
        starttime: o.get("starttime")?.as_u64()?,
        host: text("host").unwrap_or_default(),
        program: text("program").unwrap_or_else(|| "?".into()),
        active: o.get("active").and_then(Value::as_bool),
        inactive: text("inactive"),
    })
}

fn apply_index_line(into: &mut BTreeMap<(String, u64, u64), IndexProc>, l: IndexLine) {
    let p = into.entry((l.host.clone(), l.pid, l.starttime)).or_insert_with(|| IndexProc {
        pid: l.pid,
        starttime: l.starttime,
        host: l.host.clone(),
        ..IndexProc::default()
    });
    if matches!(l.event.as_str(), "load" | "fork") && p.programs.last() != Some(&l.program) {
        p.programs.push(l.program.clone());
    }
    if let Some(a) = l.active {
        p.active = a;
        p.inactive = l.inactive;
    }
    if l.event == "matched" {
        p.matched = true;
    }
    p.exited = l.event == "exit";
}

/// Reads every file named (a directory: the files the library writes in it), skipping
/// those that fail with a problem each. `keep` filters names in directories.
pub fn collect(args: &[PathBuf], keep: &dyn Fn(&str) -> bool) -> Collection {
    let mut c = Collection::default();
    let mut files: Vec<(PathBuf, Kind)> = Vec::new();
    for a in args {
        let Ok(meta) = std::fs::symlink_metadata(a) else {
            c.problems.push(format!("cannot read {}: no such file or directory", a.display()));
            continue;
        };
        if !meta.is_dir() {
            let name = a.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            files.push((a.clone(), kind_of(&name).unwrap_or(Kind::Json)));
            continue;
        }
        match std::fs::read_dir(a) {
            Ok(rd) => {
                let mut found: Vec<(PathBuf, Kind)> = rd
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        let name = e.file_name().to_str()?.to_string();
                        let kind = kind_of(&name)?;
                        keep(&name).then(|| (e.path(), kind))
                    })
                    .collect();
                found.sort();
                if found.is_empty() {
                    c.problems.push(format!("{} holds no statistics files of s3dlio-direct", a.display()));
                }
                files.extend(found);
            }
            Err(e) => c.problems.push(format!("cannot list {}: {e}", a.display())),
        }
    }
    let mut index = BTreeMap::new();
    let mut procs: Vec<ProcStats> = Vec::new();
    for (f, kind) in files {
        let r = match kind {
            Kind::Json => load(&f).map(Some),
            Kind::Live => load_live(&f).map(Some),
            Kind::Index => load_index(&f, &mut index).map(|_| None),
            Kind::Files => load_files(&f, &mut c.files).map(|_| None),
        };
        match r {
            Ok(Some(p)) => {
                match procs.iter_mut().find(|q| q.pid == p.pid && q.starttime.is_some() && q.starttime == p.starttime) {
                    Some(q) => q.merge_max(&p),
                    None => procs.push(p),
                }
            }
            Ok(None) => {}
            Err(e) => c.problems.push(e),
        }
    }
    c.procs = procs;
    c.index = index.into_values().collect();
    c
}

/// Reads one files log into `into`.
fn load_files(path: &Path, into: &mut Files) -> Result<(), String> {
    let data = read_checked(path, LOG_LIMIT + 4096)?;
    match into.add_log(&String::from_utf8_lossy(&data)) {
        0 => Ok(()),
        bad => {
            Err(format!("{}: {bad} line{} not understood, skipped", path.display(), if bad == 1 { "" } else { "s" }))
        }
    }
}

/// Every reason the statistics file counts, at zero.
fn documented_fallbacks() -> Vec<(String, u64)> {
    Fallback::COUNTED.iter().map(|r| (r.key().to_string(), 0)).collect()
}

fn add_to(list: &mut Vec<(String, u64)>, name: &str, n: u64) {
    match list.iter_mut().find(|(k, _)| k == name) {
        Some((_, v)) => *v += n,
        None => list.push((name.to_string(), n)),
    }
}

/// Adds up every process.
pub fn merge(procs: &[ProcStats]) -> Totals {
    let mut t = Totals {
        processes: procs.len(),
        counters: vec![0; Counter::ALL.len()],
        fallbacks: documented_fallbacks(),
        ..Totals::default()
    };
    let mut programs: Vec<(String, usize)> = Vec::new();
    for p in procs {
        for (sum, v) in t.counters.iter_mut().zip(&p.counters) {
            *sum += v;
        }
        for (reason, n) in &p.fallbacks {
            add_to(&mut t.fallbacks, reason, *n);
        }
        match programs.iter_mut().find(|(name, _)| *name == p.program) {
            Some((_, n)) => *n += 1,
            None => programs.push((p.program.clone(), 1)),
        }
    }
    programs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    t.programs = programs;
    t
}

/// The merged JSON object: every counter and fallback summed, plus how many processes,
/// which pids and which programs contributed, and what the index adds: how many processes
/// loaded the library, which matched nothing, in which it was not active, and which did not
/// exit normally (killed, or still running: counted up to their last call).
pub fn merged_json(c: &Collection, t: &Totals) -> Value {
    let procs = &c.procs;
    let mut o = Map::new();
    o.insert("schema".into(), 1.into());
    o.insert("processes".into(), t.processes.into());
    o.insert("pids".into(), procs.iter().map(|p| p.pid).collect::<Vec<_>>().into());
    let programs: Map<String, Value> = t.programs.iter().map(|(name, n)| (name.clone(), (*n).into())).collect();
    o.insert("programs".into(), programs.into());
    for (c, v) in Counter::ALL.iter().zip(&t.counters) {
        o.insert(c.key().into(), (*v).into());
    }
    let fallbacks: Map<String, Value> = t.fallbacks.iter().map(|(r, n)| (r.clone(), (*n).into())).collect();
    o.insert("fallbacks".into(), fallbacks.into());
    let mut extra: BTreeMap<&str, u64> = BTreeMap::new();
    for p in procs {
        for (k, v) in &p.extra {
            *extra.entry(k).or_default() += v;
        }
    }
    for (k, v) in extra {
        o.entry(k.to_string()).or_insert(v.into());
    }
    let unfinished: Vec<u64> = procs.iter().filter(|p| p.live).map(|p| p.pid).collect();
    o.insert("unfinished".into(), unfinished.into());
    o.insert("loaded".into(), c.index.len().into());
    let count = |list: Vec<&IndexProc>| -> Map<String, Value> {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for p in list {
            *m.entry(p.program().to_string()).or_default() += 1;
        }
        m.into_iter().map(|(k, v)| (k, v.into())).collect()
    };
    o.insert("matched_nothing".into(), count(c.matched_nothing().into_iter().filter(|p| p.active).collect()).into());
    o.insert("inactive".into(), count(c.matched_nothing().into_iter().filter(|p| !p.active).collect()).into());
    o.insert("files".into(), c.files.to_json());
    Value::Object(o)
}

fn fallback_line(list: &[(String, u64)]) -> String {
    let used: Vec<String> = list.iter().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r} {n}")).collect();
    if used.is_empty() {
        "none".to_string()
    } else {
        used.join(", ")
    }
}

fn row(out: &mut String, pid: &str, program: &str, c: impl Fn(Counter) -> u64) {
    let _ = writeln!(
        out,
        "{pid:>8}  {program:<16} {:>7} {:>7} {:>8}  {:>10} {:>10}  {:>10} {:>10}",
        c(Counter::OpensMatched),
        c(Counter::OpensDirect),
        c(Counter::OpensFallback),
        human(c(Counter::ReadBytes)),
        human(c(Counter::ReadBouncedBytes)),
        human(c(Counter::WriteBytes)),
        human(c(Counter::WriteBouncedBytes)),
    );
}

/// One row per process (by pid), a total row, and the fallbacks.
pub fn table(procs: &[ProcStats], t: &Totals) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8}  {:<16} {:>7} {:>7} {:>8}  {:>10} {:>10}  {:>10} {:>10}",
        "PID", "PROGRAM", "MATCHED", "DIRECT", "BUFFERED", "READ", "BOUNCED", "WRITTEN", "BOUNCED"
    );
    let mut sorted: Vec<&ProcStats> = procs.iter().collect();
    sorted.sort_by_key(|p| p.pid);
    for p in sorted {
        let name = if p.live { format!("{}*", p.program) } else { p.program.clone() };
        row(&mut out, &p.pid.to_string(), &name, |c| p.get(c));
    }
    let label = format!("{} process{}", t.processes, if t.processes == 1 { "" } else { "es" });
    row(&mut out, "TOTAL", &label, |c| t.get(c));
    let _ = writeln!(out, "fallbacks: {}", fallback_line(&t.fallbacks));
    out.push_str(
        "MATCHED: opens of files --paths matched; DIRECT: of those, opened with O_DIRECT; BOUNCED: bytes not \
         aligned for O_DIRECT (reads copied through the library's buffers, writes through the page cache)\n",
    );
    if procs.iter().any(|p| p.live) {
        out.push_str(
            "*: no normal exit (killed, or still running): counted up to its last call, from its counters file\n",
        );
    }
    out
}

/// "python x3, bash" for a list of program names.
fn program_list(names: impl IntoIterator<Item = String>, limit: usize) -> String {
    let mut counted: Vec<(String, usize)> = Vec::new();
    for n in names {
        match counted.iter_mut().find(|(k, _)| *k == n) {
            Some((_, c)) => *c += 1,
            None => counted.push((n, 1)),
        }
    }
    counted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut parts: Vec<String> =
        counted.iter().take(limit).map(|(n, c)| if *c == 1 { n.clone() } else { format!("{n} x{c}") }).collect();
    if counted.len() > limit {
        parts.push(format!("{} more", counted.len() - limit));
    }
    parts.join(", ")
}

/// What the reads asked of the device, against what the program got: the amplification.
fn device_line(read: u64, device: u64, ahead: u64) -> String {
    let amp = if read > 0 { format!("{:.2}x", device as f64 / read as f64) } else { "-".to_string() };
    format!(
        "{} asked for reads, {amp} the bytes read (amplification), {} of it for read-ahead windows",
        human(device),
        human(ahead)
    )
}

/// Lines about the processes of the index that have no counts: those where the library was
/// active and matched nothing, and those where it was not active.
fn index_lines(c: &Collection, out: &mut String, indent: &str) {
    let nothing = c.matched_nothing();
    let (active, inactive): (Vec<&IndexProc>, Vec<&IndexProc>) = nothing.into_iter().partition(|p| p.active);
    if !active.is_empty() {
        let _ = writeln!(
            out,
            "{indent}{} more process{} loaded the library and matched nothing: {}",
            active.len(),
            if active.len() == 1 { "" } else { "es" },
            program_list(active.iter().map(|p| p.program().to_string()), 6)
        );
    }
    if !inactive.is_empty() {
        let mut why: Vec<&str> = inactive.iter().filter_map(|p| p.inactive.as_deref()).collect();
        why.dedup();
        let _ = writeln!(
            out,
            "{indent}{} process{} loaded the library but it stayed inactive ({}): {}",
            inactive.len(),
            if inactive.len() == 1 { "" } else { "es" },
            if why.is_empty() { "S3DLIO_DIRECT_PATHS or S3DLIO_DIRECT_PROGRAMS".to_string() } else { why.join("; ") },
            program_list(inactive.iter().map(|p| p.program().to_string()), 6)
        );
    }
}

/// Files named per verdict in the summaries (`stats --json` lists them all).
const FILES_PER_VERDICT: usize = 5;

/// What `run --stats DIR` prints when the command has ended: the files of this run
/// (`prefix`) merged, on one screen. `cmd`: the pid and name of the command run started.
pub fn run_summary(dir: &Path, prefix: &str, cmd: Option<(u32, &str)>) -> String {
    let c = collect(&[dir.to_path_buf()], &|n: &str| n.starts_with(prefix));
    let problems: Vec<String> =
        c.problems.iter().filter(|p| !p.contains("holds no statistics files")).cloned().collect();
    summary_text(&c, &problems, &format!("{}/{prefix}*", dir.display()), cmd)
}

/// Whether process `pid` started at `starttime` is still running on this node.
pub fn alive(pid: u64, starttime: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return false };
    rest.split_whitespace().nth(19).and_then(|v| v.parse::<u64>().ok()) == Some(starttime)
}

fn summary_text(c: &Collection, unreadable: &[String], pattern: &str, cmd: Option<(u32, &str)>) -> String {
    let procs = &c.procs;
    let mut out = String::from("\n");
    let cmd_loaded = cmd.is_none_or(|(pid, _)| {
        c.index.iter().any(|p| p.pid == u64::from(pid)) || procs.iter().any(|p| p.pid == u64::from(pid))
    });
    if procs.is_empty() && c.index.is_empty() {
        let _ = writeln!(
            out,
            "s3dlio-direct: the library never loaded: no process left statistics ({pattern}). A static or \
             setuid program cannot load it, nor a 32-bit one."
        );
        for e in unreadable {
            let _ = writeln!(out, "  skipped   {e}");
        }
        return out;
    }
    let t = merge(procs);
    let loaded = c.index.len().max(t.processes);
    let plural = |n: usize| if n == 1 { "" } else { "es" };
    let _ = writeln!(
        out,
        "s3dlio-direct: {} process{} with statistics: {}",
        t.processes,
        plural(t.processes),
        if procs.is_empty() { "none".to_string() } else { program_list(procs.iter().map(|p| p.program.clone()), 6) }
    );
    index_lines(c, &mut out, "  ");
    if let Some((pid, name)) = cmd.filter(|_| !cmd_loaded) {
        let _ = writeln!(
            out,
            "  the command itself ({name}, pid {pid}) never loaded the library: a static, setuid or 32-bit program \
             cannot"
        );
    }
    let mut line = |label: &str, text: &str| {
        let _ = writeln!(out, "  {label:<9} {text}");
    };
    let (matched, direct) = (t.get(Counter::OpensMatched), t.get(Counter::OpensDirect));
    let fallback = t.get(Counter::OpensFallback);
    line("opens", &format!("{matched} matched --paths: {direct} direct, {fallback} left buffered"));
    let (r, rb) = (t.get(Counter::ReadBytes), t.get(Counter::ReadBouncedBytes));
    let (w, wb) = (t.get(Counter::WriteBytes), t.get(Counter::WriteBouncedBytes));
    let read = format!(
        "{} in {} calls; {} of it bounced (misaligned buffer, offset or length), {} copied from read-ahead windows",
        human(r),
        t.get(Counter::ReadCalls),
        human(rb),
        human(t.get(Counter::ReadaheadCopiedBytes)),
    );
    line("read", &read);
    line("device", &device_line(r, t.get(Counter::ReadDeviceBytes), t.get(Counter::ReadaheadBytes)));
    let written = format!(
        "{} in {} calls; {} of it bounced (small writes and unaligned pieces through the page cache, dropped after)",
        human(w),
        t.get(Counter::WriteCalls),
        human(wb)
    );
    line("written", &written);
    line("fallbacks", &fallback_line(&t.fallbacks));
    let shown = [
        Counter::ReadDeviceBytes,
        Counter::ReadaheadBytes,
        Counter::ReadaheadCopiedBytes,
        Counter::OpensMatched,
        Counter::OpensDirect,
        Counter::OpensFallback,
        Counter::ReadBytes,
        Counter::ReadBouncedBytes,
        Counter::ReadBouncedCalls,
        Counter::ReadCalls,
        Counter::WriteBytes,
        Counter::WriteBouncedBytes,
        Counter::WriteBouncedCalls,
        Counter::WriteCalls,
    ];
    let others: Vec<String> = Counter::ALL
        .iter()
        .filter(|c| !shown.contains(c) && t.get(**c) > 0)
        .map(|c| format!("{} {}", c.key(), t.get(*c)))
        .collect();
    if !others.is_empty() {
        line("also", &others.join(", "));
    }
    let unfinished: Vec<&ProcStats> = procs.iter().filter(|p| p.live).collect();
    if !unfinished.is_empty() {
        let running: Vec<&&ProcStats> =
            unfinished.iter().filter(|p| p.starttime.is_some_and(|s| alive(p.pid, s))).collect();
        let mut text = format!(
            "{} process{} did not exit normally (a signal: SIGTERM, SIGKILL, Ctrl-C, the OOM killer): counted up to \
             their last call",
            unfinished.len(),
            plural(unfinished.len())
        );
        if !running.is_empty() {
            let pids: Vec<String> = running.iter().map(|p| p.pid.to_string()).collect();
            let _ = write!(text, "; still running: pid {}", pids.join(", "));
        }
        line("ended", &text);
    }
    let mmaps = t.get(Counter::MmapCalls);
    let verdict = if matched == 0 {
        format!(
            "the library ran in {loaded} process{} but no file they opened matched --paths, so nothing went direct: \
             `s3dlio-direct probe PATH` shows what matches",
            plural(loaded)
        )
    } else if direct == 0 {
        "every matched file stayed in the page cache (see fallbacks): `s3dlio-direct probe PATH` says why".to_string()
    } else if t.get(Counter::MapDirectMappings) > 0 && t.get(Counter::MapDirectMappings) >= t.get(Counter::MapMappings)
    {
        format!(
            "working: {direct} of {matched} matched opens went direct, and the {} mapping{} of matched files were served \
             direct ({} read with O_DIRECT, none through the page cache)",
            t.get(Counter::MapDirectMappings),
            if t.get(Counter::MapDirectMappings) == 1 { "" } else { "s" },
            human(t.get(Counter::MapDirectReadBytes))
        )
    } else if mmaps > 0 || t.get(Counter::MapMappings) > 0 {
        let maps = t.get(Counter::MapMappings).max(mmaps);
        let dmaps = t.get(Counter::MapDirectMappings);
        let served = if dmaps > 0 {
            format!(
                ": {dmaps} of them served direct ({} read with O_DIRECT), the other {} not",
                human(t.get(Counter::MapDirectReadBytes)),
                maps.saturating_sub(dmaps)
            )
        } else {
            String::new()
        };
        let bounded = if t.get(Counter::MapMappings) > 0 {
            format!(
                "bounded in the page cache (peak {}, {} given back)",
                human(t.get(Counter::MapPeakBytes)),
                human(t.get(Counter::MapGivenBackBytes))
            )
        } else {
            "through the page cache (S3DLIO_DIRECT_MAP=off)".to_string()
        };
        format!(
            "partly: {direct} of {matched} matched opens went direct, but matched files were mapped {maps} time{} \
             (mmap){served}: what a program reads through a mapping that is not served direct is not direct, {bounded}",
            if maps == 1 { "" } else { "s" }
        )
    } else {
        format!("working: {direct} of {matched} matched opens went direct")
    };
    let unseen = t.get(Counter::CachedUnseenBytes);
    let verdict = if unseen > 0 && direct > 0 {
        let n = c.files.counts().iter().find(|(v, _)| *v == Verdict::Unseen).map_or(0, |x| x.1);
        let which = if n > 0 { format!("{n} file{}", if n == 1 { "" } else { "s" }) } else { "files".to_string() };
        format!(
            "{}; {which} also had {} cached by I/O the library did not see (io_uring, Linux AIO, raw system \
             calls): not direct, named under files",
            verdict.replacen("working:", "partly:", 1),
            human(unseen)
        )
    } else {
        verdict
    };
    if !c.files.is_empty() {
        out.push_str(&c.files.summary(FILES_PER_VERDICT, "  "));
    }
    let mut line = |label: &str, text: &str| {
        let _ = writeln!(out, "  {label:<9} {text}");
    };
    line("verdict", &verdict);
    for e in unreadable {
        line("skipped", e);
    }
    let _ = writeln!(out, "  per process: s3dlio-direct stats {pattern}");
    out
}

pub fn main(args: StatsArgs) -> i32 {
    let c = collect(&args.files, &|_: &str| true);
    for p in &c.problems {
        warning(p);
    }
    if c.procs.is_empty() && c.index.is_empty() {
        error("no statistics to show: pass the files or directories that S3DLIO_DIRECT_STATS or `run --stats DIR` produced");
        return 1;
    }
    let t = merge(&c.procs);
    if args.json {
        println!("{}", merged_json(&c, &t));
    } else {
        print!("{}", table(&c.procs, &t));
        let mut more = String::new();
        index_lines(&c, &mut more, "");
        if !c.files.is_empty() {
            more.push_str(&c.files.summary(FILES_PER_VERDICT, ""));
        }
        print!("{more}");
    }
    i32::from(!c.problems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3dlio_engine::stats::{Stats, SLOTS};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("s3dlio-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn all(d: &Path) -> Collection {
        collect(&[d.to_path_buf()], &|_: &str| true)
    }

    #[test]
    fn reads_what_the_library_writes_and_merges() {
        let d = tmpdir("merge");
        let a = Stats::new();
        a.add(Counter::ReadBytes, 1000);
        a.add(Counter::ReadBouncedBytes, 100);
        a.add(Counter::ReadDeviceBytes, 1536);
        a.add(Counter::OpensMatched, 2);
        a.add(Counter::OpensDirect, 1);
        a.fallback(Fallback::FsNoDirect);
        let b = Stats::new();
        b.add(Counter::ReadBytes, 24);
        b.add(Counter::WriteBytes, 4096);
        b.fallback(Fallback::FsNoDirect);
        b.fallback(Fallback::BelowMinSize);
        write(&d, "a.json", &a.to_json(10, 1, "python3"));
        write(&d, "b.json", &b.to_json(11, 1, "python3"));
        write(&d, "c.json.tmp5", "partial");
        let c = all(&d);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.procs.len(), 2);
        let t = merge(&c.procs);
        assert_eq!(t.processes, 2);
        assert_eq!(t.get(Counter::ReadBytes), 1024);
        assert_eq!(t.get(Counter::WriteBytes), 4096);
        assert_eq!(t.programs, [("python3".to_string(), 2)]);
        let j = merged_json(&c, &t);
        assert_eq!(j["read_bytes"], 1024);
        assert_eq!(j["fallbacks"]["fs_no_odirect"], 2);
        assert_eq!(j["fallbacks"]["below_min_size"], 1);
        assert_eq!(j["pids"], serde_json::json!([10, 11]));
        let table = table(&c.procs, &t);
        assert!(table.contains("TOTAL"), "{table}");
        assert!(table.contains("fallbacks: fs_no_odirect 2, below_min_size 1"), "{table}");
        let summary = summary_text(&c, &[], "x", None);
        assert!(summary.contains("2 processes with statistics: python3 x2"), "{summary}");
        assert!(summary.contains("working: 1 of 2 matched opens went direct"), "{summary}");
        assert!(summary.contains("read      1.0 KiB in 0 calls; 100 B of it bounced"), "{summary}");
        assert!(
            summary.contains("device    1.5 KiB asked for reads, 1.50x the bytes read (amplification)"),
            "{summary}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn counters_files_index_and_dedup() {
        let d = tmpdir("live");
        let s = Stats::new();
        s.add(Counter::ReadBytes, 100);
        s.add(Counter::OpensMatched, 1);
        s.add(Counter::OpensDirect, 1);
        // written before an exec, then the next image (killed) counted on in the counters file
        write(&d, "s-7.json", &s.to_json(7, 70, "bash"));
        let mut v = [0u64; SLOTS];
        v[Counter::ReadBytes as usize] = 300;
        v[Counter::OpensMatched as usize] = 2;
        v[Counter::OpensDirect as usize] = 2;
        std::fs::write(d.join("s-7.json.70.live"), statsdir::live_page(7, 70, 0, b"python3", b"h", &v)).unwrap();
        // a reused pid: another process
        write(&d, "s-8.json", &s.to_json(8, 80, "cat"));
        let idx = "{\"s3dlio_index\":1,\"event\":\"load\",\"pid\":7,\"starttime\":70,\"host\":\"h\",\"program\":\"bash\",\"active\":true}\n\
                   {\"s3dlio_index\":1,\"event\":\"exec\",\"pid\":7,\"starttime\":70,\"host\":\"h\",\"program\":\"bash\"}\n\
                   {\"s3dlio_index\":1,\"event\":\"load\",\"pid\":7,\"starttime\":70,\"host\":\"h\",\"program\":\"python3\",\"active\":true}\n\
                   {\"s3dlio_index\":1,\"event\":\"matched\",\"pid\":7,\"starttime\":70,\"host\":\"h\",\"program\":\"python3\"}\n\
                   {\"s3dlio_index\":1,\"event\":\"load\",\"pid\":9,\"starttime\":90,\"host\":\"h\",\"program\":\"bash\",\"active\":true}\n\
                   {\"s3dlio_index\":1,\"event\":\"exit\",\"pid\":9,\"starttime\":90,\"host\":\"h\",\"program\":\"bash\"}\n\
                   {\"s3dlio_index\":1,\"event\":\"load\",\"pid\":10,\"starttime\":91,\"host\":\"h\",\"program\":\"git\",\"active\":false,\"inactive\":\"not one of S3DLIO_DIRECT_PROGRAMS\"}\n\
                   {\"s3dlio_index\":1,\"event\":\"lo";
        write(&d, "s-index.jsonl", idx);
        let c = all(&d);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.procs.len(), 2, "{:?}", c.procs);
        let p7 = c.procs.iter().find(|p| p.pid == 7).unwrap();
        assert!(p7.live && p7.program == "python3" && p7.get(Counter::ReadBytes) == 300, "{p7:?}");
        assert_eq!(c.index.len(), 3);
        assert_eq!(c.index[0].programs, ["bash", "python3"]);
        let nothing: Vec<u64> = c.matched_nothing().iter().map(|p| p.pid).collect();
        assert_eq!(nothing, [9, 10]);
        let t = merge(&c.procs);
        let j = merged_json(&c, &t);
        assert_eq!(j["read_bytes"], 400);
        assert_eq!(j["unfinished"], serde_json::json!([7]));
        assert_eq!(j["matched_nothing"], serde_json::json!({"bash": 1}));
        assert_eq!(j["inactive"], serde_json::json!({"git": 1}));
        let summary = summary_text(&c, &[], "x", Some((9, "bash")));
        assert!(summary.contains("1 more process loaded the library and matched nothing: bash"), "{summary}");
        assert!(summary.contains("stayed inactive (not one of S3DLIO_DIRECT_PROGRAMS): git"), "{summary}");
        assert!(summary.contains("1 process did not exit normally"), "{summary}");
        assert!(!summary.contains("never loaded"), "{summary}");
        let summary = summary_text(&c, &[], "x", Some((12345, "static")));
        assert!(summary.contains("the command itself (static, pid 12345) never loaded the library"), "{summary}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_files_are_named() {
        let d = tmpdir("bad");
        let not_json = write(&d, "x.json", "{");
        let newer = write(&d, "y.json", r#"{"schema":2,"pid":1}"#);
        let other = write(&d, "z.json", r#"{"a":1}"#);
        let hostile = write(&d, "h.json", r#"{"schema":1,"pid":1,"read_bytes":-5}"#);
        assert!(load(&not_json).unwrap_err().contains("not JSON"));
        assert!(load(&newer).unwrap_err().contains("schema 2"));
        assert!(load(&other).unwrap_err().contains("no \"schema\""));
        assert!(load(&hostile).unwrap_err().contains("not a count"));
        assert!(load(&d.join("missing.json")).unwrap_err().starts_with("cannot read"));
        std::os::unix::fs::symlink(&not_json, d.join("link.json")).unwrap();
        assert!(load(&d.join("link.json")).unwrap_err().contains("symbolic link"));
        write(&d, "short.json.5.live", "S3DLLIVE");
        write(&d, "bad.jsonl", "not an index\n");
        let c = all(&d);
        assert!(c.procs.is_empty());
        assert_eq!(c.problems.len(), 7, "{:?}", c.problems);
        let empty = d.join("empty");
        std::fs::create_dir(&empty).unwrap();
        let c = all(&empty);
        assert!(c.problems[0].contains("holds no statistics files"), "{:?}", c.problems);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unknown_keys_are_kept() {
        let d = tmpdir("unknown");
        let f = write(
            &d,
            "p.json",
            r#"{"schema":1,"pid":3,"program":"x","read_bytes":5,"read_device_bytes":9,"fallbacks":{"new_reason":4}}"#,
        );
        let p = load(&f).unwrap();
        assert_eq!(p.get(Counter::ReadBytes), 5);
        assert_eq!(p.get(Counter::WriteBytes), 0);
        assert_eq!(p.key("read_device_bytes"), Some(9));
        assert_eq!(p.fallbacks.last(), Some(&("new_reason".to_string(), 4)));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn file_kinds() {
        assert_eq!(kind_of("s-1.json"), Some(Kind::Json));
        assert_eq!(kind_of("s.json.123"), Some(Kind::Json));
        assert_eq!(kind_of("s-1.json.55.live"), Some(Kind::Live));
        assert_eq!(kind_of("s-index.jsonl"), Some(Kind::Index));
        assert_eq!(kind_of("s.json.index"), Some(Kind::Index));
        assert_eq!(kind_of("s-1.json.tmp77"), None);
        assert_eq!(kind_of("notes.txt"), None);
    }

    #[test]
    fn mapped_files_are_not_counted_as_direct() {
        let d = tmpdir("mmap");
        let s = Stats::new();
        s.add(Counter::OpensMatched, 2);
        s.add(Counter::OpensDirect, 2);
        s.add(Counter::MmapCalls, 3);
        write(&d, "a.json", &s.to_json(10, 1, "python3"));
        let summary = summary_text(&all(&d), &[], "x", None);
        assert!(
            summary
                .contains("verdict   partly: 2 of 2 matched opens went direct, but matched files were mapped 3 times"),
            "{summary}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn direct_mappings_are_counted_apart_from_bounded_ones() {
        let d = tmpdir("mmap-direct");
        let s = Stats::new();
        s.add(Counter::OpensMatched, 2);
        s.add(Counter::OpensDirect, 2);
        s.add(Counter::MapMappings, 3);
        s.add(Counter::MapDirectMappings, 2);
        write(&d, "a.json", &s.to_json(10, 1, "python3"));
        let summary = summary_text(&all(&d), &[], "x", None);
        assert!(summary.contains("were mapped 3 times (mmap): 2 of them served direct"), "{summary}");
        s.add(Counter::MapDirectMappings, 1);
        write(&d, "a.json", &s.to_json(10, 1, "python3"));
        let summary = summary_text(&all(&d), &[], "x", None);
        assert!(
            summary.contains("verdict   working: 2 of 2 matched opens went direct, and the 3 mappings"),
            "{summary}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn summary_without_files_says_why() {
        let s = summary_text(&Collection::default(), &[], "/d/p*", None);
        assert!(s.contains("the library never loaded: no process left statistics (/d/p*)"), "{s}");
    }
}
