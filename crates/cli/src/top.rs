//! `s3dlio-direct top [DIR]`: the processes of a job as they run, refreshed every second.
//!
//! With DIR (`run --stats DIR`), the processes are those of DIR's index and counters files
//! that run on this node; without, every process of this user on this node that has the
//! library mapped (`/proc/PID/maps`), with the counters file each has mapped (only a process
//! started with statistics on has one). Rates come from two readings of a process's counters
//! file; the page-cache residency of the files it has open (those its `S3DLIO_DIRECT_PATHS`
//! matches, or that have O_DIRECT) from `cachestat(2)`, or `mincore(2)` before Linux 6.5.
//! On a terminal the view is redrawn in place; otherwise, and with `--json`, each refresh is
//! one JSON line. It ends when every process it saw has ended, or on Ctrl-C.

use crate::stats::{self, alive, load_live, IndexProc, ProcStats};
use crate::units::human;
use crate::{error, warning};
use clap::Args;
use s3dlio_engine::config::{Config, VAR_EXCLUDE, VAR_PATHS};
use s3dlio_engine::stats::Counter;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
#[command(after_help = "DIR is a statistics directory (`run --stats DIR`, or the directory of S3DLIO_DIRECT_STATS): \
                        its processes on this node. Without DIR: every process of yours on this node that has the \
                        library loaded (those started without statistics show no counts).\n\
                        Columns: READ/s and WRITE/s, MB/s read and written direct; AMPL, bytes read from the device \
                        per byte delivered (when the library counts them); BUFFERED, opens left in the page cache \
                        (the reasons below the table); CACHED, page-cache bytes of the matched files it has open.\n\
                        Ends by itself when every process it saw has ended; Ctrl-C ends it too.")]
pub struct TopArgs {
    /// A statistics directory; without it, every process of this user with the library loaded
    #[arg(value_name = "DIR")]
    dir: Option<PathBuf>,
    /// One JSON object per refresh, one per line, also on a terminal
    #[arg(long)]
    json: bool,
    /// Seconds between refreshes
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    interval: f64,
}

/// One process seen in one refresh.
#[derive(Debug, Clone, Default)]
struct Row {
    pid: u64,
    starttime: u64,
    program: String,
    /// Its counters (None: it matched nothing yet, or has no statistics).
    stats: Option<ProcStats>,
    read_rate: f64,
    write_rate: f64,
    amplification: Option<f64>,
    files: usize,
    cached: u64,
}

/// Where the processes come from.
enum Source {
    Dir { dir: PathBuf, index: HashMap<PathBuf, (u64, u64)>, procs: BTreeMap<(u64, u64), IndexProc> },
    Proc,
}

/// Previous readings, for rates.
type Prev = HashMap<(u64, u64), (Instant, u64, u64, Option<u64>)>;

