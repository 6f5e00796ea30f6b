"""stderr stays the program's (issue 13, item 4).

At the default level the library prints nothing on an ordinary fallback: each one below is
driven on purpose, counted in the statistics (so the test cannot pass without hitting it, and
at S3DLIO_DIRECT_LOG=info it does print), and the program's stderr is byte-identical to the
plain run's. What the user must fix (a malformed variable, statistics or a log file that
cannot be written) is printed once per session (getsid): through a chain of wrapper scripts
that exec, `make -j2`, and a multiprocessing pool of each start method, exactly one line; a
new session (setsid) its own. Where no mark can be made, the top process of each program
tree prints it, saying why."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from conftest import (
    NOBODY,
    assert_same_run,
    fallback_total,
    load_index,
    load_stats,
    make_file,
    need_root,
    shim_warnings,
    stats_summary,
    stats_total,
)

PY = sys.executable

# One program per ordinary fallback; argv: MODE DIR (DIR holds "f" and "g").
FALLBACKS = r"""
import ctypes, fcntl, mmap, os, resource, sys
mode, d = sys.argv[1], sys.argv[2]
f, g = os.path.join(d, "f"), os.path.join(d, "g")
libc = ctypes.CDLL(None, use_errno=True)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.freopen.restype = ctypes.c_void_p
libc.freopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
if mode == "rw":
    fd = os.open(f, os.O_RDWR)
    os.pwrite(fd, b"x" * 10000, 1)
    print(len(os.pread(fd, 20000, 3)))
    os.close(fd)
elif mode == "read":
    fd = os.open(f, os.O_RDONLY)
    print(len(os.pread(fd, 20000, 3)))
    os.close(fd)
elif mode == "mmap":
    with open(f, "rb") as fh:
        m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        print(m[:8].hex())
        m.close()
elif mode == "ccs":
    s = libc.fopen(f.encode(), b"r,ccs=UTF-8")
    assert s
    libc.fclose(s)
    print("ok")
elif mode == "freopen":
    stdin = ctypes.c_void_p.in_dll(libc, "stdin")
    assert libc.freopen(f.encode(), b"r", stdin)
    print(len(os.read(0, 100000)))
elif mode == "stale":
    fd = os.open(f, os.O_RDONLY)
    libc.syscall(3, fd)  # SYS_close, behind the library's back
    again = libc.syscall(257, -100, g.encode(), 0)  # SYS_openat: the same number, another file
    assert again == fd, (again, fd)
    print(len(os.read(fd, 100000)))
elif mode == "locked":
    fd = os.open(f, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    fd2 = os.open(f, os.O_RDONLY)
    print(len(os.read(fd2, 100000)))
elif mode == "nofile":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, hard))
    fds = []
    while True:
        try:
            fds.append(os.open(f, os.O_RDONLY))
        except OSError:
            break
    print(len(fds))
    for fd in fds:  # the statistics file is written at exit, which needs a descriptor
        os.close(fd)
