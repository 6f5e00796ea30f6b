//! `s3dlio-direct`: the command people use instead of composing LD_PRELOAD by hand.
//!
//! `run` starts a program with `libs3dlio_direct.so` preloaded, `probe` says what the kernel
//! offers O_DIRECT on a path, `stats` merges the per-process statistics files the shim writes.

mod files;
mod library;
mod probe;
mod run;
mod sanitizer;
mod stats;
mod top;
mod units;

use clap::{Args, Parser, Subcommand};
use s3dlio_engine::pathmatch::split_list;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Exit status when s3dlio-direct itself fails: every usage error of every subcommand (an
/// unknown subcommand or option, a missing or malformed value) and `run`'s own failures (no
/// library). Kept apart from the statuses CMD can give, as `env`, `nice` and `timeout` do,
/// and used by every subcommand so that a script needs to know only one.
pub const EXIT_OWN_FAILURE: i32 = 125;

#[derive(Parser, Debug)]
#[command(
    name = "s3dlio-direct",
    version,
    about = "Make a program's file I/O bypass the page cache (O_DIRECT), without changing the program",
    after_help = "Start with `s3dlio-direct probe /your/data`, then \
                  `s3dlio-direct run --paths /your/data --stats /tmp/st -- python train.py`.\n\
                  Each subcommand has its own --help. A usage error (of any subcommand) exits with 125."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run CMD with libs3dlio_direct.so preloaded, so I/O on matched files goes direct
    Run(RunArgs),
    /// Say, for each PATH, what the kernel offers: O_DIRECT, alignment, RWF_DONTCACHE, matching pattern
    Probe(ProbeArgs),
    /// Merge per-process statistics files into a table (or one JSON object)
    Stats(StatsArgs),
    /// Watch the processes of a job while they run: MB/s direct, fallbacks, page-cache residency
    Top(top::TopArgs),
}

#[derive(Args, Debug)]
#[command(
    override_usage = "s3dlio-direct run [OPTIONS] -- CMD [ARGS]...",
    after_help = "Every option sets the S3DLIO_DIRECT_* variable the library reads (see the README); \
                  variables already in the environment are used for options not given.\n\n\
                  Examples:\n  \
                  s3dlio-direct run --paths /data -- python train.py\n  \
                  s3dlio-direct run --paths data --only python3 --stats /tmp/st -- bash train.sh\n  \
                  s3dlio-direct run --paths '/scratch/**/*.npy' --exclude /scratch/logs -- ./loader\n\n\
                  Exit status: CMD's; if CMD was killed by a signal, s3dlio-direct kills itself with the same \
                  signal. 125: s3dlio-direct itself failed (a usage error, a bad value, library not found); 126: CMD could \
                  not be executed; 127: CMD was not found."
)]
pub struct RunArgs {
    /// Files to make direct: colon-separated globs or directories (S3DLIO_DIRECT_PATHS). Relative
    /// entries are taken from the current directory. May be given several times
    #[arg(long, value_name = "GLOBS")]
    paths: Vec<OsString>,
    /// Files to leave alone even if --paths matches them (S3DLIO_DIRECT_EXCLUDE). May be given several times
    #[arg(long, value_name = "GLOBS")]
    exclude: Vec<OsString>,
    /// Read-only opens of files smaller than N stay buffered, e.g. 1MiB (S3DLIO_DIRECT_MIN_SIZE)
    #[arg(long, value_name = "N")]
    min_size: Option<OsString>,
    /// Raise memory and offset alignment to at least N, a power of two (S3DLIO_DIRECT_ALIGN)
    #[arg(long, value_name = "N")]
    align: Option<OsString>,
    /// Also open matched files with O_SYNC (S3DLIO_DIRECT_SYNC=1)
    #[arg(long)]
    sync: bool,
    /// Only processes whose program name matches PROGRAM (a glob; colon-separated list) use the
    /// shim, e.g. python3 (S3DLIO_DIRECT_PROGRAMS). May be given several times
    #[arg(long, value_name = "PROGRAM")]
    only: Vec<OsString>,
    /// Every process writes its statistics into DIR; a summary is printed when CMD ends
    #[arg(long, value_name = "DIR")]
    stats: Option<PathBuf>,
    /// Library log level: error, warn, info or debug (S3DLIO_DIRECT_LOG)
    #[arg(long, value_name = "LEVEL")]
    log: Option<OsString>,
    /// The command to run, after `--`
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Args, Debug)]
#[command(after_help = "A directory is probed by creating (and deleting) a file in it, or else by opening a file \
                        it holds; a path that does not exist yet is probed at its nearest existing parent.\n\
                        Exit status: 0; 1 if some PATH could not be probed; 125 on a usage error (an unknown \
                        option, no PATH, a malformed --paths or --exclude).")]
pub struct ProbeArgs {
    /// Files, directories or block devices
    #[arg(required = true, value_name = "PATH")]
    targets: Vec<PathBuf>,
    /// Check matching against these globs instead of S3DLIO_DIRECT_PATHS (as `run --paths`)
    #[arg(long, value_name = "GLOBS")]
    paths: Vec<OsString>,
    /// Check against these globs instead of S3DLIO_DIRECT_EXCLUDE (as `run --exclude`)
    #[arg(long, value_name = "GLOBS")]
    exclude: Vec<OsString>,
    /// One JSON array, an object per PATH
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "The files are those S3DLIO_DIRECT_STATS (or `run --stats DIR`) makes, one per process.\n\
                        Exit status: 0; 1 if some FILE could not be read (the others are still merged); 125 on a \
                        usage error.")]