pub fn main(args: TopArgs) -> i32 {
    if !(args.interval.is_finite() && args.interval >= 0.05) {
        error(&format!("--interval {}: give a number of seconds, at least 0.05", args.interval));
        return crate::EXIT_OWN_FAILURE;
    }
    let mut source = match &args.dir {
        Some(d) if !d.is_dir() => {
            error(&format!(
                "{} is not a directory: give the statistics directory of a job (run --stats DIR)",
                d.display()
            ));
            return crate::EXIT_OWN_FAILURE;
        }
        Some(d) => Source::Dir { dir: d.clone(), index: HashMap::new(), procs: BTreeMap::new() },
        None => Source::Proc,
    };
    let tty = !args.json && std::io::stdout().is_terminal();
    let signals = Signals::block();
    let host = String::from_utf8_lossy(&s3dlio_engine::stats::hostname()).into_owned();
    let mut prev: Prev = HashMap::new();
    let mut warned: HashSet<String> = HashSet::new();
    let mut seen_any = false;
    let mut screen = tty.then(Screen::enter);
    let mut last_frame = String::new();
    let what = match &args.dir {
        Some(d) => format!("processes writing statistics into {}", d.display()),
        None => "processes of yours with the library loaded".to_string(),
    };
    let code = loop {
        let (rows, problems) = refresh(&mut source, &host, &mut prev);
        for p in problems {
            if warned.insert(p.clone()) && !tty {
                warning(&p);
            }
        }
        let now = unix_time();
        if let Some(s) = screen.as_mut() {
            last_frame = frame(&rows, &what, seen_any || !rows.is_empty());
            s.draw(&last_frame);
        } else {
            println!("{}", json_line(&rows, now, args.interval));
            let _ = std::io::stdout().flush();
        }
        if !rows.is_empty() {
            seen_any = true;
        } else if seen_any {
            break 0; // the job ended
        }
        if signals.wait(args.interval) {
            break 0; // Ctrl-C, SIGTERM, SIGHUP
        }
    };
    if let Some(s) = screen.take() {
        s.leave();
        print!("{last_frame}");
        for p in &warned {
            warning(p);
        }
    }
    signals.restore();
    code
}

fn unix_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// One reading of every process: the rows (running processes, by pid) and what was skipped.
fn refresh(source: &mut Source, host: &str, prev: &mut Prev) -> (Vec<Row>, Vec<String>) {
    let mut problems = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    match source {
        Source::Dir { dir, index, procs } => {
            read_indexes(dir, index, procs, &mut problems);
            let mut live: HashMap<(u64, u64), ProcStats> = HashMap::new();
            if let Ok(rd) = std::fs::read_dir(&*dir) {
                for e in rd.filter_map(Result::ok) {
                    let name = e.file_name();
                    if stats::kind_of(&name.to_string_lossy()) != Some(stats::Kind::Live) {
                        continue;
                    }
                    match load_live(&e.path()) {
                        Ok(p) => {
                            if let Some(t) = p.starttime.filter(|&t| alive(p.pid, t)) {
                                live.insert((p.pid, t), p);
                            }
                        }
                        Err(e) => problems.push(e),
                    }
                }
            }
            for p in procs.values().filter(|p| p.host == host && alive(p.pid, p.starttime)) {
                let stats = live.remove(&(p.pid, p.starttime));
                rows.push(Row {
                    pid: p.pid,
                    starttime: p.starttime,
                    program: p.program().to_string(),
                    stats,
                    ..Row::default()
                });
            }
            // Counters files of live processes the index does not name (its line was refused).
            for ((pid, t), p) in live {
                rows.push(Row { pid, starttime: t, program: p.program.clone(), stats: Some(p), ..Row::default() });
            }
        }
        Source::Proc => {
            for (pid, t, program, live_path) in processes_with_library() {
                let stats = match live_path.map(|l| load_live(&l)) {
                    Some(Ok(p)) if p.pid == pid && p.starttime == Some(t) => Some(p),
                    Some(Ok(_)) => None,
                    Some(Err(e)) => {
                        problems.push(e);
                        None
                    }
                    None => None,
                };
                rows.push(Row { pid, starttime: t, program, stats, ..Row::default() });
            }
        }
    }
    rows.sort_by_key(|r| r.pid);
    let now = Instant::now();
    let mut next: Prev = HashMap::new();
    let mut seen_files = HashSet::new();
    for r in &mut rows {
        if let Some(s) = &r.stats {
            r.program = proc_comm(r.pid).unwrap_or_else(|| s.program.clone());
            let (rd, wr, dev) = (s.get(Counter::ReadBytes), s.get(Counter::WriteBytes), s.key("read_device_bytes"));
            if let Some((then, prd, pwr, pdev)) = prev.get(&(r.pid, r.starttime)) {
                let dt = now.duration_since(*then).as_secs_f64().max(1e-3);
                r.read_rate = rd.saturating_sub(*prd) as f64 / dt / 1e6;
                r.write_rate = wr.saturating_sub(*pwr) as f64 / dt / 1e6;
                if let (Some(d), Some(pd)) = (dev, pdev) {
                    let delivered = rd.saturating_sub(*prd);
                    r.amplification = (delivered > 0).then(|| d.saturating_sub(*pd) as f64 / delivered as f64);
                }
            }
            next.insert((r.pid, r.starttime), (now, rd, wr, dev));
        }
        let (files, cached) = files_in_use(r.pid, &mut seen_files);
        r.files = files;
        r.cached = cached;
    }
    *prev = next;
    (rows, problems)
}

