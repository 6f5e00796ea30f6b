//! The default page-cache budget of a process's mapped matched files: a sixteenth of the
//! memory it may use (its cgroup v2 `memory.max`, the tightest of its cgroup and their
//! parents, else `RLIMIT_AS`, else RAM), and never below [`FLOOR`].

use std::path::Path;

/// The smallest default budget: below this a mapped file's working set (an lmdb tree's
/// upper pages, a safetensors header, the kernel's own read-around of 8 MiB on common disks)
/// would be given back and read again.
pub const FLOOR: u64 = 64 << 20;

/// The default budget for a process with memory limit `limit`.
pub fn from_limit(limit: u64) -> u64 {
    (limit / 16).max(FLOOR)
}

/// The default budget of this process.
pub fn default_budget() -> u64 {
    from_limit(memory_limit())
}

/// The tightest memory limit of this process: cgroup v2, `RLIMIT_AS`, RAM.
pub fn memory_limit() -> u64 {
    let ram = ram();
    let cg =
        std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|t| cgroup_limit(&t, Path::new("/sys/fs/cgroup")));
    let mut r: libc::rlimit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is writable for the call.
    let as_limit = (unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut r) } == 0 && r.rlim_cur != libc::RLIM_INFINITY)
        .then_some(r.rlim_cur);
    [Some(ram), cg, as_limit].into_iter().flatten().min().unwrap_or(ram)
}

fn ram() -> u64 {
    // SAFETY: sysconf has no memory arguments.
    let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    u64::try_from(pages).unwrap_or(0).saturating_mul(u64::try_from(size).unwrap_or(4096)).max(FLOOR)
}

/// The tightest `memory.max` from the cgroup v2 line (`0::/path`) of `proc_cgroup` up to
/// the root, under the cgroup mount `root`.
fn cgroup_limit(proc_cgroup: &str, root: &Path) -> Option<u64> {
    let rel = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut dir = root.join(rel.trim_start_matches('/'));
    let mut best: Option<u64> = None;
    loop {
        if let Ok(t) = std::fs::read_to_string(dir.join("memory.max")) {
            if let Ok(v) = t.trim().parse::<u64>() {
                best = Some(best.map_or(v, |b| b.min(v)));
            }
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            return best;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sixteenth_with_a_floor() {
        assert_eq!(from_limit(16 << 30), 1 << 30);
        assert_eq!(from_limit(256 << 20), FLOOR);
        assert_eq!(from_limit(0), FLOOR);
    }

    #[test]
    fn the_tightest_cgroup_on_the_way_up() {
        let root = std::env::temp_dir().join(format!("s3dlio-cg-{}", std::process::id()));
        let leaf = root.join("a/b");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(root.join("a/memory.max"), "1073741824\n").unwrap();
        std::fs::write(leaf.join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_limit("0::/a/b\n", &root), Some(1 << 30));
        std::fs::write(leaf.join("memory.max"), "536870912\n").unwrap();
        assert_eq!(cgroup_limit("0::/a/b\n", &root), Some(512 << 20));
        assert_eq!(cgroup_limit("1:memory:/a\n", &root), None, "cgroup v1 only");
        std::fs::remove_dir_all(&root).unwrap();
        assert!(memory_limit() >= FLOOR);
    }
}
