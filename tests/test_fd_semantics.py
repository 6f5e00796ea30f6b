"""Descriptor semantics (c-harness/fdsem.c): F_GETFL/F_SETFL transparency, a program's own
O_DIRECT, dup family, fd reuse behind the shim's back, copy_file_range/sendfile/splice, fork,
exec with inherited descriptors (also into static programs the shim cannot enter), signal
handlers, O_TMPFILE, O_EXCL on ramfs, POSIX locks, write-only files, closefrom, non-regular
files, secure-execution mode, unmanaged descriptors."""

import os
import re
import shutil
import subprocess
import resource
import sys

import pytest

from conftest import (
    FDINFO_PY,
    NOBODY,
    O_DIRECT,
    assert_same_file,
    assert_same_run,
    bin_path,
    fdinfo_lines,
    fdinfo_of,
    is_direct,
    make_file,
    shim_warnings,
)


def pair(fs, name="f", size=None, seed=1):
    """Two fresh dirs (plain, shim), each with the same file when size is given."""
    out = []
    for side in ("plain", "shim"):
        d = fs.new_dir(side)
        if size is not None:
            make_file(d / name, size, seed=seed)
        out.append(d)
    return out


def both(run, fs, argv_for, size=None, name="f", env=None, user=None, extra_paths=(), timeout=120):
    """Run argv_for(dir) plainly in plain/ and through the shim in shim/ (PATHS = shim/)."""
    dp, ds = pair(fs, name, size)
    if user:
        for d in (dp, ds):
            for p in d.iterdir():
                os.chown(p, NOBODY, NOBODY)
    plain = run(argv_for(dp), shim=False, env=env, user=user, timeout=timeout)
    shimmed = run(argv_for(ds), shim=True, paths=[str(ds), *extra_paths], env=env, user=user, timeout=timeout)
    return dp, ds, plain, shimmed


FDSEM = lambda: bin_path("fdsem")  # noqa: E731


def test_getfl_transparent(run, strict_fs):
    dp, ds, p, s = both(run, strict_fs, lambda d: [FDSEM(), "getfl", d / "f"], size=50_000)
    assert_same_run(p, s, "F_GETFL")
    for label, _fd, fl in fdinfo_lines(s.stderr):
        assert is_direct(fl), f"open {label}: kernel flags {fl:o} lack O_DIRECT through the shim"
    # and the program never sees O_DIRECT it did not ask for (checked by equality above), nor
    # is the plain run showing any
    for label, _fd, fl in fdinfo_lines(p.stderr):
        assert is_direct(fl) == ("DIRECT" in label)


def test_getfl_hides_sync(run, strict_fs):
    """S3DLIO_DIRECT_SYNC puts O_SYNC on the private twin that carries the direct I/O; the
    program's own description, and so F_GETFL, stay exactly as without the library."""
    dp, ds, p, s = both(run, strict_fs, lambda d: [FDSEM(), "getfl", d / "f"], size=50_000,
                        env={"S3DLIO_DIRECT_SYNC": "yes"})
    assert_same_run(p, s, "F_GETFL with S3DLIO_DIRECT_SYNC")
    own = {lab: fl for lab, _fd, fl in fdinfo_lines(p.stderr, own=True)}
    twins = re.findall(r"^FDINFO (.*) fd=\d+ flags:\s+([0-7]+)\s+twin:\s+([0-7]+)\s*$", s.stderr.decode(), re.M)
    assert any("WRONLY" in lab or "RDWR" in lab for lab, _o, _t in twins), s.stderr
    for label, fl, twin in twins:
        # (a program's own O_DIRECT descriptor is left alone)
        if ("WRONLY" in label or "RDWR" in label) and "DIRECT" not in label:
            assert int(twin, 8) & 0o4010000 == 0o4010000, f"{label}: no O_SYNC on the twin with SYNC=yes ({twin})"
            assert int(fl, 8) == own[label], f"{label}: the program's own flags changed ({fl} against {own[label]:o})"


@pytest.mark.parametrize("fsname", ["strict_fs", "disk", "ramfs"])
def test_explicit_o_direct_gets_kernel_behaviour(run, request, fsname):
    fs = request.getfixturevalue(fsname)
    dp, ds, p, s = both(run, fs, lambda d: [FDSEM(), "explicit-direct", d / "f"], size=200_000)
    assert_same_run(p, s, "program's own O_DIRECT")
    if fsname == "strict_fs":
        assert b"read(+1,1000) = -1 EINVAL" in s.stdout  # the kernel's answer, not hidden
    assert_same_file(dp / "f", ds / "f", "explicit O_DIRECT")


