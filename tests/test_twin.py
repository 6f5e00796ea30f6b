"""The program's descriptors stay the program's (issue 12): the library does its direct I/O
through a private O_DIRECT twin of each matched file, so

- I/O the library cannot see (raw system calls, Linux AIO as libaio issues it) works on the
  program's descriptor exactly as without the library, and what it leaves in the page cache
  is dropped at the last close and counted (`cached_unseen_bytes`);
- every descriptor-creating call returns the number it would without the library, also under
  a tiny RLIMIT_NOFILE, and the program never gets EMFILE because of the library;
- POSIX record locks survive every library action (closing any descriptor of a file drops
  the process's locks on it).
"""

import fcntl
import json
import os
import sqlite3
import struct
import subprocess
import sys
import textwrap

import pytest
from conftest import (
    O_DIRECT,
    REPO,
    assert_same_file,
    assert_same_run,
    bin_path,
    cached_bytes,
    fallback_total,
    fdinfo_lines,
    load_stats,
    stats_total,
)


def pair(fs):
    return fs.new_dir("plain"), fs.new_dir("shim")


def test_io_the_library_cannot_see_works_and_leaves_no_cache(run, strict_fs):
    """Raw syscall() read/pwrite/pread/copy_file_range and Linux AIO with misaligned buffers on
    a descriptor the library manages: the kernel's results, unchanged (with O_DIRECT on the
    program's description they failed with EINVAL); afterwards the files' page cache is empty
    and the statistics count what the library did not serve."""
    dp, ds = pair(strict_fs)
    st = strict_fs.new_dir("stats")
    env = {"HARNESS_FDINFO": "1"}
    p = run([bin_path("rawio"), dp / "f"], shim=False, env=env)
    s = run([bin_path("rawio"), ds / "f"], shim=True, paths=str(ds),
            env={**env, "S3DLIO_DIRECT_STATS": st / "st-%p.json"})
    assert p.returncode == 0, p.stderr
    assert_same_run(p, s, "raw system calls and Linux AIO on a managed descriptor")
    assert b"match 0" not in s.stdout and b"aio read match 1" in s.stdout, s.stdout
    # (before this test reads the files itself)
    for name in ("f", "f.copy"):
        assert cached_bytes(ds / name) == 0, f"{name}: page cache left behind"
    assert_same_file(dp / "f", ds / "f", "rawio file")
    assert_same_file(dp / "f.copy", ds / "f.copy", "rawio copy")
    # the program's own description never had O_DIRECT; its twin did
    (label, fd, own), = fdinfo_lines(s.stderr, own=True)
    assert not own & O_DIRECT, f"O_DIRECT on the program's own description ({own:o})"
    assert fdinfo_lines(s.stderr)[0][2] & O_DIRECT, f"no twin with O_DIRECT: {s.stderr!r}"
    stats = load_stats(st)
    assert stats_total(stats, "opens_direct") >= 2, stats
    assert stats_total(stats, "cached_unseen_bytes") > 0, stats


FDNUM_LIMITS = [20, 64, 0]


@pytest.mark.parametrize("limit", FDNUM_LIMITS, ids=lambda l: f"nofile{l or 'default'}")
def test_descriptor_numbers_are_the_programs(run, strict_fs, limit):
    """Every descriptor-creating call (open until EMFILE, close and reopen of low numbers,
    close(1)+open, dup, F_DUPFD, socket, socketpair, pipe, eventfd, memfd_create,
    epoll_create1, signalfd, timerfd_create, inotify_init1, dup2/dup3 onto the top numbers,
    close_range, closefrom) returns the same number or errno as without the library."""
    dp, ds = pair(strict_fs)
    st = strict_fs.new_dir("stats")
    p = run([bin_path("fdnum"), dp, str(limit)], shim=False)
    s = run([bin_path("fdnum"), ds, str(limit)], shim=True, paths=str(ds),
            env={"S3DLIO_DIRECT_STATS": st / "st-%p.json"})
    assert p.returncode == 0, p.stderr
    assert_same_run(p, s, f"descriptor numbers with RLIMIT_NOFILE {limit or 'default'}")
    assert (ds / "stdout").read_bytes() == (dp / "stdout").read_bytes()
    stats = load_stats(st)
    assert stats_total(stats, "opens_direct") >= 1, f"nothing went direct: {stats}"