pub struct StatsArgs {
    /// Statistics files, or directories whose *.json files are read
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Print one merged JSON object instead of the table
    #[arg(long)]
    json: bool,
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(usage_exit_code(&e));
        }
    };
    let code = match cli.command {
        Command::Run(a) => run::main(a),
        Command::Probe(a) => probe::main(a),
        Command::Stats(a) => stats::main(a),
        Command::Top(a) => top::main(a),
    };
    std::process::exit(code)
}

/// The exit status for what clap reports: 0 for `--help` and `--version` (printed on
/// stdout), [`EXIT_OWN_FAILURE`] for every usage error, where clap's own default is 2.
fn usage_exit_code(e: &clap::Error) -> i32 {
    if e.use_stderr() {
        EXIT_OWN_FAILURE
    } else {
        0
    }
}

/// Prints an error the way every subcommand does.
pub fn error(msg: &str) {
    eprintln!("s3dlio-direct: error: {msg}");
}

/// Prints a warning the way every subcommand does.
pub fn warning(msg: &str) {
    eprintln!("s3dlio-direct: warning: {msg}");
}

/// Joins `--paths`-style values into one colon-separated list, making each relative entry
/// absolute against `cwd`. The cwd is escaped: a directory named `run[1]` or `a:b` must
/// match itself, not be read as a glob or split in two.
pub fn absolute_globs(values: &[OsString], cwd: &Path) -> OsString {
    let mut out = Vec::new();
    for value in values {
        for entry in split_list(value.as_bytes()).filter(|e| !e.is_empty()) {
            if !out.is_empty() {
                out.push(b':');
            }
            if entry[0] != b'/' {
                out.extend(escape_glob(cwd.as_os_str().as_bytes()));
                if out.last() != Some(&b'/') {
                    out.push(b'/');
                }
            }
            out.extend_from_slice(entry);
        }
    }
    OsString::from_vec(out)
}

fn escape_glob(literal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(literal.len() + 8);
    for &b in literal {
        if matches!(b, b'\\' | b'*' | b'?' | b'[' | b']' | b':') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// The current directory, or an error message saying so.
pub fn current_dir() -> Result<PathBuf, String> {
    std::env::current_dir().map_err(|e| format!("cannot read the current directory: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn globs(values: &[&str], cwd: &str) -> String {
        let values: Vec<OsString> = values.iter().map(OsString::from).collect();
        absolute_globs(&values, Path::new(cwd)).into_string().unwrap()
    }

    #[test]
    fn relative_entries_become_absolute() {
        assert_eq!(globs(&["/data"], "/home/u"), "/data");
        assert_eq!(globs(&["data"], "/home/u"), "/home/u/data");
        assert_eq!(globs(&["a:/b::c/*.npy"], "/w"), "/w/a:/b:/w/c/*.npy");
        assert_eq!(globs(&["a", "/b"], "/"), "/a:/b");
        assert_eq!(globs(&["x\\:y"], "/w"), "/w/x\\:y");
        assert_eq!(globs(&[""], "/w"), "");
    }

    #[test]
    fn cwd_is_escaped() {
        assert_eq!(globs(&["d"], "/runs/r[1]*?"), "/runs/r\\[1\\]\\*\\?/d");
        assert_eq!(globs(&["d"], "/a:b\\c"), "/a\\:b\\\\c/d");
        let (set, warnings) = s3dlio_engine::pathmatch::PatternSet::parse("P", &globs(&["d"], "/runs/r[1]:x"));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(set.matches(b"/runs/r[1]:x/d/f"));
        assert!(!set.matches(b"/runs/r1:x/d/f"));
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_usage_error_exits_125() {
        for args in [
            &["s3dlio-direct"][..],
            &["s3dlio-direct", "frobnicate"],
            &["s3dlio-direct", "--bogus"],
            &["s3dlio-direct", "probe"],
            &["s3dlio-direct", "probe", "--json"],
            &["s3dlio-direct", "probe", "--bogus", "/"],
            &["s3dlio-direct", "stats"],
            &["s3dlio-direct", "stats", "--bogus", "f"],
            &["s3dlio-direct", "run", "--paths", "/d"],
            &["s3dlio-direct", "run", "--stats"],
        ] {
            let e = Cli::try_parse_from(args).expect_err(&format!("{args:?} parsed"));
            assert_eq!(usage_exit_code(&e), EXIT_OWN_FAILURE, "{args:?}: {e}");
        }
        for args in
            [&["s3dlio-direct", "--help"][..], &["s3dlio-direct", "--version"], &["s3dlio-direct", "stats", "-h"]]
        {
            let e = Cli::try_parse_from(args).expect_err("help is an early exit");
            assert_eq!(usage_exit_code(&e), 0, "{args:?}");
        }
    }

    #[test]
    fn run_takes_everything_after_the_command() {
        let cli = Cli::try_parse_from(["s3dlio-direct", "run", "--paths", "/d", "--", "python3", "-c", "x", "--paths"])
            .unwrap();
        let Command::Run(a) = cli.command else { panic!("not run") };
        assert_eq!(a.command, ["python3", "-c", "x", "--paths"]);
        let cli = Cli::try_parse_from(["s3dlio-direct", "run", "--paths", "/d", "cat", "-n"]).unwrap();
        let Command::Run(a) = cli.command else { panic!("not run") };
        assert_eq!(a.command, ["cat", "-n"]);
        assert!(Cli::try_parse_from(["s3dlio-direct", "run", "--paths", "/d"]).is_err());
    }
}