def test_setfl_keeps_shim_direct(run, strict_fs):
    dp, ds, p, s = both(run, strict_fs, lambda d: [FDSEM(), "setfl", d / "f"], size=300_001)
    assert_same_run(p, s, "F_SETFL from the program")
    assert_same_file(dp / "f", ds / "f", "F_SETFL")
    for lab in ("opened", "after-setfl", "after-setfl0", "dup-after-setfl"):
        fl = fdinfo_of(s.stderr, lab)
        assert is_direct(fl), f"{lab}: the program's F_SETFL dropped the shim's O_DIRECT ({fl:o})"
    assert fdinfo_of(s.stderr, "after-setfl") & os.O_APPEND


@pytest.mark.parametrize("fsname", ["strict_fs", "ramfs"])
def test_dup_family_and_close_range(run, request, fsname):
    fs = request.getfixturevalue(fsname)
    dp, ds, p, s = both(run, fs, lambda d: [FDSEM(), "dup", d / "f"], size=300_001)
    assert_same_run(p, s, "dup/dup2/dup3/F_DUPFD/close_range/closefrom")
    assert_same_file(dp / "f", ds / "f", "dup")
    if fsname == "strict_fs":
        for lab in ("orig", "dup", "dup2-50", "dup3-51", "reopen"):
            assert is_direct(fdinfo_of(s.stderr, lab)), lab
    for lab in ("pipe-over-dup", "sock-over-50", "memfd-at-51"):
        assert not is_direct(fdinfo_of(s.stderr, lab)), f"{lab} got O_DIRECT: the shim took it for the file"


def test_fd_reuse_behind_the_shims_back(run, strict_fs):
    dp, ds, p, s = both(run, strict_fs, lambda d: [FDSEM(), "reuse", d / "f", d.parent / (d.name + "-other")],
                        size=100_000)
    assert_same_run(p, s, "fd reuse")
    reused = re.findall(rb"REUSED (\w+) (\w+)", s.stderr)
    assert reused and all(v == b"yes" for _k, v in reused), (
        f"the freed numbers were not reused by pipe/socket/memfd/eventfd under the shim: {reused} "
        "(a descriptor of the shim's own took a low number?)"
    )
    for lab in ("pipe-r", "socket", "memfd", "eventfd", "other"):
        assert not is_direct(fdinfo_of(s.stderr, lab)), f"{lab} got O_DIRECT"
    assert_same_file(dp.parent / "plain-other", ds.parent / "shim-other", "unmatched file at a reused number")


@pytest.mark.parametrize("fsname", ["strict_fs", "disk", "tmpfs", "ramfs"])
def test_copy_file_range_sendfile_splice(run, request, fsname):
    fs = request.getfixturevalue(fsname)
    dp, ds, p, s = both(run, fs, lambda d: [FDSEM(), "copy", d / "f", d / "dst"], size=1_000_003, timeout=60)
    assert_same_run(p, s, "copy_file_range/sendfile/splice")
    for suffix in ("dst", "dst.2", "dst.3"):
        assert_same_file(dp / suffix, ds / suffix, suffix)


def test_fork_inherited_descriptors(run, strict_fs):
    dp, ds, p, s = both(run, strict_fs, lambda d: [FDSEM(), "fork", d / "f"])
    assert_same_run(p, s, "fork")
    assert_same_file(dp / "f", ds / "f", "fork")
    assert is_direct(fdinfo_of(s.stderr, "child-inherited"))


def _static(name):
    return bin_path(name + "_static")


