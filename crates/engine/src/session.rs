//! Once per session: whether a line about something the user must fix (a malformed variable,
//! an unusable statistics or log file) was already printed in this session (`getsid`), so the
//! wrapper scripts, exec chains, `make` recipes and worker pools of one command print it once.
//!
//! The mark is an empty file per session and line in a directory of this user's
//! (`/dev/shm/s3dlio-direct-UID`, else `/tmp/s3dlio-direct-UID`: made 0700, opened without
//! following a symbolic link and used only if it is this user's and no one else may write it),
//! created `O_CREAT|O_EXCL`: of the processes of a session, exactly one creates it and prints.
//! Not the environment: the program can see that. A file survives exec and fork, which is what
//! a chain of wrappers does. Its name holds the boot, the PID namespace, the session id and
//! the start time of the session's leader, so a session id the kernel hands out again later
//! is a new session. The process that creates a mark removes the marks of sessions that are
//! provably over (another boot; the leader's number now belongs to another process, which the
//! kernel allows only after the session ended); the rest goes at reboot (`/dev/shm`).
//!
//! Where no mark can be made (no usable directory, a full or read-only filesystem, a session
//! whose leader is in another PID namespace), the answer is [`Verdict::Unknown`]: the caller
//! then prints only in a process whose parent does not run this library (the top of each
//! program tree the library runs in), saying why, so a misconfiguration is neither silent nor
//! repeated by every process of a pool.

use crate::safefile::{euid, Refusal};
use crate::sys;
use std::ffi::{CStr, CString};
use std::fmt::Write as _;

/// Where the per-user directory of marks is made, in this order: `/dev/shm` is memory (empty
/// after a reboot) on every Linux system with glibc; `/tmp` where it is missing or unusable.
const BASES: [&str; 2] = ["/dev/shm", "/tmp"];

/// Whether this process should print a line that is printed once per session.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No other process of the session printed it: this one does.
    First,
    /// Another process of the session printed it already.
    Seen,
    /// No mark could be made or looked up; why.
    Unknown(String),
}

/// Who a session is: its id, its leader's start time (0 when the leader has exited or is not
/// visible), the boot and the PID namespace the id is valid in.
struct Session {
    sid: i32,
    start: u64,
    boot: u32,
    ns: u64,
}

impl Session {
    fn current() -> Option<Session> {
        let sid = sys::getsid();
        if sid <= 0 {
            return None;
        }
        let start = match sys::proc_stat(sid) {
            Some((leader_sid, start)) if leader_sid == sid => start,
            _ => 0,
        };
        Some(Session { sid, start, boot: boot_tag(), ns: pid_namespace() })
    }

    fn mark_name(&self, tag: u8, key: u64) -> String {
        format!("{:08x}.{}.{}.{}.{tag}.{key:016x}", self.boot, self.ns, self.sid, self.start)
    }
}

/// The first 32 bits of this boot's id.
fn boot_tag() -> u32 {
    let mut b = [0u8; 64];
    let n = sys::read_small_file(c"/proc/sys/kernel/random/boot_id", &mut b).unwrap_or(0);
    std::str::from_utf8(&b[..n.min(8)]).ok().and_then(|s| u32::from_str_radix(s, 16).ok()).unwrap_or(0)
}

/// The inode of this process's PID namespace (`pid:[4026531836]`): session ids of different
/// namespaces sharing `/dev/shm` must not meet.
fn pid_namespace() -> u64 {
    let mut b = [0u8; 64];
    let n = sys::readlink(c"/proc/self/ns/pid", &mut b).unwrap_or(0);
    b[..n]
        .iter()
        .filter(|c| c.is_ascii_digit())
        .fold(0u64, |v, &c| v.wrapping_mul(10).wrapping_add(u64::from(c - b'0')))
}

/// Decides whether this process prints the line `(tag, key)` of its session: marks it if no
/// process of the session did.
pub fn first(tag: u8, key: u64) -> Verdict {
    let Some(s) = Session::current() else {
        return Verdict::Unknown("the session's leader is in another PID namespace".into());
    };
    let name = s.mark_name(tag, key);
    let Ok(cname) = CString::new(name.as_bytes()) else { return Verdict::Unknown("bad name".into()) };
    let mut why = String::new();
    for base in BASES {
        let (dir, path) = match user_dir(base) {
            Ok(d) => d,
            Err(e) => {
                let _ = write!(why, "{}{e}", if why.is_empty() { "" } else { "; " });
                continue;
            }
        };
        let verdict = if s.start == 0 && marked_by_any_leader(dir, &s, tag, key) {
            Ok(Verdict::Seen)
        } else {
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            match sys::openat(dir, &cname, flags, 0o600) {
                Ok(fd) => {
                    let _ = sys::close(fd);
                    remove_ended(dir, &s);
                    Ok(Verdict::First)
                }
                Err(libc::EEXIST) => Ok(Verdict::Seen),
                Err(e) => Err(e),
            }
        };
        let _ = sys::close(dir);
        match verdict {
            Ok(v) => return v,
            Err(e) => {
                let _ = write!(
                    why,
                    "{}cannot create a file in {path}: {}",
                    if why.is_empty() { "" } else { "; " },
                    Refusal::Errno(e)
                );
            }
        }
    }
    Verdict::Unknown(why)
}