/// Reads what was appended to DIR's indexes since the last refresh.
fn read_indexes(
    dir: &Path,
    offsets: &mut HashMap<PathBuf, (u64, u64)>,
    procs: &mut BTreeMap<(u64, u64), IndexProc>,
    problems: &mut Vec<String>,
) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.filter_map(Result::ok) {
        if stats::kind_of(&e.file_name().to_string_lossy()) != Some(stats::Kind::Index) {
            continue;
        }
        let path = e.path();
        let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path);
        let Ok(mut f) = f else {
            problems.push(format!("ignored {}: cannot open it without following a link", path.display()));
            continue;
        };
        let Ok(m) = f.metadata() else { continue };
        // SAFETY: no arguments.
        let me = unsafe { libc::geteuid() };
        if !m.is_file() || m.uid() != me {
            problems.push(format!("ignored {}: not a regular file of yours", path.display()));
            continue;
        }
        let (ino, mut off) = offsets.get(&path).copied().unwrap_or((m.ino(), 0));
        if ino != m.ino() || m.len() < off {
            off = 0; // replaced or truncated: read it again
            procs.clear();
        }
        if f.seek(std::io::SeekFrom::Start(off)).is_err() {
            continue;
        }
        let mut buf = Vec::new();
        if f.take(64 << 20).read_to_end(&mut buf).is_err() {
            continue;
        }
        // Only whole lines; a line being appended is read next time.
        let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut by_key: BTreeMap<(String, u64, u64), IndexProc> =
            std::mem::take(procs).into_values().map(|p| ((p.host.clone(), p.pid, p.starttime), p)).collect();
        if let Err(e) = stats::index_text(&String::from_utf8_lossy(&buf[..whole]), &path, &mut by_key) {
            problems.push(e);
        }
        *procs = by_key.into_values().map(|p| ((p.pid, p.starttime), p)).collect();
        offsets.insert(path, (m.ino(), off + whole as u64));
    }
}

fn proc_comm(pid: u64) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_string())
}

fn proc_starttime(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Every process of this user with the library mapped: pid, start time, program, and the
/// counters file it has mapped.
fn processes_with_library() -> Vec<(u64, u64, String, Option<PathBuf>)> {
    // SAFETY: no arguments.
    let me = unsafe { libc::geteuid() };
    let own = std::process::id() as u64;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else { continue };
        if pid == own || e.metadata().map(|m| m.uid()).ok() != Some(me) {
            continue;
        }
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { continue };
        let mut loaded = false;
        let mut live = None;
        for line in maps.lines() {
            let mut f = line.split_whitespace();
            let perms = f.nth(1).unwrap_or("");
            let path = line.find(" /").map(|i| line[i + 1..].trim()).unwrap_or("");
            if path.ends_with("/libs3dlio_direct.so") {
                loaded = true;
            } else if perms == "rw-s" && path.ends_with(s3dlio_engine::statsdir::LIVE_SUFFIX) {
                live = Some(PathBuf::from(path));
            }
        }
        if !loaded {
            continue;
        }
        let Some(t) = proc_starttime(pid) else { continue };
        out.push((pid, t, proc_comm(pid).unwrap_or_else(|| "?".into()), live));
    }
    out
}