"""

# (fixture, mode, extra variables, how the statistics show the fallback was hit)
CASES = [
    ("ramfs", "rw", {}, ("fallback", "fs_no_odirect")),
    ("ramfs", "read", {}, ("fallback", "fs_no_odirect")),
    ("tmpfs", "rw", {}, None),
    ("strict_fs", "mmap", {}, ("counter", "mmap_calls")),
    ("strict_fs", "ccs", {}, ("fallback", "fdopen_stream")),
    ("strict_fs", "freopen", {}, ("fallback", "fdopen_stream")),
    ("strict_fs", "stale", {}, ("fallback", "stale_fd")),
    ("strict_fs", "locked", {}, ("fallback", "posix_locks")),
    ("strict_fs", "nofile", {}, ("fallback", "no_descriptor")),
    ("strict_fs", "read", {"S3DLIO_DIRECT_MIN_SIZE": "1G"}, ("fallback", "below_min_size")),
    ("strict_fs", "read", {"S3DLIO_DIRECT_ALIGN": "512"}, None),
]


@pytest.mark.parametrize("fs_name,mode,extra,hit", CASES,
                         ids=[f"{c[0]}-{c[1]}-{'-'.join(c[2]) or 'default'}" for c in CASES])
def test_ordinary_fallback_leaves_stderr_alone(run, request, tmp_path, fs_name, mode, extra, hit):
    fs = request.getfixturevalue(fs_name)
    runs = {}
    for side in ("plain", "shim", "info"):
        d = fs.new_dir(side)
        make_file(d / "f", 300_001)
        make_file(d / "g", 70_001, seed=2)
        st = tmp_path / f"st-{side}"
        st.mkdir()
        env = dict(extra)
        if side != "plain":
            env["S3DLIO_DIRECT_STATS"] = str(st / "s-%p.json")
        if side == "info":
            env["S3DLIO_DIRECT_LOG"] = "info"
        runs[side] = (run([PY, "-c", FALLBACKS, mode, d], shim=side != "plain", paths=str(d), env=env), st)
    (plain, _), (shim, st), (info, _) = runs["plain"], runs["shim"], runs["info"]
    assert plain.returncode == 0, plain.stderr
    assert_same_run(plain, shim, f"{mode} on {fs_name}", compare_stderr=True)
    stats = load_stats(st)
    if hit is not None:
        kind, key = hit
        n = fallback_total(stats, key) if kind == "fallback" else stats_total(stats, key)
        assert n > 0, f"the run did not hit {key}: {stats_summary(stats)}"
        assert shim_warnings(info.stderr), f"at LOG=info the library says nothing about {key}: {info.stderr!r}"


# --------------------------------------------------------------------------- once per session

BAD = {"S3DLIO_DIRECT_ALIGN": "3"}


def bad_lines(stderr) -> list[str]:
    return [line for line in shim_warnings(stderr) if "S3DLIO_DIRECT_ALIGN" in line]


def loads(st) -> int:
    """How many process images had the library (index `load` and `fork` lines)."""
    return sum(1 for e in load_index(st) if e.get("event") in ("load", "fork"))


def write(path: Path, text: str, mode=0o755) -> Path:
    path.write_text(textwrap.dedent(text))
    os.chmod(path, mode)
    return path


def test_wrapper_chain_prints_one_line(run, strict_fs, tmp_path):
    """bash -> sh -> exec python3 -> subprocesses and another exec: one line in total."""
    d = strict_fs.new_dir("data")
    make_file(d / "f", 100_000)
    w = tmp_path / "w"
    w.mkdir()
    write(w / "w3.py", f"""\
        import os, subprocess, sys
        subprocess.run(["sh", "-c", "cat {d}/f > /dev/null; true"], check=True)
        subprocess.run([sys.executable, "-c", "open('{d}/f', 'rb').read()"], check=True)
        os.execv("/bin/sh", ["sh", "-c", "cat {d}/f | wc -c"])
    """)
    write(w / "w2", f"""\
        #!/bin/sh
        ls / > /dev/null
        exec {PY} {w}/w3.py "$@"
    """)
    write(w / "w1", f"""\
        #!/bin/bash
        v=$(cat {d}/f | head -c 10)
        exec /bin/sh {w}/w2 "$@"
    """)
    st = tmp_path / "st"
    st.mkdir()
    r = run(["bash", w / "w1"], paths=str(d), env={**BAD, "S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == b"100000"
    assert loads(st) >= 8, f"the chain should load the library in many images: {loads(st)}"
    assert len(bad_lines(r.stderr)) == 1, r.stderr.decode()


def test_make_j2_prints_one_line(run, strict_fs, tmp_path):
    d = strict_fs.new_dir("data")
    make_file(d / "f", 100_000)
    mk = tmp_path / "Makefile"
    rules = "".join(f"t{i}:\n\tcat {d}/f > /dev/null\n\t{PY} -c \"open('{d}/f', 'rb').read()\"\n" for i in range(4))
    mk.write_text("all: t0 t1 t2 t3\n" + rules)
    st = tmp_path / "st"
    st.mkdir()
    r = run(["make", "-s", "-j2", "-f", mk, "all"], paths=str(d), env={**BAD, "S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert r.returncode == 0, r.stderr
    assert loads(st) >= 9, loads(st)
    assert len(bad_lines(r.stderr)) == 1, r.stderr.decode()


POOL = r"""
import multiprocessing as mp, sys

