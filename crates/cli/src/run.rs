//! `s3dlio-direct run`: CMD with the shim preloaded, its exit status (or death by signal)
//! passed on, and with `--stats` a summary over every process it started.

use crate::{absolute_globs, current_dir, error, stats, RunArgs, EXIT_OWN_FAILURE};
use s3dlio_engine::config::{
    Config, VAR_ALIGN, VAR_EXCLUDE, VAR_LOG, VAR_MIN_SIZE, VAR_PATHS, VAR_PROGRAMS, VAR_STATS, VAR_SYNC,
};
use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The library's file name, looked for beside this command and in `../lib`.
pub const LIBRARY: &str = "libs3dlio_direct.so";

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
    if let Some((var, w)) = warnings.first() {
        let hint = match var.and_then(|v| OPTION_OF.iter().find(|(name, _)| *name == v.name)) {
            Some((var, opt)) if set.iter().any(|(k, _)| k == var) => format!("fix {opt}"),
            Some((var, _)) => format!("fix or unset {var} in the environment"),
            None => "fix or unset the variable in the environment".to_string(),
        };
        let more =
            if warnings.len() > 1 { format!(" (and {} more problems)", warnings.len() - 1) } else { String::new() };
        return Err(format!("{w}{more}\n  {hint} and try again"));
    }
    if cfg.paths.is_empty() {
        return Err("no --paths given: without it the library would change nothing. Say which files \
                    should bypass the page cache, e.g.\n  s3dlio-direct run --paths /data -- python train.py\n\
                    (`s3dlio-direct probe /data` first shows whether the filesystem takes O_DIRECT)"
            .to_string());
    }

    let lib = find_library()?;
    if let Some((dir, _)) = &stats {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the --stats directory {}: {e}", dir.display()))?;
    }
    let mut env = vars;
    env.push(("LD_PRELOAD".into(), preload_value(lib.as_os_str(), std::env::var_os("LD_PRELOAD").as_deref())));
    Ok(Plan { command: a.command.clone(), env, stats })
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

/// The library beside this executable (a build tree: `target/release/`) or in `../lib`
/// (an installation: `PREFIX/bin` and `PREFIX/lib`). `current_exe` resolves symlinks, so a
/// link to the command elsewhere still finds the library of the real installation.
fn find_library() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot tell where s3dlio-direct is: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let candidates = [dir.join(LIBRARY), dir.join("../lib").join(LIBRARY)];
    let Some(found) = candidates.iter().find(|p| p.is_file()) else {
        return Err(format!(
            "cannot find {LIBRARY}: looked for {} and {}.\n  In a source tree, build it with `make build`; \
             an installation needs both files: `make install PREFIX=...` puts the command in PREFIX/bin \
             and the library in PREFIX/lib",
            candidates[0].display(),
            candidates[1].display()
        ));
    };
    let lib = found.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", found.display()))?;
    if lib.as_os_str().as_bytes().iter().any(|b| b" :\t\n".contains(b)) {
        return Err(format!(
            "the library's path {} contains a space or a colon, which separate LD_PRELOAD entries: \
             install it under a plain path",
            lib.display()
        ));
    }
    Ok(lib)
}

/// The library first, then whatever the user already preloads: replacing it would silently
/// drop their own shims (jemalloc, a profiler).
fn preload_value(lib: &OsStr, existing: Option<&OsStr>) -> OsString {
    let mut v = lib.as_bytes().to_vec();
    if let Some(e) = existing.filter(|e| e.as_bytes().iter().any(|b| !b" :\t\n".contains(b))) {
        v.push(b':');
        v.extend_from_slice(e.as_bytes());
    }
    OsString::from_vec(v)
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

    #[test]
    fn preload_is_prepended() {
        let lib = OsStr::new("/opt/lib/libs3dlio_direct.so");
        assert_eq!(preload_value(lib, None), "/opt/lib/libs3dlio_direct.so");
        assert_eq!(preload_value(lib, Some(OsStr::new(""))), "/opt/lib/libs3dlio_direct.so");
        assert_eq!(preload_value(lib, Some(OsStr::new("  "))), "/opt/lib/libs3dlio_direct.so");
        assert_eq!(
            preload_value(lib, Some(OsStr::new("/x/libjemalloc.so libfoo.so"))),
            "/opt/lib/libs3dlio_direct.so:/x/libjemalloc.so libfoo.so"
        );
    }

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
        assert!(e.starts_with("S3DLIO_DIRECT_MIN_SIZE='12Q' is not a size (use e.g. 4096, 64K, 1MiB); using 0"), "{e}");
        assert!(e.contains(" more problems)\n  fix --min-size and try again"), "{e}");
        let Err(e) = prepare(&run_args(None, Some("loud"))) else { panic!("loud accepted") };
        assert!(e.starts_with("S3DLIO_DIRECT_LOG='loud' is not one of error, warn, info, debug; using warn"), "{e}");
        assert!(e.ends_with("\n  fix --log and try again"), "{e}");
    }

    #[test]
    fn stats_template_escapes_percent() {
        assert_eq!(stats_template(Path::new("/tmp/st"), "s3dlio-1-2."), "/tmp/st/s3dlio-1-2.%h.%p.json");
        assert_eq!(stats_template(Path::new("/tmp/100%/"), "p."), "/tmp/100%%/p.%h.%p.json");
        let expanded = s3dlio_engine::stats::expand_path(stats_template(Path::new("/a%p"), "p.").as_bytes(), 7, b"h");
        assert_eq!(expanded, b"/a%p/p.h.7.json");
    }
}
