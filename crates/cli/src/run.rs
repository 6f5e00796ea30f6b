//! `s3dlio-direct run`: CMD with the shim preloaded, its exit status (or death by signal)
//! passed on, and with `--stats` a summary over every process it started.

use crate::{absolute_globs, current_dir, error, library, sanitizer, stats, warning, RunArgs, EXIT_OWN_FAILURE};
use s3dlio_engine::config::{
    Config, Var, VAR_ALIGN, VAR_EXCLUDE, VAR_LOG, VAR_MIN_SIZE, VAR_PATHS, VAR_PROGRAMS, VAR_STATS, VAR_SYNC,
};
use s3dlio_engine::pathmatch::{EntryRoot, PatternSet};
use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Signals passed on to CMD. SIGHUP too: a closed terminal or an ssh session that drops
/// should stop CMD as it would without the wrapper.
const FORWARDED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Which option sets which variable, to name the option when a value is refused.
const OPTION_OF: [(&str, &str); 8] = [
    (VAR_PATHS, "--paths"),
    (VAR_EXCLUDE, "--exclude"),
    (VAR_MIN_SIZE, "--min-size"),
    (VAR_ALIGN, "--align"),
    (VAR_SYNC, "--sync"),
    (VAR_PROGRAMS, "--only"),
    (VAR_STATS, "--stats"),
    (VAR_LOG, "--log"),
];

/// What `prepare` decided: the command, the variables to set for it, and where the
/// statistics files of this run go (directory, file name prefix).
struct Plan {
    command: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stats: Option<(PathBuf, String)>,
}

pub fn main(args: RunArgs) -> i32 {
    match prepare(&args) {
        Ok(plan) => execute(plan),
        Err(msg) => {
            error(&msg);
            EXIT_OWN_FAILURE
        }
    }
}

fn prepare(a: &RunArgs) -> Result<Plan, String> {
    let cwd = current_dir()?;
    let mut set: Vec<(&str, OsString)> = Vec::new();
    if !a.paths.is_empty() {
        set.push((VAR_PATHS, absolute_globs(&a.paths, &cwd)));
    }
    if !a.exclude.is_empty() {
        set.push((VAR_EXCLUDE, absolute_globs(&a.exclude, &cwd)));
    }
    if a.sync {
        set.push((VAR_SYNC, "1".into()));
    }
    for (var, value) in [(VAR_MIN_SIZE, &a.min_size), (VAR_ALIGN, &a.align), (VAR_LOG, &a.log)] {
        if let Some(v) = value {
            set.push((var, v.clone()));
        }
    }
    if !a.only.is_empty() {
        set.push((VAR_PROGRAMS, a.only.join(OsStr::new(":"))));
    }
    let stats = match &a.stats {
        Some(dir) => {
            let dir = cwd.join(dir);
            let prefix = format!("s3dlio-{}-{}.", unix_time(), std::process::id());
            set.push((VAR_STATS, stats_template(&dir, &prefix)));
            Some((dir, prefix))
        }
        None => None,
    };

    let inherited = std::env::vars_os().filter(|(k, _)| k.as_bytes().starts_with(b"S3DLIO_DIRECT_"));
    let vars: Vec<(OsString, OsString)> = set.iter().map(|(k, v)| (OsString::from(k), v.clone())).collect();
    // The library only warns about a bad value and goes on without it; here nothing has run
    // yet, so refusing is cheap and the run then does what was asked.
    // The same table and parsers as the library's; each warning comes with its variable.
    let (cfg, warnings) = Config::from_vars_by_var(vars.iter().cloned().chain(inherited));
    if !warnings.is_empty() {
        let given: Vec<&str> = set.iter().map(|(k, _)| *k).collect();
        return Err(refusal(&warnings, &given));
    }
    if cfg.paths.is_empty() {
        return Err("no --paths given: without it the library would change nothing. Say which files \
                    should bypass the page cache, e.g.\n  s3dlio-direct run --paths /data -- python train.py\n\
                    (`s3dlio-direct probe /data` first shows whether the filesystem takes O_DIRECT)"
            .to_string());
    }

    let source = if a.paths.is_empty() { VAR_PATHS } else { "--paths" };
    for w in unmatched_entries(&cfg.paths, source) {
        warning(&w);
    }

    let lib = library::for_preload(&library::find()?)?;
    if let Some((dir, _)) = &stats {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the --stats directory {}: {e}", dir.display()))?;
    }
    let mut env = vars;
    // The sanitizer runtimes CMD links must come before the library too (ASan aborts
    // otherwise): exec would run the file PATH gives for its name.
    let linked = sanitizer::resolve(&a.command[0], std::env::var_os("PATH").as_deref())
        .map(|p| sanitizer::needed(&p))
        .unwrap_or_default();
    let preload = sanitizer::preload_value(lib.as_os_str(), std::env::var_os("LD_PRELOAD").as_deref(), &linked);
    env.push(("LD_PRELOAD".into(), preload));
    Ok(Plan { command: a.command.clone(), env, stats })
}