F_GETLK_FMT = "hhqqixxxx"  # struct flock on x86-64: l_type, l_whence, l_start, l_len, l_pid


def lock_holder(path, start=0, length=100) -> int:
    """The pid holding a conflicting POSIX lock on bytes [start, start+length) of path (0:
    none), asked from this process with F_GETLK, as another process would."""
    fd = os.open(path, os.O_RDWR)
    try:
        q = struct.pack(F_GETLK_FMT, fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
        t, _w, _s, _l, pid = struct.unpack(F_GETLK_FMT, fcntl.fcntl(fd, fcntl.F_GETLK, q))
        return 0 if t == fcntl.F_UNLCK else pid
    finally:
        os.close(fd)


def _lock_held_after(run, strict_fs, action, prefix=(), env=None):
    """Runs c-harness/locks with `action` under the library (behind the `prefix` command),
    checks from this process with F_GETLK that its lock is held once the action is done, and
    returns the statistics."""
    d = strict_fs.new_dir("locks")
    st = strict_fs.new_dir("stats")
    f = d / "f"
    f.write_bytes(b"\0" * 300_000)
    proc = run.popen([*prefix, bin_path("locks"), f, action], shim=True, paths=str(d), stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     env={"S3DLIO_DIRECT_STATS": st / "st-%p.json", **(env or {})})
    try:
        line = proc.stdout.readline()
        assert line == b"READY\n", (line, proc.stderr.read() if proc.poll() is not None else b"")
        holder = lock_holder(f)
        assert holder == proc.pid, f"{action}: the program's record lock is gone (holder {holder})"
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()
    return load_stats(st)


# The limits a test program runs with: the environment's own, a small one, and one that puts
# the library's twins just below the soft RLIMIT_NOFILE (the process cannot raise the limit:
# CAP_SYS_RESOURCE dropped, soft = hard), where the program's dup2 and its own descriptors
# reach them. (Where the process may raise the limit, the twins live above it.)
WHERE = {
    "default": [],
    "nofile64": ["prlimit", "--nofile=64:64"],
    "zone": ["setpriv", "--bounding-set=-sys_resource", "--inh-caps=-sys_resource", "--",
             "prlimit", "--nofile=64:64"],
}


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize(
    "action", ["io", "reopen", "dup2", "closefrom", "fork", "exec", "exec-reopen", "giveup"],
)
def test_record_locks_survive_library_actions(run, strict_fs, action, where):
    """A POSIX write lock the program holds is still held (F_GETLK from another process) after
    each thing the library does on the program's behalf: misaligned I/O, opening the file
    again (it falls back), dup2 onto the numbers where the library keeps its descriptors,
    closefrom above the program's, a fork child using the descriptor, exec (and the new image
    opening the file again), the program's descriptors reaching the library's numbers (with
    another matched file's twin there)."""
    stats = _lock_held_after(run, strict_fs, action, WHERE[where])
    if action != "dup2":  # (which leaves no free number for the statistics file at exit)
        assert stats_total(stats, "opens_direct") >= 1, f"the file never went direct: {stats}"


@pytest.mark.parametrize("action", ["dup2-twin", "dup3-twin"])
def test_record_locks_survive_dup2_onto_the_twin(run, strict_fs, action):
    """Where the library keeps its twins below the soft RLIMIT_NOFILE (the process cannot
    raise the limit: CAP_SYS_RESOURCE dropped, soft = hard), the program dup2s/dup3s onto the
    number of the twin it saw in /proc/self/fd before taking its lock: the kernel closes what
    is there, and closing a descriptor of the file would drop the lock. The library retired
    the twin before the lock was taken, so the lock holds; the file goes on buffered, counted
    as `posix_locks`."""
    stats = _lock_held_after(run, strict_fs, action, WHERE["zone"])
    assert stats_total(stats, "opens_direct") >= 1, stats
    assert fallback_total(stats, "posix_locks") >= 1, f"no posix_locks fallback counted: {stats}"


SQLITE_WRITER = textwrap.dedent(
    r"""
    import os, sqlite3, subprocess, sys
    db = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    db.execute("INSERT INTO t VALUES (?)", ("x" * 5000,))
    # library actions while the database's locks are held
    if os.fork() == 0:
        os._exit(0)
    os.wait()
    subprocess.run(["true"], check=True)
    extra = open(sys.argv[1] + ".other", "wb")
    extra.write(b"y" * 10001)
    extra.close()
    print("READY", flush=True)
    sys.stdin.read()
    db.execute("COMMIT")
    print(db.execute("SELECT count(*) FROM t").fetchone()[0], flush=True)
    """
)


def test_sqlite_locking_across_processes(run, strict_fs):
    """sqlite3 holds an exclusive transaction in a process under the library (which forks,
    spawns and opens other matched files meanwhile): another process is refused with
    'database is locked' until it commits, then sees the rows."""
    d = strict_fs.new_dir("sqlite")
    db = d / "t.db"
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE t (v TEXT)")
    c.commit()
    c.close()
    proc = run.popen([sys.executable, "-c", SQLITE_WRITER, db], shim=True, paths=str(d), stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"READY\n", proc.stderr.read() if proc.poll() is not None else b""
        other = sqlite3.connect(db, timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("INSERT INTO t VALUES ('z')")
        other.close()
    finally:
        proc.stdin.close()
        out = proc.stdout.read()
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()
    assert out.strip() == b"1"
    other = sqlite3.connect(db, timeout=5)
    other.execute("INSERT INTO t VALUES ('z')")
    other.commit()
    assert other.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 2


SQLITE_STEPS = textwrap.dedent(
    r"""
    import os, resource, sqlite3, subprocess, sys
    path = sys.argv[1]
    print(os.getpid(), flush=True)
    def step(name):
        print(name, flush=True)
        assert sys.stdin.readline() == "go\n"
    db = sqlite3.connect(path, timeout=0, isolation_level=None)
    # the library's descriptors of the database below the soft limit, where dup2 reaches them
    # (sqlite opened the file, and takes its first lock at the first statement)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    floor = soft - max(1, min(64, soft // 16))  # (README: One more descriptor per open matched file)
    want = os.stat(path)
    def same(n):
        try:
            st = os.stat(f"/proc/self/fd/{n}")
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino)
    twins = [n for n in map(int, os.listdir("/proc/self/fd")) if floor <= n < soft and same(n)]
    print("twins", twins, file=sys.stderr, flush=True)
    db.execute("BEGIN EXCLUSIVE")
    db.execute("INSERT INTO t VALUES (?)", ("x" * 5000,))
    step("insert")
    r, w = os.pipe()
    for n in twins:
        os.dup2(r, n)
    step("dup2")
    if os.fork() == 0:
        os._exit(0)
    os.wait()
    step("fork")
    subprocess.run(["true"], check=True)
    step("spawn")
    with open(path + ".other", "wb") as f:
        f.write(b"y" * 10001)
    step("other")
    db.execute("COMMIT")
    db.execute("BEGIN EXCLUSIVE")
    db.execute("INSERT INTO t VALUES ('again')")
    step("again")
    db.execute("COMMIT")
    print(db.execute("SELECT count(*) FROM t").fetchone()[0], flush=True)
    """
)

SQLITE_LOCK_BYTES = (0x40000000, 512)  # sqlite's PENDING, RESERVED and SHARED bytes


@pytest.mark.parametrize("where", ["default", "zone"])
def test_sqlite_locks_after_each_library_action(run, strict_fs, where):
    """sqlite3 in a process under the library holds an exclusive transaction while the library
    acts for it (I/O, the program's dup2 onto the numbers its twins had, fork, spawn, another
    matched file, a second transaction): after each, another process sees the lock with
    F_GETLK and is refused with 'database is locked'. The database goes on buffered from the
    first lock (`posix_locks`), and `stats` calls it buffered for that reason."""
    d = strict_fs.new_dir("sqlite")
    st = strict_fs.new_dir("stats")
    db = d / "t.db"
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE t (v TEXT)")
    c.commit()
    c.close()
    proc = run.popen([*WHERE[where], sys.executable, "-c", SQLITE_STEPS, db], shim=True, paths=str(d),
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     env={"S3DLIO_DIRECT_STATS": st / "st-%p.json"})
    try:
        pid = int(proc.stdout.readline())
        for name in ("insert", "dup2", "fork", "spawn", "other", "again"):
            line = proc.stdout.readline()
            assert line == f"{name}\n".encode(), (line, proc.stderr.read() if proc.poll() is not None else b"")
            holder = lock_holder(db, *SQLITE_LOCK_BYTES)
            assert holder == pid, f"after {name}: sqlite's lock is gone (holder {holder})"
            other = sqlite3.connect(db, timeout=0)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("INSERT INTO t VALUES ('z')")
            other.close()
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
    finally:
        proc.stdin.close()
        out = proc.stdout.read()
        proc.wait(timeout=60)
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    assert out.strip() == b"2"
    if where == "zone":
        assert b"twins []" not in err, f"no twin below the limit to dup2 onto: {err!r}"
    other = sqlite3.connect(db, timeout=5)
    assert other.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stats = load_stats(st)
    assert stats_total(stats, "opens_direct") >= 1, stats
    assert fallback_total(stats, "posix_locks") >= 1, stats
    s = run([str(REPO / "target" / "release" / "s3dlio-direct"), "stats", "--json", str(st)], shim=False)
    assert s.returncode == 0, s.stderr
    by = {f["path"]: f for f in json.loads(s.stdout)["files"]}
    assert by[str(db)]["verdict"] == "buffered" and "posix_locks" in by[str(db)]["fallbacks"], by[str(db)]


def test_twin_lives_above_the_programs_numbers(run, strict_fs):
    """While a matched file is open, its twin is a descriptor the program was never given:
    at or above the soft RLIMIT_NOFILE where the process may raise it, else among the few
    numbers just below it; closing that number (the program can see it in /proc/self/fd)
    gets EBADF, as it would without the library."""
    d = strict_fs.new_dir("data")
    (d / "f").write_bytes(b"q" * 100_000)
    prog = textwrap.dedent(
        r"""
        import os, resource, sys
        fd = os.open(sys.argv[1], os.O_RDONLY)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        mine = sorted(int(x) for x in os.listdir("/proc/self/fd"))
        high = [n for n in mine if n >= soft - 64]
        print(fd, soft, high, flush=True)
        for n in high:
            try:
                os.close(n)
                print("closed", n)
            except OSError as e:
                print("close", n, e.errno)
        print(len(os.pread(fd, 100_000, 0)))
        """
    )
    s = run([sys.executable, "-c", prog, d / "f"], shim=True, paths=str(d))
    assert s.returncode == 0, s.stderr
    first, *rest = s.stdout.decode().splitlines()
    fd, soft, high = first.split(" ", 2)
    high = eval(high)  # a list of ints printed by the program
    assert len(high) == 1, s.stdout
    assert rest[0] == f"close {high[0]} 9", f"closing the library's number must give EBADF: {rest}"
    assert rest[-1] == "100000"
