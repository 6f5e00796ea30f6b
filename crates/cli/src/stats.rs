//! `s3dlio-direct stats` and the summary `run --stats` prints: reading the per-process JSON
//! files the library writes (`s3dlio_engine::stats`), merging them, and showing the result.

use crate::{error, StatsArgs};
use s3dlio_engine::stats::{Counter, Fallback};
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One process's file. An exec'd image folds its predecessor's counters into the same
/// file (same pid), so one file is one process.
#[derive(Debug, Clone)]
pub struct ProcStats {
    pub pid: u64,
    pub program: String,
    /// In [`Counter::ALL`] order.
    pub counters: Vec<u64>,
    /// Documented reasons first, in [`Fallback::COUNTED`] order, then any others in file order.
    pub fallbacks: Vec<(String, u64)>,
}

impl ProcStats {
    fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize]
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
    fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }
}

/// Reads one statistics file.
pub fn load(path: &Path) -> Result<ProcStats, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let not_ours = |why: &str| format!("{} is not a statistics file of s3dlio-direct ({why})", path.display());
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
    let pid = obj.get("pid").and_then(Value::as_u64).ok_or_else(|| not_ours("no \"pid\""))?;
    let program = obj.get("program").and_then(Value::as_str).unwrap_or("?").to_string();
    let counters = Counter::ALL.iter().map(|c| obj.get(c.key()).and_then(Value::as_u64).unwrap_or(0)).collect();
    let mut fallbacks = documented_fallbacks();
    if let Some(f) = obj.get("fallbacks").and_then(Value::as_object) {
        for (reason, n) in f {
            add_to(&mut fallbacks, reason, n.as_u64().unwrap_or(0));
        }
    }
    Ok(ProcStats { pid, program, counters, fallbacks })
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

/// The files named, with each directory replaced by the `*.json` files in it (sorted).
/// Returns the files and one message per argument that gave none.
pub fn expand_args(args: &[PathBuf]) -> (Vec<PathBuf>, Vec<String>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for a in args {
        if !a.is_dir() {
            files.push(a.clone());
            continue;
        }
        let found = json_files_in(a, |_| true);
        match found {
            Ok(f) if f.is_empty() => problems.push(format!("{} holds no *.json statistics files", a.display())),
            Ok(f) => files.extend(f),
            Err(e) => problems.push(format!("cannot list {}: {e}", a.display())),
        }
    }
    (files, problems)
}

/// `dir`'s `*.json` files whose names pass `keep`, sorted. The library's temporary files
/// (`.json.tmp<tid>`) are never included: they are renamed into place when complete.
fn json_files_in(dir: &Path, keep: impl Fn(&str) -> bool) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json") && keep(n)))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
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
/// which pids and which programs contributed.
pub fn merged_json(procs: &[ProcStats], t: &Totals) -> Value {
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
    Value::Object(o)
}

/// Bytes in the largest binary unit that keeps the number at least 1, one decimal.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
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
        row(&mut out, &p.pid.to_string(), &p.program, |c| p.get(c));
    }
    let label = format!("{} process{}", t.processes, if t.processes == 1 { "" } else { "es" });
    row(&mut out, "TOTAL", &label, |c| t.get(c));
    let _ = writeln!(out, "fallbacks: {}", fallback_line(&t.fallbacks));
    out.push_str(
        "MATCHED: opens of files --paths matched; DIRECT: of those, opened with O_DIRECT; BOUNCED: bytes not \
         aligned for O_DIRECT (reads copied through the library's buffers, writes through the page cache)\n",
    );
    out
}