def read(path):
    with open(path, "rb") as f:
        return len(f.read())

if __name__ == "__main__":
    for method in ("fork", "spawn", "forkserver"):
        with mp.get_context(method).Pool(2) as p:
            assert p.map(read, [sys.argv[1]] * 4) == [100_000] * 4
            p.close()
            p.join()
    print("ok")
"""


def test_multiprocessing_pools_print_one_line(run, strict_fs, tmp_path):
    d = strict_fs.new_dir("data")
    make_file(d / "f", 100_000)
    prog = write(tmp_path / "pool.py", POOL, 0o644)
    st = tmp_path / "st"
    st.mkdir()
    r = run([PY, prog, d / "f"], paths=str(d), env={**BAD, "S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert r.returncode == 0, r.stderr
    assert loads(st) >= 9, loads(st)
    assert len(bad_lines(r.stderr)) == 1, r.stderr.decode()


def test_a_new_session_gets_its_own_line(run, strict_fs):
    d = strict_fs.new_dir("data")
    make_file(d / "f", 100_000)
    cat = f"cat {d}/f > /dev/null"
    r = run(["sh", "-c", f"{cat}; setsid -w sh -c '{cat}; {cat}'; {cat}; setsid -w {cat}"], paths=str(d), env=BAD)
    assert r.returncode == 0, r.stderr
    lines = bad_lines(r.stderr)
    assert len(lines) == 3, r.stderr.decode()
    assert len({re.match(r"s3dlio-direct\[(\d+)\]", line).group(1) for line in lines}) == 3


def test_different_problems_each_print(run, strict_fs):
    """Once per session and problem: another malformed value is another line."""
    d = strict_fs.new_dir("data")
    make_file(d / "f", 100_000)
    cat = f"cat {d}/f > /dev/null"
    r = run(["sh", "-c", f"{cat}; S3DLIO_DIRECT_ALIGN=5 {cat}; S3DLIO_DIRECT_ALIGN=3 {cat}"], paths=str(d), env=BAD)
    lines = bad_lines(r.stderr)
    assert len(lines) == 2 and "'3'" in lines[0] and "'5'" in lines[1], r.stderr.decode()


def test_unwritable_statistics_and_log_file_once(run, strict_fs, tmp_path):
    """Statistics that cannot be written and a log file that cannot be used, across a pool
    of processes: each problem once, then the program's stderr is its own."""
    d = strict_fs.new_dir("data")
    make_file(d / "f", 100_000)
    prog = write(tmp_path / "pool.py", POOL, 0o644)
    env = {"S3DLIO_DIRECT_STATS": "/nonexistent-dir/s-%p.json", "S3DLIO_DIRECT_LOG_FILE": "/nonexistent-dir/log"}
    r = run([PY, prog, d / "f"], paths=str(d), env=env)
    assert r.returncode == 0, r.stderr
    lines = shim_warnings(r.stderr)
    about_log = [line for line in lines if "log file" in line]
    about_stats = [line for line in lines if "statistics" in line or "index" in line or "counters" in line]
    assert len(about_log) == 1, lines
    assert 1 <= len(about_stats) <= 2 and len(set(l.split(": ", 1)[1] for l in about_stats)) == len(about_stats), lines
    assert len(lines) == len(about_log) + len(about_stats), lines


def mark_dir(base: str, uid: int) -> Path:
    return Path(base) / f"s3dlio-direct-{uid}"