/// The matched files `pid` has open (its S3DLIO_DIRECT_PATHS and EXCLUDE, or O_DIRECT in
/// fdinfo) and how many of their bytes are in the page cache; a file already counted for
/// another process this refresh (`seen`) is counted once.
fn files_in_use(pid: u64, seen: &mut HashSet<(u64, u64)>) -> (usize, u64) {
    let cfg = proc_config(pid);
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return (0, 0) };
    let mut files = 0;
    let mut cached = 0;
    let mut mine = HashSet::new();
    for e in rd.filter_map(Result::ok).take(4096) {
        let link = e.path();
        let Ok(target) = std::fs::read_link(&link) else { continue };
        let Ok(meta) = std::fs::metadata(&link) else { continue };
        if !meta.is_file() {
            continue;
        }
        let direct = fd_flags(pid, &e.file_name().to_string_lossy()).is_some_and(|f| f & libc::O_DIRECT as u64 != 0);
        let matched = cfg.as_ref().is_some_and(|c| c.wants(target.as_os_str().as_bytes()));
        if !(direct || matched) || !mine.insert((meta.dev(), meta.ino())) {
            continue;
        }
        files += 1;
        if seen.insert((meta.dev(), meta.ino())) {
            cached += resident_bytes(&link, meta.len()).unwrap_or(0);
        }
    }
    (files, cached)
}

/// The process's own S3DLIO_DIRECT_PATHS and EXCLUDE (its environment at start).
fn proc_config(pid: u64) -> Option<Config> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let vars: Vec<(String, String)> = env
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = std::str::from_utf8(kv).ok()?;
            let (k, v) = kv.split_once('=')?;
            (k == VAR_PATHS || k == VAR_EXCLUDE).then(|| (k.to_string(), v.to_string()))
        })
        .collect();
    if vars.is_empty() {
        return None;
    }
    Some(Config::from_vars(vars).0)
}

fn fd_flags(pid: u64, fd: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let line = text.lines().find(|l| l.starts_with("flags:"))?;
    u64::from_str_radix(line.split_whitespace().nth(1)?, 8).ok()
}

/// Page-cache bytes of a file: cachestat(2), or mincore(2) over a read-only mapping.
fn resident_bytes(path: &Path, size: u64) -> Option<u64> {
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).ok()?;
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let page = s3dlio_engine::align::page_size() as u64;
    if let Ok((cached, _)) = s3dlio_engine::sys::cachestat(fd) {
        return Some(cached * page);
    }
    if size == 0 || size > (64 << 30) {
        return Some(0);
    }
    // SAFETY: a read-only shared mapping of the file, never touched: mincore only asks
    // which of its pages are resident.
    unsafe {
        let len = size as usize;
        let p = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0);
        if p == libc::MAP_FAILED {
            return None;
        }
        let mut vec = vec![0u8; len.div_ceil(page as usize)];
        let ok = libc::mincore(p, len, vec.as_mut_ptr()) == 0;
        libc::munmap(p, len);
        ok.then(|| vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page)
    }
}

fn fallback_reasons(rows: &[Row]) -> Vec<(String, u64, Vec<u64>)> {
    let mut out: Vec<(String, u64, Vec<u64>)> = Vec::new();
    for r in rows {
        let Some(s) = &r.stats else { continue };
        for (reason, n) in s.fallbacks.iter().filter(|(_, n)| *n > 0) {
            match out.iter_mut().find(|(k, _, _)| k == reason) {
                Some((_, t, pids)) => {
                    *t += n;
                    pids.push(r.pid);
                }
                None => out.push((reason.clone(), *n, vec![r.pid])),
            }
        }
    }
    out
}