/// Makes (if needed) and opens `BASE/s3dlio-direct-UID`, refusing anything this user must not
/// trust: a symbolic link, another user's directory, one others may write.
fn user_dir(base: &str) -> Result<(i32, String), String> {
    let path = format!("{base}/s3dlio-direct-{}", euid());
    let c = CString::new(path.as_bytes()).map_err(|_| path.clone())?;
    match sys::mkdir(&c, 0o700) {
        // A umask may have taken this user's own rights away. In a sticky directory (both
        // bases are) no one else can put anything else under the name meanwhile.
        Ok(()) => {
            let _ = sys::chmod(&c, 0o700);
        }
        Err(libc::EEXIST) => {}
        Err(e) => return Err(format!("cannot create {path}: {}", Refusal::Errno(e))),
    }
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // O_NOFOLLOW with O_DIRECTORY refuses a symbolic link with ENOTDIR, as anything else
    // that is not a directory
    let fd = sys::openat(libc::AT_FDCWD, &c, flags, 0).map_err(|e| match e {
        libc::ENOTDIR => format!("cannot use {path}: it is a symbolic link or not a directory"),
        e => format!("cannot use {path}: {}", Refusal::Errno(e)),
    })?;
    let refusal = match sys::fstat(fd) {
        Err(e) => Some(Refusal::Errno(e).to_string()),
        Ok(st) if st.st_uid != euid() => Some(Refusal::NotOwned(st.st_uid).to_string()),
        Ok(st) if st.st_mode & 0o022 != 0 => Some("other users may write to it".to_string()),
        Ok(_) => None,
    };
    match refusal {
        None => Ok((fd, path)),
        Some(r) => {
            let _ = sys::close(fd);
            Err(format!("cannot use {path}: {r}"))
        }
    }
}

/// The fields of a mark's name: boot, namespace, session id, leader start, tag, key.
fn parse_mark(name: &[u8]) -> Option<(u32, u64, i32, u64, u8, u64)> {
    let s = std::str::from_utf8(name).ok()?;
    let mut f = s.split('.');
    let boot = u32::from_str_radix(f.next()?, 16).ok()?;
    let ns = f.next()?.parse().ok()?;
    let sid = f.next()?.parse().ok()?;
    let start = f.next()?.parse().ok()?;
    let tag = f.next()?.parse().ok()?;
    let key = u64::from_str_radix(f.next()?, 16).ok()?;
    f.next().is_none().then_some((boot, ns, sid, start, tag, key))
}

/// For a session whose leader has exited: whether any mark of this session id has the line,
/// whatever the leader's start time was when it was made (the leader may have exited since).
fn marked_by_any_leader(dir: i32, s: &Session, tag: u8, key: u64) -> bool {
    let mut found = false;
    let _ = sys::for_each_dirent(dir, |name| {
        if let Some((b, ns, sid, _, t, k)) = parse_mark(name) {
            found |= b == s.boot && ns == s.ns && sid == s.sid && t == tag && k == key;
        }
    });
    found
}

/// Removes the marks of sessions that are over: made in another boot, or whose session id
/// now names a process that is not the leader they were made under (the kernel gives a
/// session's number to a new process only after the session ended).
fn remove_ended(dir: i32, s: &Session) {
    let mut ended: Vec<CString> = Vec::new();
    let _ = sys::for_each_dirent(dir, |name| {
        let Some((boot, ns, sid, start, _, _)) = parse_mark(name) else { return };
        let over = if boot != s.boot {
            true
        } else if ns != s.ns || sid == s.sid {
            false
        } else {
            match sys::proc_stat(sid) {
                Some((_, now)) => start == 0 || now != start,
                None => false,
            }
        };
        if over {
            ended.extend(CString::new(name).ok());
        }
    });
    for n in &ended {
        let _ = sys::unlinkat(dir, n);
    }
}

