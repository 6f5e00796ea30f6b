//! The verdict per matched file: the files logs of every process of a job
//! (`s3dlio_engine::filelog`) merged by path, and how `run`'s summary names them (a few per
//! verdict, largest first, and a count of each) and `stats --json` lists them all.

use crate::units::human;
use s3dlio_engine::filelog::FILES_KEY;
use s3dlio_engine::stats::Fallback;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt::Write as _;

/// What happened to one matched file over every process of the job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileStats {
    pub path: String,
    /// Bytes read and written by calls the library served, and of them those that went
    /// through its bounce buffers or the page cache.
    pub read: u64,
    pub read_bounced: u64,
    pub written: u64,
    pub written_bounced: u64,
    /// Bytes found in the page cache at its last close, left by I/O the library did not
    /// serve (Linux AIO, io_uring, raw system calls), then dropped.
    pub cached_unseen: u64,
    /// Times a process was done with it direct (last close, exit, exec).
    pub direct: u64,
    /// Opens left buffered, by reason (a key of the statistics file's `fallbacks`).
    pub fallbacks: Vec<(String, u64)>,
    /// Processes that mapped it, served bounded by the page cache.
    pub mapped: u64,
    /// Processes that mapped it served direct (S3DLIO_DIRECT_MAP=direct).
    pub mapped_direct: u64,
}

/// The verdict on a file, worst first: a file mapped bounded is never called direct, nor one
/// some I/O the library did not see went to; one whose mappings were all served direct is
/// called so apart from one read and written direct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Mapped,
    Unseen,
    Buffered,
    MappedDirect,
    Direct,
}

impl Verdict {
    const ALL: [Verdict; 5] =
        [Verdict::Mapped, Verdict::Unseen, Verdict::Buffered, Verdict::MappedDirect, Verdict::Direct];

    /// Its key in `stats --json`.
    pub fn key(self) -> &'static str {
        match self {
            Verdict::Mapped => "mapped",
            Verdict::Unseen => "cached_unseen",
            Verdict::Buffered => "buffered",
            Verdict::MappedDirect => "mapped_direct",
            Verdict::Direct => "direct",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Mapped => "mapped, bounded (not direct)",
            Verdict::Unseen => "cached by I/O the library did not see",
            Verdict::Buffered => "buffered",
            Verdict::MappedDirect => "mapped, direct",
            Verdict::Direct => "direct",
        }
    }
}

impl FileStats {
    pub fn verdict(&self) -> Verdict {
        if self.mapped > 0 {
            Verdict::Mapped
        } else if self.cached_unseen > 0 {
            Verdict::Unseen
        } else if !self.fallbacks.is_empty() {
            Verdict::Buffered
        } else if self.mapped_direct > 0 {
            Verdict::MappedDirect
        } else {
            Verdict::Direct
        }
    }

    /// The bytes it is ranked by.
    pub fn bytes(&self) -> u64 {
        self.read + self.written + self.cached_unseen
    }

    /// What `run`'s summary says of it after its path.
    fn detail(&self) -> String {
        let mut parts = Vec::new();
        for (what, all, bounced) in
            [("read", self.read, self.read_bounced), ("written", self.written, self.written_bounced)]
        {
            if all > 0 {
                parts.push(match bounced {
                    0 => format!("{what} {}", human(all)),
                    b => format!("{what} {}, {} of it bounced", human(all), human(b)),
                });
            }
        }
        if self.cached_unseen > 0 {
            parts.push(format!(
                "{} cached by I/O the library did not serve (io_uring, Linux AIO, raw system calls), dropped at close",
                human(self.cached_unseen)
            ));
        }
        if self.mapped > 0 {
            parts.push("mapped: read through the page cache, kept within the mapping budget".to_string());
        } else if self.mapped_direct > 0 {
            parts.push("mapped: read from the device with O_DIRECT, none of it through the page cache".to_string());
        }
        if !self.fallbacks.is_empty() {
            let why: Vec<String> = self
                .fallbacks
                .iter()
                .map(|(k, n)| {
                    let text = Fallback::ALL.iter().find(|r| r.key() == k).map_or(k.as_str(), |r| r.text());
                    if *n == 1 {
                        text.to_string()
                    } else {
                        format!("{text} ({n} opens)")
                    }
                })
                .collect();
            parts.push(format!("left buffered: {}", why.join("; ")));
        }
        parts.join("; ")
    }

    fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("path".into(), self.path.clone().into());
        o.insert("verdict".into(), self.verdict().key().into());
        for (k, v) in [
            ("read", self.read),
            ("read_bounced", self.read_bounced),
            ("written", self.written),
            ("written_bounced", self.written_bounced),
            ("cached_unseen", self.cached_unseen),
            ("direct", self.direct),
            ("mapped", self.mapped),
            ("mapped_direct", self.mapped_direct),
        ] {
            o.insert(k.into(), v.into());
        }
        let f: Map<String, Value> = self.fallbacks.iter().map(|(k, n)| (k.clone(), (*n).into())).collect();
        o.insert("fallbacks".into(), f.into());
        Value::Object(o)
    }
}