def test_ended_sessions_marks_are_removed(run, strict_fs):
    """The process that makes a mark removes those of sessions that are over; others stay."""
    need_root("plant marks in root's directory")
    d = strict_fs.new_dir("data")
    make_file(d / "f", 100_000)
    cat = f"cat {d}/f > /dev/null"
    run(["sh", "-c", cat], paths=str(d), env=BAD)  # makes the directory
    md = next(mark_dir(b, 0) for b in ("/dev/shm", "/tmp") if mark_dir(b, 0).is_dir())
    boot = Path("/proc/sys/kernel/random/boot_id").read_text()[:8]
    ns = re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))
    unused = next(p for p in range(4_000_000, 3_000_000, -7) if not Path(f"/proc/{p}").exists())
    planted = {
        # this pytest process is no session leader started at tick 1: that session is over
        "reused": f"{boot}.{ns}.{os.getpid()}.1.14.0000000000000001",
        # another boot
        "boot": f"{int(boot, 16) ^ 1:08x}.{ns}.{unused}.5.14.0000000000000001",
        # a session whose number no process holds now: may still run without its leader
        "kept": f"{boot}.{ns}.{unused}.5.14.0000000000000001",
        # not a mark
        "other": "notes.txt",
    }
    for name in planted.values():
        (md / name).touch()
    try:
        run(["sh", "-c", cat], paths=str(d), env={"S3DLIO_DIRECT_ALIGN": "9"})
        left = set(os.listdir(md))
        assert planted["reused"] not in left and planted["boot"] not in left, sorted(left)
        assert planted["kept"] in left and planted["other"] in left, sorted(left)
    finally:
        for name in planted.values():
            (md / name).unlink(missing_ok=True)


@pytest.fixture(params=["root's", "symlink"])
def squatted_marks(request):
    """Both places for nobody's marks unusable: directories of root's, or symbolic links to
    a directory of nobody's (which are never followed)."""
    need_root("make another user's directories")
    target = Path(tempfile.mkdtemp(prefix="s3d-marks-elsewhere-"))
    os.chown(target, NOBODY, NOBODY)
    moved = []
    for base in ("/dev/shm", "/tmp"):
        p = mark_dir(base, NOBODY)
        if p.exists() or p.is_symlink():
            aside = p.with_name(p.name + f".aside-{os.getpid()}")
            os.rename(p, aside)
            moved.append((aside, p))
        if request.param == "symlink":
            p.symlink_to(target)
        else:
            p.mkdir(mode=0o755)
    try:
        yield "belongs to uid 0" if request.param == "root's" else "symbolic link"
    finally:
        for base in ("/dev/shm", "/tmp"):
            p = mark_dir(base, NOBODY)
            if p.is_symlink():
                p.unlink()
            else:
                shutil.rmtree(p, ignore_errors=True)
        for aside, p in moved:
            os.rename(aside, p)
        left = os.listdir(target)
        shutil.rmtree(target)
    assert not left, f"a mark was made through a symbolic link: {left}"


def cat_chain_as_nobody(run, strict_fs):
    """A malformed variable through a shell that runs cat twice and a nested shell that runs
    it twice more, as nobody; returns the run, the data directory and the command."""
    d = strict_fs.new_dir("data")
    make_file(d / "f", 100_000)
    os.chmod(d / "f", 0o644)
    cmd = f"cat {d}/f > /dev/null"
    r = run(["sh", "-c", f"{cmd}; {cmd}; sh -c '{cmd}; {cmd}'"], paths=str(d), env=BAD, user="nobody")
    assert r.returncode == 0, r.stderr
    return r, d, cmd


def test_as_nobody_one_line(run, strict_fs):
    r, _d, _cmd = cat_chain_as_nobody(run, strict_fs)
    assert len(bad_lines(r.stderr)) == 1, r.stderr.decode()
    md = [mark_dir(b, NOBODY) for b in ("/dev/shm", "/tmp") if mark_dir(b, NOBODY).is_dir()]
    assert md, "no directory of marks for nobody"
    st = md[0].stat()
    assert st.st_uid == NOBODY and stat.S_IMODE(st.st_mode) & 0o077 == 0, oct(st.st_mode)