EXEC_CASES = {
    # id: (w|r, via, command builder(dir))
    "sh-execv-write": ("w", "execv", lambda d: ["/bin/sh", "-c", f"head -c 5000 {d}/src >&5; echo tail >&5"]),
    "static-writer-execve": ("w", "execve", lambda d: [_static("writer"), "-i", "5", "-s", "100003", "-c", "1000,4097,3", "x"]),
    "static-writer-posix_spawn": ("w", "posix_spawn", lambda d: [_static("writer"), "-i", "5", "-s", "70001", "-c", "4097", "x"]),
    "static-writer-system": ("w", "system", lambda d: [_static("writer"), "-i", "5", "-s", "9999", "-c", "1001", "x"]),
    "dynamic-writer-execvp": ("w", "execvp", lambda d: [bin_path("writer"), "-i", "5", "-s", "100003", "-c", "1000,4097", "x"]),
    "static-loader-execv": ("r", "execv", lambda d: [_static("loader"), "-i", "5", "-b", "4097", "x"]),
    "static-loader-popen": ("r", "popen", lambda d: [_static("loader"), "-i", "5", "-b", "1000", "x"]),
    "dynamic-loader-execl": ("r", "execl", lambda d: [bin_path("loader"), "-i", "5", "-b", "1001", "x"]),
    "sh-posix_spawnp-read": ("r", "posix_spawnp", lambda d: ["sh", "-c", "head -c 3001 <&5 | od | tail -n 2"]),
}


@pytest.mark.parametrize("case", list(EXEC_CASES), ids=list(EXEC_CASES))
def test_exec_with_inherited_descriptor(run, strict_fs, case):
    wr, via, builder = EXEC_CASES[case]
    dp, ds = pair(strict_fs)
    for d in (dp, ds):
        make_file(d / "src", 20_000, seed=3)
        if wr == "r":
            make_file(d / "f", 300_001, seed=4)
    p = run([FDSEM(), "exec", wr, via, dp / "f", *builder(dp)], shim=False)
    s = run([FDSEM(), "exec", wr, via, ds / "f", *builder(ds)], shim=True, paths=str(ds))
    assert_same_run(p, s, f"exec {case}")
    assert_same_file(dp / "f", ds / "f", f"exec {case}")
    assert is_direct(fdinfo_of(s.stderr, "before-exec"))


@pytest.mark.parametrize("which", ["other", "same"])
def test_write_from_signal_handler(run, strict_fs, which):
    dp, ds, p, s = both(run, strict_fs, lambda d: [FDSEM(), "sigwrite", which, d / "a", d / "b", "4000"], timeout=100)
    assert s.stdout.startswith(b"OK"), s.stdout + s.stderr[-1000:]
    assert_same_run(p, s, "signal handler writes")


@pytest.mark.parametrize("fsname", ["strict_fs", "tmpfs"])
def test_o_tmpfile_linkat(run, request, fsname):
    fs = request.getfixturevalue(fsname)
    dp, ds, p, s = both(run, fs, lambda d: [FDSEM(), "tmpfile", d, "linked"])
    assert_same_run(p, s, "O_TMPFILE")
    assert_same_file(dp / "linked", ds / "linked", "O_TMPFILE + linkat")
    if fsname == "strict_fs":
        assert is_direct(fdinfo_of(s.stderr, "tmpfile")), "an O_TMPFILE in a matched directory must be direct"


@pytest.mark.parametrize("fsname", ["ramfs", "strict_fs"])
def test_o_creat_o_excl(run, request, fsname):
    fs = request.getfixturevalue(fsname)
    dp, ds, p, s = both(run, fs, lambda d: [FDSEM(), "excl", d / "new"])
    assert_same_run(p, s, "O_CREAT|O_EXCL")
    assert b"open(CREAT|EXCL|RDWR) = 0" in s.stdout
    assert_same_file(dp / "new", ds / "new", "O_EXCL")
    assert is_direct(fdinfo_of(s.stderr, "excl")) == (fsname == "strict_fs")


def test_posix_locks_survive(run, strict_fs):
    dp, ds, p, s = both(run, strict_fs, lambda d: [FDSEM(), "locks", d / "f"], size=30_000)
    assert_same_run(p, s, "POSIX record locks")
    assert s.stdout.count(b"seen by another process: yes") == 3


def test_write_only_file_mode_0200_as_nobody(run, strict_fs):
    dp, ds, p, s = both(run, strict_fs, lambda d: [FDSEM(), "wronly", d / "wo"], user="nobody")
    assert_same_run(p, s, "O_WRONLY file with mode 0200, as nobody")
    assert_same_file(dp / "wo", ds / "wo", "mode 0200 file")
    assert is_direct(fdinfo_of(s.stderr, "wronly"))