/// How many directory entries `unmatched_entries` looks at for one glob before it gives up
/// and assumes the entry matches something (a `**` over a large tree).
const LOOK_LIMIT: usize = 20_000;

/// A warning for each entry of `paths` that matches nothing that exists, naming the nearest
/// existing parent: most often a typo, but the files may be created later, so `run` goes on.
fn unmatched_entries(paths: &PatternSet, source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in paths.roots().iter().enumerate() {
        if matches_something(paths, i, r) {
            continue;
        }
        let mut parent = PathBuf::from(OsStr::from_bytes(&r.root));
        while std::fs::symlink_metadata(&parent).is_err() && parent.pop() {}
        let nearest = if parent.as_os_str().as_bytes() == r.root.as_slice() {
            format!("{} exists, but nothing in it matches", parent.display())
        } else {
            format!("the nearest existing parent is {}", parent.display())
        };
        out.push(format!(
            "{source} entry '{}' matches nothing that exists ({nearest}); running anyway, files created \
             there later will go direct",
            r.text
        ));
    }
    out
}

/// Whether entry `i` matches an existing path: its root, or something at most `depth` levels
/// below it (looking at no more than [`LOOK_LIMIT`] entries, after which it says yes).
fn matches_something(paths: &PatternSet, i: usize, r: &EntryRoot) -> bool {
    let root = PathBuf::from(OsStr::from_bytes(&r.root));
    if std::fs::symlink_metadata(&root).is_err() {
        return false;
    }
    if paths.entry_matches(i, &r.root) {
        return true;
    }
    let mut queue = std::collections::VecDeque::from([(root, 0usize)]);
    let mut looked = 0;
    while let Some((dir, depth)) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.filter_map(Result::ok) {
            looked += 1;
            if looked > LOOK_LIMIT {
                return true;
            }
            let path = e.path();
            if paths.entry_matches(i, path.as_os_str().as_bytes()) {
                return true;
            }
            // Symlinked directories are followed, as a program's open would: the matching
            // is by the path as spelled.
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir() || (t.is_symlink() && path.is_dir()));
            if is_dir && r.depth.is_none_or(|d| depth + 1 < d) {
                queue.push_back((path, depth + 1));
            }
        }
    }
    false
}

/// What `run` says when it refuses values the library would only warn about: every problem,
/// without the library's "; using X" (nothing uses anything: CMD is not started), then what
/// to fix: the option when one set the variable, else the variable in the environment.
fn refusal(warnings: &[(Option<&'static Var>, String)], given: &[&str]) -> String {
    let mut problems = Vec::new();
    let (mut options, mut variables, mut unknown) = (Vec::new(), Vec::new(), false);
    for (var, w) in warnings {
        problems.push(problem_only(w));
        match var {
            Some(v) => match OPTION_OF.iter().find(|(name, _)| *name == v.name) {
                Some((name, opt)) if given.contains(name) => options.push(*opt),
                _ => variables.push(v.name),
            },
            None => unknown = true,
        }
    }
    let and = |mut words: Vec<&str>| {
        words.dedup();
        match words.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => String::new(),
        }
    };
    let mut fixes = Vec::new();
    if !options.is_empty() {
        fixes.push(format!("fix {}", and(options)));
    }
    if !variables.is_empty() {
        fixes.push(format!("fix or unset {} in the environment", and(variables)));
    }
    if unknown {
        fixes.push("unset the unknown variable in the environment".to_string());
    }
    format!("{}\n  {}, then try again (CMD was not started)", problems.join("\n  "), fixes.join("; "))
}

/// A library warning without the part that says what the library goes on with instead
/// ("; using 0", "; skipped", "ignored"), which `run`, refusing, does not do.
fn problem_only(w: &str) -> &str {
    let tails = ["; using ", "; skipped", "; matching no program"];
    if let Some(at) = tails.iter().filter_map(|t| w.rfind(t)).max() {
        return &w[..at];
    }
    match w.strip_prefix("unknown variable ").and_then(|rest| rest.find(" ignored")) {
        Some(end) => &w[..end + "unknown variable ".len()],
        None => w,
    }
}

/// `DIR/<prefix>%h.%p.json`, with any `%` of DIR doubled so the library does not expand it.
fn stats_template(dir: &Path, prefix: &str) -> OsString {
    let mut t = Vec::new();
    for &b in dir.as_os_str().as_bytes() {
        t.push(b);
        if b == b'%' {
            t.push(b'%');
        }
    }
    if t.last() != Some(&b'/') {
        t.push(b'/');
    }
    t.extend_from_slice(prefix.as_bytes());
    t.extend_from_slice(b"%h.%p.json");
    OsString::from_vec(t)
}

fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn execute(plan: Plan) -> i32 {
    let signals = Signals::block();
    let mut command = Command::new(&plan.command[0]);
    command.args(&plan.command[1..]).envs(plan.env);
    let old_mask = signals.old_mask;
    // SAFETY: the closure only calls pthread_sigmask, which is async-signal-safe, on a copy
    // of a sigset_t it owns.
    unsafe {
        command.pre_exec(move || {
            // std does not reset the mask for the child: CMD must start with the signals
            // this process was started with, not with the ones blocked for forwarding.
            libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut());
            Ok(())
        });
    }
    let spawned = command.spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) => {
            signals.restore();
            let name = plan.command[0].to_string_lossy();
            let (code, why) = match e.kind() {
                std::io::ErrorKind::NotFound => (127, "not found (is it on PATH?)".to_string()),
                std::io::ErrorKind::PermissionDenied => (126, "permission denied (is it executable?)".to_string()),
                _ => (126, e.to_string()),
            };
            error(&format!("cannot run '{name}': {why}"));
            return code;
        }
    };
    let status = signals.wait_forwarding(child.id() as libc::pid_t);
    if let Some((dir, prefix)) = &plan.stats {
        let name =
            Path::new(&plan.command[0]).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        eprint!("{}", stats::run_summary(dir, prefix, Some((child.id(), &name))));
    }
    match status {
        Ok(status) => pass_on(status),
        Err(e) => {
            error(&format!("lost track of the command: {e}"));
            EXIT_OWN_FAILURE
        }
    }
}