/// Calls `f` with each line of a file (without its newline) until `f` returns false. A line
/// longer than 16 KiB comes in pieces.
fn for_each_line(path: &CStr, mut f: impl FnMut(&[u8]) -> bool) {
    let Ok(fd) = sys::openat(libc::AT_FDCWD, path, libc::O_RDONLY | libc::O_CLOEXEC, 0) else { return };
    let mut buf = vec![0u8; 16384];
    let mut have = 0;
    // SAFETY: `buf[have..]` is writable for its length.
    'read: while let Ok(n) = unsafe { sys::read(fd, buf[have..].as_mut_ptr(), buf.len() - have) } {
        if n == 0 {
            if have > 0 {
                f(&buf[..have]);
            }
            break;
        }
        have += n;
        let mut from = 0;
        while let Some(i) = buf[from..have].iter().position(|&b| b == b'\n') {
            if !f(&buf[from..from + i]) {
                break 'read;
            }
            from += i + 1;
        }
        if from == 0 && have == buf.len() {
            if !f(&buf[..have]) {
                break;
            }
            have = 0;
            continue;
        }
        buf.copy_within(from..have, 0);
        have -= from;
    }
    let _ = sys::close(fd);
}

/// The path of the object this code was loaded from (the preload library), from
/// `/proc/self/maps`.
fn own_object() -> Option<Vec<u8>> {
    let addr = own_object as fn() -> Option<Vec<u8>> as usize;
    let mut found = None;
    for_each_line(c"/proc/self/maps", |line| {
        let range = line.split(|&b| b == b' ').next().unwrap_or(&[]);
        let mut ends = range
            .split(|&b| b == b'-')
            .map(|h| std::str::from_utf8(h).ok().and_then(|h| usize::from_str_radix(h, 16).ok()).unwrap_or(0));
        let (lo, hi) = (ends.next().unwrap_or(0), ends.next().unwrap_or(0));
        if (lo..hi).contains(&addr) {
            found = line.iter().position(|&b| b == b'/').map(|i| line[i..].to_vec());
            return false;
        }
        true
    });
    found
}

/// True if the parent process has this library loaded (its `/proc/PID/maps` maps the same
/// file): such a process is not the top of a program tree the library runs in.
pub fn parent_runs_this_library() -> bool {
    let Some(me) = own_object() else { return false };
    let Ok(path) = CString::new(format!("/proc/{}/maps", sys::getppid())) else { return false };
    let mut yes = false;
    for_each_line(&path, |line| {
        yes = line.len() > me.len() && line.ends_with(&me) && line[line.len() - me.len() - 1] == b' ';
        !yes
    });
    yes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_name_parses_back() {
        let s = Session { sid: 4242, start: 987654, boot: 0xdeadbeef, ns: 4026531836 };
        let n = s.mark_name(7, 0x0123_4567_89ab_cdef);
        assert_eq!(parse_mark(n.as_bytes()), Some((0xdeadbeef, 4026531836, 4242, 987654, 7, 0x0123_4567_89ab_cdef)));
        assert_eq!(parse_mark(b"."), None);
        assert_eq!(parse_mark(format!("{n}.x").as_bytes()), None);
    }

    /// Runs in a session of its own (see `this_session_prints_once`): the test harness may
    /// run in a session whose leader is outside its PID namespace (a container's), where no
    /// mark can be made by design.
    #[test]
    fn marks_in_a_session_of_its_own() {
        if std::env::var_os("S3DLIO_SESSION_TEST_INNER").is_none() {
            return;
        }
        let key = u64::from(std::process::id()) << 20 | u64::from(sys::gettid() as u32 & 0xfffff);
        assert_eq!(first(250, key), Verdict::First);
        assert_eq!(first(250, key), Verdict::Seen);
        assert_eq!(first(250, key ^ 1), Verdict::First);
        let s = Session::current().expect("a session");
        for k in [key, key ^ 1] {
            for base in BASES {
                let p = format!("{base}/s3dlio-direct-{}/{}", euid(), s.mark_name(250, k));
                let _ = std::fs::remove_file(p);
            }
        }
    }

    #[test]
    fn this_session_prints_once() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args(["--exact", "session::tests::marks_in_a_session_of_its_own", "--test-threads=1"])
            .env("S3DLIO_SESSION_TEST_INNER", "1");
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent's.
        unsafe {
            child.pre_exec(|| if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
        }
        let out = child.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("1 passed"), "{text}");
    }

    #[test]
    fn a_session_led_from_another_namespace_is_unknown() {
        // getsid gives 0 when the leader is outside the caller's PID namespace; no mark name
        // can tell such sessions apart, so the caller must fall back.
        if sys::getsid() == 0 {
            assert!(matches!(first(251, 1), Verdict::Unknown(_)));
        } else {
            assert!(Session::current().is_some());
        }
    }

    #[test]
    fn the_test_binary_is_its_own_object() {
        let me = own_object().expect("the code's own mapping");
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(me, exe.as_os_str().as_encoded_bytes());
        // cargo runs tests from a process that does not map the test binary
        assert!(!parent_runs_this_library());
    }
}