def test_no_mark_possible_top_of_each_tree_prints(run, strict_fs, squatted_marks):
    """No usable directory: never silent, never a line per worker; the top process of the
    tree prints, once per image (an exec'd image cannot know its predecessor printed)."""
    r, d, cmd = cat_chain_as_nobody(run, strict_fs)
    lines = bad_lines(r.stderr)
    assert len(lines) == 1, r.stderr.decode()
    assert "could not be marked" in lines[0] and squatted_marks in lines[0], lines[0]
    r = run(["sh", "-c", f"exec sh -c '{cmd}; {cmd}'"], paths=str(d), env=BAD, user="nobody")
    assert len(bad_lines(r.stderr)) == 2, r.stderr.decode()


def test_no_twin_as_nobody_leaves_stderr_alone(run, strict_fs):
    """A file created write-only with mode 0444 by a user other than root cannot be opened
    again (the twin): it stays buffered, counted, and nothing is printed."""
    py = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else PY
    prog = "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444); " \
           "os.write(fd, b'x' * 100000); os.close(fd); print('ok')"
    outs = {}
    for side in ("plain", "shim", "info"):
        d = strict_fs.new_dir(side)
        st = strict_fs.new_dir(f"st-{side}")
        env = {} if side == "plain" else {"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")}
        if side == "info":
            env["S3DLIO_DIRECT_LOG"] = "info"
        outs[side] = (run([py, "-c", prog, d / "f"], shim=side != "plain", paths=str(d / "f"), env=env, user="nobody"), st)
    (plain, _), (shim, st), (info, _) = outs["plain"], outs["shim"], outs["info"]
    assert plain.returncode == 0, plain.stderr
    assert_same_run(plain, shim, "write-only 0444 file as nobody", compare_stderr=True)
    assert fallback_total(load_stats(st), "no_twin") == 1, stats_summary(load_stats(st))
    assert shim_warnings(info.stderr), info.stderr


def test_run_reports_the_fallbacks_it_kept_quiet(run, ramfs, tmp_path):
    """The fallbacks nobody is told about on stderr are in `run --stats`'s summary."""
    from test_cli import CLI

    d = ramfs.new_dir("data")
    make_file(d / "f", 300_001)
    make_file(d / "g", 70_001, seed=2)
    st = tmp_path / "st"
    r = run([CLI, "run", "--paths", d, "--stats", st, "--", PY, "-c", FALLBACKS, "rw", d], shim=False)
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert "s3dlio-direct[" not in err, err
    fallbacks = next(line for line in err.splitlines() if line.strip().startswith("fallbacks"))
    assert "fs_no_odirect" in fallbacks, err


def test_marks_under_a_umask_that_takes_the_users_rights(run, strict_fs):
    """Made under umask 777, the directory still gets mode 0700, so the session is marked."""
    need_root("run as nobody and remove nobody's directory of marks")
    d = strict_fs.new_dir("data")
    make_file(d / "f", 100_000)
    os.chmod(d / "f", 0o644)
    for base in ("/dev/shm", "/tmp"):
        if mark_dir(base, NOBODY).is_dir():
            shutil.rmtree(mark_dir(base, NOBODY))
    env = run.env_for(shim=True, paths=str(d), env=BAD, user="nobody")
    moved = " ".join(f"{k}={env.pop(k)}" for k in list(env) if k == "LD_PRELOAD" or k.startswith("S3DLIO_DIRECT_"))
    cat = f"cat {d}/f > /dev/null"
    inner = f"umask 777; exec env {moved} sh -c '{cat}; {cat}; sh -c \"{cat}\"'"
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", "sh", "-c", inner],
                       env=env, capture_output=True, timeout=60, start_new_session=True)
    assert r.returncode == 0, r.stderr
    lines = bad_lines(r.stderr)
    assert len(lines) == 1 and "could not be marked" not in lines[0], r.stderr.decode()
    st = mark_dir("/dev/shm", NOBODY).stat()
    assert stat.S_IMODE(st.st_mode) == 0o700, oct(st.st_mode)