/// The files of a job, merged by path.
#[derive(Debug, Default)]
pub struct Files {
    by_path: HashMap<String, FileStats>,
    /// Files logs that reached their size limit.
    pub truncated: usize,
}

fn int(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

impl Files {
    /// Adds the lines of one files log; returns how many were not understood.
    pub fn add_log(&mut self, text: &str) -> usize {
        let mut bad = 0;
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(v) = serde_json::from_str::<Value>(l) else {
                bad += 1; // a line cut short by a full disk or a crash mid-write
                continue;
            };
            if v.get(FILES_KEY).is_none() {
                bad += 1;
                continue;
            }
            let event = v.get("event").and_then(Value::as_str).unwrap_or("");
            if event == "truncated" {
                self.truncated += 1;
                continue;
            }
            let Some(path) = v.get("path").and_then(Value::as_str) else {
                bad += 1;
                continue;
            };
            let f = self
                .by_path
                .entry(path.to_string())
                .or_insert_with(|| FileStats { path: path.to_string(), ..FileStats::default() });
            match event {
                "close" | "exit" | "exec" => {
                    f.direct += 1;
                    f.read += int(&v, "read");
                    f.read_bounced += int(&v, "read_bounced");
                    f.written += int(&v, "written");
                    f.written_bounced += int(&v, "written_bounced");
                    f.cached_unseen += int(&v, "cached_unseen");
                }
                "fallback" => {
                    let why = v.get("reason").and_then(Value::as_str).unwrap_or("unknown").to_string();
                    match f.fallbacks.iter_mut().find(|(k, _)| *k == why) {
                        Some(e) => e.1 += 1,
                        None => f.fallbacks.push((why, 1)),
                    }
                }
                "mapped" => f.mapped += 1,
                "mapped_direct" => f.mapped_direct += 1,
                _ => bad += 1,
            }
        }
        bad
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// Every file, largest first (then by path).
    pub fn sorted(&self) -> Vec<&FileStats> {
        let mut v: Vec<&FileStats> = self.by_path.values().collect();
        v.sort_by(|a, b| b.bytes().cmp(&a.bytes()).then_with(|| a.path.cmp(&b.path)));
        v
    }

    /// How many files have each verdict, worst first (only those with any).
    pub fn counts(&self) -> Vec<(Verdict, usize)> {
        let mut n: HashMap<Verdict, usize> = HashMap::new();
        for f in self.by_path.values() {
            *n.entry(f.verdict()).or_default() += 1;
        }
        Verdict::ALL.iter().filter_map(|v| n.get(v).map(|&c| (*v, c))).collect()
    }

    /// The summary's lines: the count per verdict, then at most `per` files of each verdict,
    /// largest first, and how many more there are.
    pub fn summary(&self, per: usize, indent: &str) -> String {
        let mut out = String::new();
        let counts = self.counts();
        let total: usize = counts.iter().map(|c| c.1).sum();
        let list: Vec<String> = counts.iter().map(|(v, n)| format!("{n} {}", v.label())).collect();
        let _ = writeln!(out, "{indent}{:<9} {total} matched file{}: {}", "files", plural(total), list.join(", "));
        let sorted = self.sorted();
        for (v, n) in &counts {
            for f in sorted.iter().filter(|f| f.verdict() == *v).take(per) {
                let detail = f.detail();
                let _ = writeln!(
                    out,
                    "{indent}{:<9}   {:<8} {}{}{}",
                    "",
                    v.key().split('_').next().unwrap_or(""),
                    f.path,
                    if detail.is_empty() { "" } else { ": " },
                    detail
                );
            }
            if *n > per {
                let _ = writeln!(out, "{indent}{:<9}   {:<8} ... and {} more", "", "", n - per);
            }
        }
        if self.truncated > 0 {
            let _ = writeln!(
                out,
                "{indent}{:<9}   the files logs of {} process{} reached their size limit: later files are not named",
                "",
                self.truncated,
                if self.truncated == 1 { "" } else { "es" }
            );
        }
        out
    }

    /// Every file for `stats --json`, largest first.
    pub fn to_json(&self) -> Value {
        Value::Array(self.sorted().into_iter().map(FileStats::to_json).collect())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3dlio_engine::filelog::{line, Event, Tally};

    fn tally(read: u64, written: u64) -> Tally {
        let t = Tally::default();
        t.count(false, read, 0);
        t.count(true, written, written / 2);
        t
    }

    #[test]
    fn lines_merge_into_verdicts() {
        let mut f = Files::default();
        let mut log = String::new();
        log += &line(Event::Close, b"/d/direct", (1, 1), Some(&tally(4096, 0)), 0);
        log += &line(Event::Exit, b"/d/direct", (1, 1), Some(&tally(8192, 100)), 0);
        log += &line(Event::Fallback(Fallback::FsNoDirect), b"/r/ram", (2, 1), None, 0);
        log += &line(Event::Fallback(Fallback::FsNoDirect), b"/r/ram", (2, 1), None, 0);
        log += &line(Event::Close, b"/d/aio", (1, 2), Some(&tally(0, 0)), 65536);
        log += &line(Event::Close, b"/d/map", (1, 3), Some(&tally(100, 0)), 0);
        log += &line(Event::Mapped, b"/d/map", (1, 3), None, 0);
        log += "{\"s3dlio_file\":1,\"event\":\"clo"; // cut short
        assert_eq!(f.add_log(&log), 1);
        let by = |p: &str| f.by_path[p].clone();
        assert_eq!(by("/d/direct").verdict(), Verdict::Direct);
        assert_eq!((by("/d/direct").read, by("/d/direct").written, by("/d/direct").direct), (12288, 100, 2));
        assert_eq!(by("/r/ram").verdict(), Verdict::Buffered);
        assert_eq!(by("/r/ram").fallbacks, vec![("fs_no_odirect".to_string(), 2)]);
        assert_eq!(by("/d/aio").verdict(), Verdict::Unseen);
        assert_eq!(by("/d/map").verdict(), Verdict::Mapped, "a mapped file is never direct");
        let s = f.summary(5, "  ");
        assert!(s.contains("4 matched files: 1 mapped, bounded (not direct), 1 cached by I/O"), "{s}");
        assert!(s.contains("/r/ram: left buffered: filesystem does not support O_DIRECT (2 opens)"), "{s}");
        assert!(s.contains("/d/aio: 64.0 KiB cached by I/O the library did not serve"), "{s}");
        assert!(!s.lines().any(|l| l.contains("direct   /d/map")), "{s}");
        let j = f.to_json();
        assert_eq!(j.as_array().unwrap().len(), 4);
        assert_eq!(j[0]["path"], "/d/aio");
        assert_eq!(j[0]["verdict"], "cached_unseen");
    }

    #[test]
    fn a_file_mapped_direct_is_named_so_unless_bounded_somewhere() {
        let mut f = Files::default();
        let mut log = String::new();
        log += &line(Event::MappedDirect, b"/d/md", (1, 4), None, 0);
        log += &line(Event::Close, b"/d/md", (1, 4), Some(&tally(4096, 0)), 0);
        log += &line(Event::MappedDirect, b"/d/both", (1, 5), None, 0);
        log += &line(Event::Mapped, b"/d/both", (1, 5), None, 0);
        assert_eq!(f.add_log(&log), 0);
        assert_eq!(f.by_path["/d/md"].verdict(), Verdict::MappedDirect);
        assert_eq!(f.by_path["/d/both"].verdict(), Verdict::Mapped, "bounded in one process: not direct");
        let s = f.summary(5, "  ");
        assert!(s.contains("2 matched files: 1 mapped, bounded (not direct), 1 mapped, direct"), "{s}");
        assert!(s.contains("/d/md: read 4.0 KiB; mapped: read from the device with O_DIRECT"), "{s}");
        let j = f.to_json();
        assert!(
            j.as_array().unwrap().iter().any(|e| e["verdict"] == "mapped_direct" && e["mapped_direct"] == 1),
            "{j}"
        );
    }

    #[test]
    fn a_hundred_thousand_files_stay_readable() {
        let mut f = Files::default();
        let mut log = String::new();
        for i in 0..100_000u64 {
            let p = format!("/d/shard-{i:06}");
            log += &match i % 10 {
                0 => line(Event::Fallback(Fallback::BelowMinSize), p.as_bytes(), (1, i), None, 0),
                1 => line(Event::Close, p.as_bytes(), (1, i), Some(&tally(0, 0)), 4096),
                2 => line(Event::Mapped, p.as_bytes(), (1, i), None, 0),
                _ => line(Event::Close, p.as_bytes(), (1, i), Some(&tally(i * 4096, 0)), 0),
            };
        }
        log += &format!("{{\"{FILES_KEY}\":1,\"event\":\"truncated\"}}\n");
        assert_eq!(f.add_log(&log), 0);
        let s = f.summary(5, "  ");
        assert!(s.lines().count() <= 4 * 6 + 2, "{s}");
        assert!(
            s.contains(
                "100000 matched files: 10000 mapped, bounded (not direct), 10000 cached by I/O the library did not \
                 see, 10000 buffered, 70000 direct"
            ),
            "{s}"
        );
        assert!(s.contains("... and 69995 more") && s.contains("... and 9995 more"), "{s}");
        let direct: Vec<&str> = s.lines().filter(|l| l.contains(" direct   /d/")).collect();
        assert_eq!(direct.len(), 5);
        assert!(direct[0].contains("/d/shard-099999"), "largest first: {s}");
        assert!(s.contains("reached their size limit"), "{s}");
        assert_eq!(f.to_json().as_array().unwrap().len(), 100_000);
    }
}