@pytest.mark.parametrize("log", ["stderr", "file"])
def test_closefrom_log_never_lands_in_program_file(run, strict_fs, log):
    extra = strict_fs.new_dir("meta")
    env = {"S3DLIO_DIRECT_LOG": "debug", "S3DLIO_DIRECT_STATS": str(extra / "stats.%p.json")}
    if log == "file":
        env["S3DLIO_DIRECT_LOG_FILE"] = str(extra / "shim.log")
    dp, ds = pair(strict_fs, size=100_000)
    p = run([FDSEM(), "closefrom-log", dp / "f", dp.parent / "plain-out"], shim=False, env=env)
    s = run([FDSEM(), "closefrom-log", ds / "f", ds.parent / "shim-out"], shim=True, paths=str(ds), env=env)
    assert_same_run(p, s, "closefrom(3)")
    assert_same_file(dp.parent / "plain-out", ds.parent / "shim-out", "the program's own file after closefrom(3)")
    assert_same_file(dp / "f", ds / "f", "closefrom")


def test_non_regular_files_never_direct(run, strict_fs):
    extra = ["/dev/null", "/dev/zero", "/proc", "/sys"]
    dp, ds = pair(strict_fs)
    p = run([FDSEM(), "nonreg", dp], shim=False)
    s = run([FDSEM(), "nonreg", ds], shim=True, paths=[str(ds), *extra])
    assert_same_run(p, s, "non-regular files")
    for label, _fd, fl in fdinfo_lines(s.stderr):
        if label == "regular":
            assert is_direct(fl), "the regular file in the matched directory is not direct"
        else:
            assert not is_direct(fl), f"{label} got O_DIRECT ({fl:o})"


def test_block_device_named_by_pattern(run, strict_blockdev):
    dev, data = strict_blockdev
    p = run([bin_path("loader"), "-b", "1000", "-l", "3000001", "-F", dev], shim=False)
    s = run([bin_path("loader"), "-b", "1000", "-l", "3000001", "-F", dev], shim=True, paths=dev)
    assert_same_run(p, s, "block device read with 1000-byte buffers")
    assert is_direct(fdinfo_of(s.stderr, dev)), "a block device named by PATHS must get O_DIRECT"
    assert not is_direct(fdinfo_of(p.stderr, dev))


def test_high_fd_number(run, strict_fs):
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 1 << 20:
        hard = 1 << 20
    n = str(hard - 5)
    lim = f"--nofile={hard}:{hard}"
    dp, ds, p, s = both(run, strict_fs, lambda d: ["prlimit", lim, FDSEM(), "highfd", d / "f", n], size=50_000)
    assert_same_run(p, s, f"matched file at fd {n} with RLIMIT_NOFILE {hard}")
    assert_same_file(dp / "f", ds / "f", "high fd")
    assert is_direct(fdinfo_of(s.stderr, "high"))


def test_unmanaged_fds_get_no_extra_syscalls(run, strict_fs):
    """read() on a file the shim does not manage: no syscall added per call."""
    if not shutil.which("strace"):
        pytest.fail("strace is needed (apt-get install strace)")
    d = strict_fs.new_dir("data")
    other = strict_fs.new_dir("other")
    make_file(other / "f", 200_000)

    def count(shim):
        out = other / f"strace-{shim}.txt"
        r = run(["strace", "-f", "-c", "-o", out, bin_path("loader"), "-b", "10", other / "f"], shim=shim, paths=str(d))
        assert r.returncode == 0, r.stderr
        total = None
        calls = {}
        for line in out.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[-1] == "total":
                total = int(parts[3])
            elif len(parts) >= 5 and parts[0][0].isdigit():
                calls[parts[-1]] = int(parts[3])
        return total, calls, r.stdout

    tp, cp, op = count(False)
    ts, cs, os_ = count(True)
    assert op == os_
    assert cp["read"] >= 20_000
    assert ts - tp < 500, (
        f"{ts - tp} more syscalls with the shim for 20000 reads of an unmanaged file: plain {cp}, shim {cs}"
    )