/// What `run --stats DIR` prints when the command has ended: the files of this run
/// (`prefix`) merged, on one screen.
pub fn run_summary(dir: &Path, prefix: &str) -> String {
    let files = json_files_in(dir, |n| n.starts_with(prefix)).unwrap_or_default();
    let mut procs = Vec::new();
    let mut unreadable = Vec::new();
    for f in &files {
        match load(f) {
            Ok(p) => procs.push(p),
            Err(e) => unreadable.push(e),
        }
    }
    summary_text(&procs, &unreadable, &format!("{}/{prefix}*.json", dir.display()))
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

fn summary_text(procs: &[ProcStats], unreadable: &[String], pattern: &str) -> String {
    let mut out = String::from("\n");
    if procs.is_empty() {
        let _ = writeln!(
            out,
            "s3dlio-direct: no process wrote statistics ({pattern}): the library never ran. A static or \
             setuid program cannot load it, and --only may match no program."
        );
        for e in unreadable {
            let _ = writeln!(out, "  {e}");
        }
        return out;
    }
    let t = merge(procs);
    let mut programs: Vec<String> = t
        .programs
        .iter()
        .take(6)
        .map(|(name, n)| if *n == 1 { name.clone() } else { format!("{name} x{n}") })
        .collect();
    if t.programs.len() > 6 {
        programs.push(format!("{} more", t.programs.len() - 6));
    }
    let plural = if t.processes == 1 { "" } else { "es" };
    let _ = writeln!(out, "s3dlio-direct: {} process{plural}: {}", t.processes, programs.join(", "));
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
    let verdict = if matched == 0 {
        "no file the command opened matched --paths, so nothing went direct: `s3dlio-direct probe PATH` \
         shows what matches"
            .to_string()
    } else if direct == 0 {
        "every matched file stayed in the page cache (see fallbacks): `s3dlio-direct probe PATH` says why".to_string()
    } else {
        format!("working: {direct} of {matched} matched opens went direct")
    };
    line("verdict", &verdict);
    for e in unreadable {
        line("skipped", e);
    }
    let _ = writeln!(out, "  per process: s3dlio-direct stats {pattern}");
    out
}

pub fn main(args: StatsArgs) -> i32 {
    let (files, mut problems) = expand_args(&args.files);
    let mut procs = Vec::new();
    for f in &files {
        match load(f) {
            Ok(p) => procs.push(p),
            Err(e) => problems.push(e),
        }
    }
    for p in &problems {
        error(p);
    }
    if procs.is_empty() {
        error("no statistics to show: pass the files that S3DLIO_DIRECT_STATS or `run --stats DIR` produced");
        return 1;
    }
    let t = merge(&procs);
    if args.json {
        println!("{}", merged_json(&procs, &t));
    } else {
        print!("{}", table(&procs, &t));
    }
    i32::from(!problems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3dlio_engine::stats::Stats;

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
        let (files, problems) = expand_args(std::slice::from_ref(&d));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(files.len(), 2);
        let procs: Vec<ProcStats> = files.iter().map(|f| load(f).unwrap()).collect();
        let t = merge(&procs);
        assert_eq!(t.processes, 2);
        assert_eq!(t.get(Counter::ReadBytes), 1024);
        assert_eq!(t.get(Counter::WriteBytes), 4096);
        assert_eq!(t.programs, [("python3".to_string(), 2)]);
        let j = merged_json(&procs, &t);
        assert_eq!(j["read_bytes"], 1024);
        assert_eq!(j["fallbacks"]["fs_no_odirect"], 2);
        assert_eq!(j["fallbacks"]["below_min_size"], 1);
        assert_eq!(j["pids"], serde_json::json!([10, 11]));
        let table = table(&procs, &t);
        assert!(table.contains("TOTAL"), "{table}");
        assert!(table.contains("fallbacks: fs_no_odirect 2, below_min_size 1"), "{table}");
        let summary = summary_text(&procs, &[], "x");
        assert!(summary.contains("2 processes: python3 x2"), "{summary}");
        assert!(summary.contains("working: 1 of 2 matched opens went direct"), "{summary}");
        assert!(summary.contains("read      1.0 KiB in 0 calls; 100 B of it bounced"), "{summary}");
        assert!(
            summary.contains("device    1.5 KiB asked for reads, 1.50x the bytes read (amplification)"),
            "{summary}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_files_are_named() {
        let d = tmpdir("bad");
        let not_json = write(&d, "x.json", "{");
        let newer = write(&d, "y.json", r#"{"schema":2,"pid":1}"#);
        let other = write(&d, "z.json", r#"{"a":1}"#);
        assert!(load(&not_json).unwrap_err().contains("not JSON"));
        assert!(load(&newer).unwrap_err().contains("schema 2"));
        assert!(load(&other).unwrap_err().contains("no \"schema\""));
        assert!(load(&d.join("missing.json")).unwrap_err().starts_with("cannot read"));
        let empty = d.join("empty");
        std::fs::create_dir(&empty).unwrap();
        let (files, problems) = expand_args(&[empty]);
        assert!(files.is_empty());
        assert!(problems[0].contains("no *.json"), "{problems:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unknown_fallback_reasons_are_kept() {
        let d = tmpdir("unknown");
        let f =
            write(&d, "p.json", r#"{"schema":1,"pid":3,"program":"x","read_bytes":5,"fallbacks":{"new_reason":4}}"#);
        let p = load(&f).unwrap();
        assert_eq!(p.get(Counter::ReadBytes), 5);
        assert_eq!(p.get(Counter::WriteBytes), 0);
        assert_eq!(p.fallbacks.last(), Some(&("new_reason".to_string(), 4)));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(1536 << 20), "1.5 GiB");
    }

    #[test]
    fn summary_without_files_says_why() {
        let s = summary_text(&[], &[], "/d/p*.json");
        assert!(s.contains("no process wrote statistics (/d/p*.json)"), "{s}");
    }
}