/// The forwarded signals and SIGCHLD, blocked so that they are taken one at a time by
/// `sigwaitinfo` instead of interrupting anything.
struct Signals {
    set: libc::sigset_t,
    old_mask: libc::sigset_t,
}

impl Signals {
    fn block() -> Signals {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: every pointer is to a local that lives through the calls; a null
        // `act` only queries the disposition.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            for sig in FORWARDED {
                // A signal ignored when we were started (nohup, a background job) stays
                // ignored: CMD inherits that, and nothing is to be forwarded.
                let mut cur: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut cur) == 0 && cur.sa_sigaction != libc::SIG_IGN {
                    libc::sigaddset(&mut set, sig);
                }
            }
            // An inherited SIG_IGN for SIGCHLD would make the kernel reap CMD itself and
            // its status would be lost.
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old_mask);
        }
        Signals { set, old_mask }
    }

    fn restore(&self) {
        // SAFETY: `old_mask` was filled in by pthread_sigmask.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
    }

    /// Waits for CMD to end, passing on the forwarded signals meanwhile. Returns the raw
    /// wait status.
    fn wait_forwarding(&self, pid: libc::pid_t) -> std::io::Result<libc::c_int> {
        loop {
            // SAFETY: siginfo_t is plain data that sigwaitinfo fills in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: both pointers are to live locals.
            let sig = unsafe { libc::sigwaitinfo(&self.set, &mut info) };
            if sig < 0 {
                continue; // EINTR: a stop and continue of this process
            }
            if sig == libc::SIGCHLD {
                let mut status = 0;
                // SAFETY: `status` is a writable int.
                let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if r == pid {
                    return Ok(status);
                }
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                continue;
            }
            // The terminal sends Ctrl-C to the whole foreground process group (si_code
            // SI_KERNEL): CMD has it already, and a second one would cut its clean-up short.
            if info.si_code != libc::SI_KERNEL {
                // SAFETY: kill has no memory arguments.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }
}

/// Ends this process the way CMD ended: same exit status, or death by the same signal so
/// that a shell or a scheduler sees exactly what it would have seen without the wrapper.
fn pass_on(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        return libc::WEXITSTATUS(status);
    }
    if !libc::WIFSIGNALED(status) {
        return EXIT_OWN_FAILURE;
    }
    let sig = libc::WTERMSIG(status);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `no_core` and `set` are live locals; the other calls have no memory arguments.
    unsafe {
        // CMD's core dump, if it made one, is the one that matters; this process's would
        // only overwrite it.
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    128 + sig
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(min_size: Option<&str>, log: Option<&str>) -> RunArgs {
        RunArgs {
            paths: vec!["/data".into()],
            exclude: Vec::new(),
            min_size: min_size.map(OsString::from),
            align: None,
            sync: false,
            only: Vec::new(),
            stats: None,
            log: log.map(OsString::from),
            command: vec!["true".into()],
        }
    }

    #[test]
    fn a_refused_value_names_its_option() {
        let Err(e) = prepare(&run_args(Some("12Q"), Some("loud"))) else { panic!("12Q accepted") };
        assert_eq!(
            e,
            "S3DLIO_DIRECT_MIN_SIZE='12Q' is not a size (use e.g. 4096, 64K, 1MiB)\n  \
             S3DLIO_DIRECT_LOG='loud' is not one of error, warn, info, debug\n  \
             fix --min-size and --log, then try again (CMD was not started)"
        );
        let Err(e) = prepare(&run_args(None, Some("loud"))) else { panic!("loud accepted") };
        assert_eq!(
            e,
            "S3DLIO_DIRECT_LOG='loud' is not one of error, warn, info, debug\n  \
             fix --log, then try again (CMD was not started)"
        );
    }

    /// A refusal never says what the library would have used instead: nothing runs.
    #[test]
    fn a_refusal_never_says_what_it_would_use() {
        let bad = [
            ("S3DLIO_DIRECT_PATHS", "rel:/a["),
            ("S3DLIO_DIRECT_EXCLUDE", "x"),
            ("S3DLIO_DIRECT_SYNC", "perhaps"),
            ("S3DLIO_DIRECT_ALIGN", "3"),
            ("S3DLIO_DIRECT_MIN_SIZE", "12Q"),
            ("S3DLIO_DIRECT_LOG", "loud"),
            ("S3DLIO_DIRECT_POOL", "huge"),
            ("S3DLIO_DIRECT_READAHEAD", "7"),
            ("S3DLIO_DIRECT_WRITE_BEHIND", "lots"),
            ("S3DLIO_DIRECT_MODE", "fast"),
            ("S3DLIO_DIRECT_PROGRAMS", "a/b"),
            ("S3DLIO_DIRECT_PROGRAMS_TYPO", "x"),
        ];
        for (k, v) in bad {
            let (_, w) = Config::from_vars_by_var([(k, v)]);
            assert!(!w.is_empty(), "{k}={v} accepted");
            let text = refusal(&w, &[]);
            for word in ["using", "skipped", "ignored"] {
                assert!(!text.contains(word), "{k}={v}: {text}");
            }
            assert!(text.contains("in the environment, then try again"), "{text}");
        }
        let (_, w) = Config::from_vars_by_var([("S3DLIO_DIRECT_PROGRAMS", "bin/cat:python3")]);
        assert_eq!(
            refusal(&w, &[VAR_PROGRAMS]),
            "S3DLIO_DIRECT_PROGRAMS='bin/cat:python3': 'bin/cat' contains '/' (use base names or globs such \
             as python3:python3.*)\n  fix --only, then try again (CMD was not started)"
        );
    }

    #[test]
    fn entries_that_match_nothing_are_named_with_their_nearest_parent() {
        let d = std::env::temp_dir().join(format!("s3dlio-run-unmatched-{}", std::process::id()));
        std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
        std::fs::write(d.join("sub/deeper/x.npy"), b"x").unwrap();
        let spec =
            format!("{0}/sub:{0}/missing/data:{0}/sub/*.npy:{0}/sub/*/*.npy:{0}/**/*.npy:{0}/**/*.zarr", d.display());
        let (set, w) = PatternSet::parse("P", &spec);
        assert!(w.is_empty(), "{w:?}");
        let got = unmatched_entries(&set, "--paths");
        assert_eq!(got.len(), 3, "{got:?}");
        let dd = d.display();
        assert!(got[0].starts_with(&format!("--paths entry '{dd}/missing/data' matches nothing that exists (the nearest existing parent is {dd}); running anyway")), "{}", got[0]);
        assert!(got[1].starts_with(&format!("--paths entry '{dd}/sub/*.npy' matches nothing that exists ({dd}/sub exists, but nothing in it matches)")), "{}", got[1]);
        assert!(got[2].contains("**/*.zarr"), "{}", got[2]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stats_template_escapes_percent() {
        assert_eq!(stats_template(Path::new("/tmp/st"), "s3dlio-1-2."), "/tmp/st/s3dlio-1-2.%h.%p.json");
        assert_eq!(stats_template(Path::new("/tmp/100%/"), "p."), "/tmp/100%%/p.%h.%p.json");
        let expanded = s3dlio_engine::stats::expand_path(stats_template(Path::new("/a%p"), "p.").as_bytes(), 7, b"h");
        assert_eq!(expanded, b"/a%p/p.h.7.json");
    }
}