/// The screen: one row per process, the totals, the fallback reasons.
fn frame(rows: &[Row], what: &str, started: bool) -> String {
    let mut out = String::new();
    let clock = clock();
    let _ = writeln!(out, "s3dlio-direct top  {clock}  {} {what}", rows.len());
    if rows.is_empty() {
        let _ = writeln!(out, "{}", if started { "all ended" } else { "waiting for processes (Ctrl-C to stop)" });
        return out;
    }
    let _ = writeln!(
        out,
        "{:>8}  {:<16} {:>9} {:>9} {:>5} {:>10} {:>10} {:>8} {:>10} {:>5}",
        "PID", "PROGRAM", "READ/s", "WRITE/s", "AMPL", "READ", "WRITTEN", "BUFFERED", "CACHED", "FILES"
    );
    let dash = || "-".to_string();
    for r in rows {
        let s = r.stats.as_ref();
        let _ = writeln!(
            out,
            "{:>8}  {:<16} {:>9} {:>9} {:>5} {:>10} {:>10} {:>8} {:>10} {:>5}",
            r.pid,
            truncate(&r.program, 16),
            s.map_or_else(dash, |_| format!("{:.1}", r.read_rate)),
            s.map_or_else(dash, |_| format!("{:.1}", r.write_rate)),
            r.amplification.map_or_else(dash, |a| format!("{a:.2}")),
            s.map_or_else(dash, |s| human(s.get(Counter::ReadBytes))),
            s.map_or_else(dash, |s| human(s.get(Counter::WriteBytes))),
            s.map_or_else(dash, |s| s.get(Counter::OpensFallback).to_string()),
            human(r.cached),
            r.files,
        );
    }
    let sum = |f: &dyn Fn(&ProcStats) -> u64| rows.iter().filter_map(|r| r.stats.as_ref()).map(f).sum::<u64>();
    let _ = writeln!(
        out,
        "{:>8}  {:<16} {:>9.1} {:>9.1} {:>5} {:>10} {:>10} {:>8} {:>10} {:>5}",
        "TOTAL",
        format!("{} process{}", rows.len(), if rows.len() == 1 { "" } else { "es" }),
        rows.iter().map(|r| r.read_rate).sum::<f64>(),
        rows.iter().map(|r| r.write_rate).sum::<f64>(),
        "",
        human(sum(&|s| s.get(Counter::ReadBytes))),
        human(sum(&|s| s.get(Counter::WriteBytes))),
        sum(&|s| s.get(Counter::OpensFallback)),
        human(rows.iter().map(|r| r.cached).sum()),
        rows.iter().map(|r| r.files).sum::<usize>(),
    );
    let reasons = fallback_reasons(rows);
    if reasons.is_empty() {
        out.push_str("left on the page cache: no matched open\n");
    } else {
        let parts: Vec<String> = reasons
            .iter()
            .map(|(r, n, pids)| {
                let pids: Vec<String> = pids.iter().take(4).map(u64::to_string).collect();
                format!("{r} {n} (pid {})", pids.join(","))
            })
            .collect();
        let _ = writeln!(out, "left on the page cache: {}", parts.join("; "));
    }
    let bounced = sum(&|s| s.get(Counter::WriteBouncedBytes));
    let mmaps = sum(&|s| s.get(Counter::MmapCalls));
    if bounced > 0 || mmaps > 0 {
        let _ = writeln!(
            out,
            "through the page cache on purpose: {} of small or unaligned writes (dropped after); {mmaps} mmap of direct files",
            human(bounced)
        );
    }
    if rows.iter().any(|r| r.stats.is_none()) {
        out.push_str("-: matched nothing yet, or started without statistics\n");
    }
    out
}