def test_secure_execution_mode_does_nothing(run, strict_fs, tmp_path):
    """A set-user-ID program (AT_SECURE) must not be touched: glibc only preloads a set-uid
    library from a system directory there, so install a copy, run a setuid-nobody loader as
    root, and check the kernel shows no O_DIRECT."""
    if os.geteuid() != 0:
        pytest.skip("SKIPPED: needs root to install a set-uid test library")
    libdir = "/usr/lib/x86_64-linux-gnu"
    if not os.path.isdir(libdir):
        pytest.skip(f"SKIPPED: {libdir} does not exist on this machine")
    lib = os.path.join(libdir, f"libs3dlio_direct_secure_test_{os.getpid()}.so")
    d = strict_fs.new_dir("data")
    make_file(d / "f", 300_000)
    os.chmod(d / "f", 0o644)
    prog = strict_fs.new_dir("bin") / "loader_setuid"
    shutil.copy2(bin_path("loader"), prog)
    os.chown(prog, NOBODY, NOBODY)
    os.chmod(prog, 0o4755)
    shutil.copy2(run.shim, lib)
    os.chmod(lib, 0o4755)
    try:
        env = {"LD_PRELOAD": os.path.basename(lib), "S3DLIO_DIRECT_PATHS": str(d)}
        # sanity: the same library by that name is loaded into an ordinary program
        plain_prog = strict_fs.new_dir("bin2") / "loader"
        shutil.copy2(bin_path("loader"), plain_prog)
        ok = run([plain_prog, "-F", "-b", "1000", d / "f"], shim=False, env=env)
        assert is_direct(fdinfo_of(ok.stderr, str(d / "f"))), "the installed test library is not active"
        r = run([prog, "-F", "-b", "1000", d / "f"], shim=False, env=env)
        p = run([prog, "-F", "-b", "1000", d / "f"], shim=False)
        assert_same_run(p, r, "set-uid program")
        assert not is_direct(fdinfo_of(r.stderr, str(d / "f"))), "the shim acted in secure-execution mode"
        assert shim_warnings(r.stderr) == []
    finally:
        os.unlink(lib)


DPRINTF_PROG = FDINFO_PY + r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
print("direct", kernel_direct(fd), file=sys.stderr)
total = 0
for i in range(3000):
    n = libc.dprintf(fd, b"%s-%d|", b"line" * (i % 7), i)
    if n < 0:
        print("dprintf failed errno", ctypes.get_errno()); break
    total += n
print("dprintf total", total, "pos", os.lseek(fd, 0, os.SEEK_CUR))
"""


def test_dprintf_on_a_direct_fd(run, strict_fs):
    """dprintf writes inside glibc, where no hook sees it: the shim formats and writes itself."""
    dp, ds, p, s = both(run, strict_fs, lambda d: [sys.executable, "-c", DPRINTF_PROG, str(d / "out")])
    assert_same_run(p, s, "dprintf")
    assert_same_file(dp / "out", ds / "out", "dprintf")
    assert b"direct True" in s.stderr, s.stderr  # the kernel had O_DIRECT on that fd's twin


READONLY_MODE_PROG = FDINFO_PY + r"""
import os, sys
d = sys.argv[1]
fd = os.open(d + "/ro", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
print(os.write(fd, b"a" * 5000), os.write(fd, b"b" * 10003), os.lseek(fd, 0, os.SEEK_CUR))
os.close(fd)
fd = os.open(d + "/wo", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o200)
print("wo direct", kernel_direct(fd), file=sys.stderr)
print(os.write(fd, b"c" * 7001), os.pwrite(fd, b"d" * 3, 4095))
os.close(fd)
"""


def test_unprivileged_files_whose_mode_forbids_reopening(run, strict_fs):
    """As nobody, a file created O_WRONLY with mode 0444 cannot be reopened through /proc for
    the private O_DIRECT twin: it must stay buffered, bytes intact; mode 0200 (write-only)
    must go direct."""
    py = "/usr/bin/python3"
    if not os.path.exists(py):
        pytest.fail("needs /usr/bin/python3 (a python nobody can run); .ci/run installs it")
    dp, ds = pair(strict_fs)
    for d in (dp, ds):
        os.chmod(d, 0o1777)
    p = run([py, "-c", READONLY_MODE_PROG, str(dp)], shim=False, user="nobody")
    s = run([py, "-c", READONLY_MODE_PROG, str(ds)], shim=True, paths=[str(ds)], user="nobody")
    assert_same_run(p, s, "mode 0444/0200 files as nobody")
    for name in ("ro", "wo"):
        assert_same_file(dp / name, ds / name, name)
    # the 0444 file cannot be reopened for the twin: it stays buffered, the 0200 one goes direct
    assert b"wo direct True" in s.stderr, s.stderr
