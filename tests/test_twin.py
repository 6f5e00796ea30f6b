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
import os
import sqlite3
import struct
import subprocess
import sys
import textwrap

import pytest
from conftest import (
    O_DIRECT,
    assert_same_file,
    assert_same_run,
    bin_path,
    cached_bytes,
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


def lock_holder(path) -> int:
    """The pid holding a conflicting POSIX lock on bytes [0, 100) of path (0: none), asked from
    this process with F_GETLK, as another process would."""
    fd = os.open(path, os.O_RDWR)
    try:
        q = struct.pack(F_GETLK_FMT, fcntl.F_WRLCK, os.SEEK_SET, 0, 100, 0)
        t, _w, _s, _l, pid = struct.unpack(F_GETLK_FMT, fcntl.fcntl(fd, fcntl.F_GETLK, q))
        return 0 if t == fcntl.F_UNLCK else pid
    finally:
        os.close(fd)


def _twins_below_the_limit() -> bool:
    """True where the library keeps its twins just below the soft RLIMIT_NOFILE: the hard
    limit is no higher and the process lacks CAP_SYS_RESOURCE to raise it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with open("/proc/self/status") as f:
        cap = int(next(l for l in f if l.startswith("CapEff:")).split()[1], 16)
    return soft >= hard and not cap & (1 << 24)


DUP2_DROPS_LOCKS = pytest.mark.xfail(
    condition=_twins_below_the_limit(),
    strict=True,
    reason="where the soft RLIMIT_NOFILE equals the hard one and the process may not raise it, "
    "the library keeps its twins just below the limit; a dup2 onto such a number closes the twin, "
    "and closing any descriptor of a file drops the process's POSIX locks on it (README: What differs)",
)


@pytest.mark.parametrize(
    "action",
    ["io", "reopen", pytest.param("dup2", marks=DUP2_DROPS_LOCKS), "closefrom", "fork", "exec"],
)
@pytest.mark.parametrize("limit", [0, 64])
def test_record_locks_survive_library_actions(run, strict_fs, action, limit):
    """A POSIX write lock the program holds is still held (F_GETLK from another process) after
    each thing the library does on the program's behalf: misaligned I/O (twin, buffered
    pieces), opening the file again, dup2 onto the numbers where the library keeps its
    descriptors, closefrom above the program's, a fork child using the descriptor, exec."""
    d = strict_fs.new_dir("locks")
    f = d / "f"
    f.write_bytes(b"\0" * 300_000)
    argv = [bin_path("locks"), f, action]
    if limit:
        argv = ["prlimit", f"--nofile={limit}:{limit}", *argv]
    proc = run.popen(argv, shim=True, paths=str(d), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert line == b"READY\n", (line, proc.stderr.read() if proc.poll() is not None else b"")
        holder = lock_holder(f)
        assert holder == proc.pid, f"{action}: the program's record lock is gone (holder {holder})"
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()


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