/// The local time of day, HH:MM:SS.
fn clock() -> String {
    // SAFETY: time and localtime_r fill in plain data.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return String::new();
        }
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// One refresh as one JSON object.
fn json_line(rows: &[Row], time: f64, interval: f64) -> Value {
    let procs: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut o = Map::new();
            o.insert("pid".into(), r.pid.into());
            o.insert("starttime".into(), r.starttime.into());
            o.insert("program".into(), r.program.clone().into());
            o.insert("statistics".into(), r.stats.is_some().into());
            o.insert("read_mbps".into(), round(r.read_rate).into());
            o.insert("write_mbps".into(), round(r.write_rate).into());
            o.insert("amplification".into(), r.amplification.map(round).into());
            if let Some(s) = &r.stats {
                for c in [
                    Counter::ReadBytes,
                    Counter::WriteBytes,
                    Counter::OpensMatched,
                    Counter::OpensDirect,
                    Counter::OpensFallback,
                    Counter::WriteBouncedBytes,
                    Counter::MmapCalls,
                ] {
                    o.insert(c.key().into(), s.get(c).into());
                }
                let fb: Map<String, Value> =
                    s.fallbacks.iter().filter(|(_, n)| *n > 0).map(|(k, n)| (k.clone(), (*n).into())).collect();
                o.insert("fallbacks".into(), fb.into());
            }
            o.insert("files".into(), r.files.into());
            o.insert("page_cache_bytes".into(), r.cached.into());
            Value::Object(o)
        })
        .collect();
    let sum = |c: Counter| rows.iter().filter_map(|r| r.stats.as_ref()).map(|s| s.get(c)).sum::<u64>();
    json!({
        "time": round(time),
        "interval": interval,
        "processes": procs,
        "total": {
            "processes": rows.len(),
            "read_mbps": round(rows.iter().map(|r| r.read_rate).sum()),
            "write_mbps": round(rows.iter().map(|r| r.write_rate).sum()),
            "read_bytes": sum(Counter::ReadBytes),
            "write_bytes": sum(Counter::WriteBytes),
            "opens_fallback": sum(Counter::OpensFallback),
            "page_cache_bytes": rows.iter().map(|r| r.cached).sum::<u64>(),
        },
    })
}

fn round(v: f64) -> f64 {
    ((v * 1000.0).round() / 1000.0).max(0.0)
}

/// The terminal while the view is on: the alternate screen, redrawn in place.
struct Screen;

impl Screen {
    fn enter() -> Screen {
        let _ =
            crossterm::execute!(std::io::stdout(), crossterm::terminal::EnterAlternateScreen, crossterm::cursor::Hide);
        Screen
    }

    fn draw(&mut self, text: &str) {
        let (cols, lines) = crossterm::terminal::size().unwrap_or((120, 40));
        let mut out = std::io::stdout();
        let _ = crossterm::queue!(
            out,
            crossterm::cursor::MoveTo(0, 0),
            crossterm::terminal::Clear(crossterm::terminal::ClearType::All)
        );
        for (i, line) in text.lines().take(lines.saturating_sub(1) as usize).enumerate() {
            let _ = crossterm::queue!(
                out,
                crossterm::cursor::MoveTo(0, i as u16),
                crossterm::style::Print(truncate(line, cols as usize))
            );
        }
        let _ = out.flush();
    }

    fn leave(self) {
        let _ =
            crossterm::execute!(std::io::stdout(), crossterm::cursor::Show, crossterm::terminal::LeaveAlternateScreen);
    }
}

/// SIGINT, SIGTERM and SIGHUP, blocked and taken as the end of the view.
struct Signals {
    set: libc::sigset_t,
    old: libc::sigset_t,
}

impl Signals {
    fn block() -> Signals {
        // SAFETY: sigset_t is plain data; the calls fill it in.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            Signals { set, old }
        }
    }

    /// Waits `secs`; true if a signal came.
    fn wait(&self, secs: f64) -> bool {
        let deadline = Instant::now() + std::time::Duration::from_secs_f64(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let ts =
                libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as libc::c_long };
            // SAFETY: `set` and `ts` are live; a null info pointer is allowed.
            let r = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
            if r > 0 {
                return true;
            }
        }
    }

    fn restore(&self) {
        // SAFETY: `old` was filled in by pthread_sigmask.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}
