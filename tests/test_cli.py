"""The s3dlio-direct command: `run` (preloading, LD_PRELOAD kept, exit statuses and signals
passed through, --only, --stats), `probe` (checked against what the kernel itself answers
when asked the same question), `stats` (merging the files of multi-process runs), and
`make install`. S3DLIO_DIRECT_PROGRAMS is tested here too, straight through the library.

The command is run from the cleaned environment of the `run` fixture with shim=False: the
command itself composes LD_PRELOAD, which is what is under test."""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FDINFO_PY, O_DIRECT, REPO, make_file

CLI = REPO / "target" / "release" / "s3dlio-direct"
PY = sys.executable
RWF_DONTCACHE = 0x80
EXIT_OWN_FAILURE = 125

# Prints, as JSON on stdout, the kernel's flags of each file it opens (fdinfo) and the bytes
# it read, reading with os.read in 1 MiB pieces so that read_bytes is exactly the file size.
READER = FDINFO_PY + r"""
import json, os, sys
out = []
for path in sys.argv[1:]:
    flags, n = read_whole(path)
    out.append({"path": path, "flags": flags, "bytes": n})
print(json.dumps({"files": out, "preload": os.environ.get("LD_PRELOAD", ""),
                  "maps": open("/proc/self/maps").read()}))
"""


@pytest.fixture(scope="session")
def cli(shim) -> str:
    if not CLI.is_file():
        pytest.fail(f"{CLI} is missing: build it with `make build`")
    lib_beside = CLI.parent / "libs3dlio_direct.so"
    if not lib_beside.is_file():
        pytest.fail(f"{lib_beside} is missing: build it with `make build`")
    return str(CLI)


def cmd(run, cli, *args, **kw):
    """The command, run without the shim in its own environment."""
    return run([cli, *map(str, args)], shim=False, **kw)


def reader(run, cli, opts, files, **kw):
    r = cmd(run, cli, "run", *opts, "--", PY, "-c", READER, *files, **kw)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return json.loads(r.stdout), r


def stats_json(run, cli, *files):
    r = cmd(run, cli, "stats", "--json", *files)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return json.loads(r.stdout)


def per_process(d: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))]


# --------------------------------------------------------------------------- basics


def test_version_and_help(run, cli):
    r = cmd(run, cli, "--version")
    assert r.returncode == 0 and r.stdout.decode().startswith("s3dlio-direct 0."), r
    for sub in ([], ["run"], ["probe"], ["stats"]):
        r = cmd(run, cli, *sub, "--help")
        assert r.returncode == 0, (sub, r.stderr)
        assert b"Usage: s3dlio-direct" in r.stdout, r.stdout
    assert b"-- CMD" in cmd(run, cli, "run", "--help").stdout


# --------------------------------------------------------------------------- run


def test_run_python_goes_direct_and_reads_the_same(run, cli, disk):
    data = make_file(disk / "a.bin", 3 * 1048576 + 17)
    out, _ = reader(run, cli, ["--paths", disk.path], [disk / "a.bin"])
    f = out["files"][0]
    assert f["flags"] & O_DIRECT, f"the kernel's fdinfo has no O_DIRECT: {oct(f['flags'])}"
    assert f["bytes"] == len(data)
    # Outside --paths: untouched.
    make_file(disk / "b.bin", 4096)
    out, _ = reader(run, cli, ["--paths", disk / "a.bin"], [disk / "b.bin"])
    assert not out["files"][0]["flags"] & O_DIRECT


def test_relative_and_repeated_paths_are_made_absolute(run, cli, disk):
    (disk / "x").mkdir()
    (disk / "y").mkdir()
    (disk / "z").mkdir()
    for d in "xyz":
        make_file(disk / d / "f", 8192)
    out, _ = reader(run, cli, ["--paths", "x", "--paths", "./y"], [disk / d / "f" for d in "xyz"], cwd=disk.path)
    direct = {Path(f["path"]).parent.name: bool(f["flags"] & O_DIRECT) for f in out["files"]}
    assert direct == {"x": True, "y": True, "z": False}, direct


def test_exclude_wins(run, cli, disk):
    (disk / "keep").mkdir()
    make_file(disk / "keep" / "f", 8192)
    make_file(disk / "g", 8192)
    out, _ = reader(run, cli, ["--paths", disk.path, "--exclude", disk / "keep"], [disk / "keep" / "f", disk / "g"])
    assert [bool(f["flags"] & O_DIRECT) for f in out["files"]] == [False, True]


def test_cat_gives_the_same_bytes(run, cli, disk, tmp_path):
    data = make_file(disk / "c.bin", 2 * 1048576 + 5)
    st = tmp_path / "st"
    r = cmd(run, cli, "run", "--paths", disk.path, "--stats", st, "--", "cat", disk / "c.bin")
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
    (only,) = per_process(st)
    assert only["program"] == "cat"
    assert only["opens_direct"] == 1 and only["read_bytes"] == len(data), only
    assert b"working: 1 of 1 matched opens went direct" in r.stderr, r.stderr


def test_dd_gives_the_same_bytes_and_status(run, cli, disk):
    data = make_file(disk / "in.bin", 1048576 + 512)
    r = cmd(run, cli, "run", "--paths", disk.path, "--", "dd", f"if={disk / 'in.bin'}", f"of={disk / 'out.bin'}",
            "bs=64k", "status=none")
    assert r.returncode == 0, r.stderr
    assert (disk / "out.bin").read_bytes() == data
    plain = run(["dd", "if=/nonexistent-s3dlio", "of=/dev/null"], shim=False)
    r = cmd(run, cli, "run", "--paths", disk.path, "--", "dd", "if=/nonexistent-s3dlio", "of=/dev/null")
    assert r.returncode == plain.returncode != 0
    assert b"nonexistent-s3dlio" in r.stderr


def other_preload(tmp_path: Path) -> Path:
    """A small preload library of our own, standing for the user's (jemalloc, a profiler)."""
    src = tmp_path / "other.c"
    src.write_text('#include <stdlib.h>\n__attribute__((constructor)) static void init(void) '
                   '{ setenv("OTHER_PRELOAD_RAN", "1", 1); }\n')
    so = tmp_path / "libother.so"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler (cc): install gcc")
    subprocess.run([cc, "-shared", "-fPIC", "-o", so, src], check=True, timeout=60)
    return so


def test_existing_ld_preload_is_kept(run, cli, disk, tmp_path):
    other = other_preload(tmp_path)
    make_file(disk / "f", 65536)
    env = {"LD_PRELOAD": str(other)}
    r = cmd(run, cli, "run", "--paths", disk.path, "--", PY, "-c", READER + "\nprint(os.environ.get('OTHER_PRELOAD_RAN'))",
            disk / "f", env=env)
    assert r.returncode == 0, r.stderr
    first, ran = r.stdout.decode().splitlines()
    out = json.loads(first)
    lib = os.path.realpath(CLI.parent / "libs3dlio_direct.so")
    assert out["preload"] == f"{lib}:{other}", "the library must be prepended, the user's kept"
    assert lib in out["maps"] and str(other) in out["maps"]
    assert ran == "1", "the user's own preload library did not run"
    assert out["files"][0]["flags"] & O_DIRECT
    # Without one set: exactly the library.
    out, _ = reader(run, cli, ["--paths", disk.path], [disk / "f"])
    assert out["preload"] == lib


@pytest.mark.parametrize("code", [0, 1, 7, 255])
def test_exit_status_is_passed_through(run, cli, code):
    r = cmd(run, cli, "run", "--paths", "/nonexistent-s3dlio", "--", "sh", "-c", f"exit {code}")
    assert r.returncode == code, r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGUSR1, signal.SIGSEGV])
def test_death_by_signal_is_passed_through(run, cli, sig, tmp_path):
    r = cmd(run, cli, "run", "--paths", "/nonexistent-s3dlio", "--", "sh", "-c", f"ulimit -c 0; kill -{sig.name[3:]} $$",
            cwd=tmp_path)
    assert r.returncode == -sig, f"wanted death by {sig.name}, got {r.returncode}: {r.stderr}"
    assert not list(tmp_path.glob("core*")), "the command must not dump core itself"


SLEEPER = r"""
import os, signal, sys, time
if sys.argv[1] == "handle":
    def bye(sig, frame):
        print("got", sig, flush=True)
        os._exit(42)
    signal.signal(signal.SIGTERM, bye)
print("READY", flush=True)
time.sleep(60)
"""


def start_sleeper(run, cli, mode):
    p = run.popen([cli, "run", "--paths", "/nonexistent-s3dlio", "--", PY, "-c", SLEEPER, mode], shim=False,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  # A test runner started in the background may have SIGINT ignored, which
                  # children inherit; the command under test must see the default.
                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = p.stdout.readline()
    assert line == b"READY\n", (line, p.stderr.read() if p.poll() is not None else b"")
    return p


def test_sigterm_is_forwarded(run, cli):
    p = start_sleeper(run, cli, "handle")
    try:
        p.send_signal(signal.SIGTERM)
        rest, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert rest == b"got 15\n", err
    assert p.returncode == 42, err


def test_sigint_is_forwarded_and_death_passed_on(run, cli):
    p = start_sleeper(run, cli, "default")
    try:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert b"KeyboardInterrupt" in err, err
    assert p.returncode == -signal.SIGINT, (p.returncode, err)


def test_no_paths_is_refused(run, cli):
    r = cmd(run, cli, "run", "--", "true")
    assert r.returncode == EXIT_OWN_FAILURE
    assert b"no --paths given" in r.stderr and b"--paths /data" in r.stderr, r.stderr
    # S3DLIO_DIRECT_PATHS in the environment is enough.
    r = cmd(run, cli, "run", "--", "true", env={"S3DLIO_DIRECT_PATHS": "/nonexistent-s3dlio"})
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args,says", [
    (["--min-size", "12Q"], b"fix --min-size"),
    (["--align", "3"], b"fix --align"),
    (["--log", "loud"], b"fix --log"),
    (["--only", "bin/cat"], b"fix --only"),
    (["--paths", "/a["], b"fix --paths"),
    (["--bogus"], b"unexpected argument"),
    ([], b"required"),
])
def test_bad_arguments_say_what_to_fix(run, cli, args, says):
    tail = ["--", "true"] if args != [] else []
    r = cmd(run, cli, "run", "--paths", "/nonexistent-s3dlio", *args, *tail)
    assert r.returncode == EXIT_OWN_FAILURE, (r.returncode, r.stderr)
    assert says in r.stderr, r.stderr


def test_bad_inherited_variable_is_named(run, cli):
    r = cmd(run, cli, "run", "--paths", "/nonexistent-s3dlio", "--", "true", env={"S3DLIO_DIRECT_SYNC": "perhaps"})
    assert r.returncode == EXIT_OWN_FAILURE
    assert b"S3DLIO_DIRECT_SYNC='perhaps'" in r.stderr and b"unset S3DLIO_DIRECT_SYNC" in r.stderr, r.stderr


def test_command_not_found_or_not_executable(run, cli, tmp_path):
    r = cmd(run, cli, "run", "--paths", "/nonexistent-s3dlio", "--", "no-such-program-s3dlio")
    assert r.returncode == 127 and b"not found" in r.stderr, r.stderr
    script = tmp_path / "noexec.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    r = cmd(run, cli, "run", "--paths", "/nonexistent-s3dlio", "--", script)
    assert r.returncode == 126 and b"permission denied" in r.stderr, r.stderr


def test_missing_library_is_explained(run, cli, tmp_path):
    lone = tmp_path / "bin" / "s3dlio-direct"
    lone.parent.mkdir()
    shutil.copy2(cli, lone)
    r = cmd(run, lone, "run", "--paths", "/nonexistent-s3dlio", "--", "true")
    assert r.returncode == EXIT_OWN_FAILURE
    assert b"cannot find libs3dlio_direct.so" in r.stderr and b"make build" in r.stderr, r.stderr
    assert str(tmp_path / "lib").encode() in r.stderr or b"bin/../lib" in r.stderr, r.stderr


def test_only_limits_the_shim_to_named_programs(run, cli, disk, tmp_path):
    make_file(disk / "f", 65536)
    script = f"cat {disk / 'f'} > /dev/null; exec {PY} -c '{READER}' {disk / 'f'}"
    # A process --only leaves alone writes no statistics at all.
    for only, python_direct, cat_stats in (("python*", True, []), ("cat", False, [1])):
        st = tmp_path / only.strip("*")
        r = cmd(run, cli, "run", "--paths", disk.path, "--only", only, "--stats", st, "--", "sh", "-c", script)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert bool(out["files"][0]["flags"] & O_DIRECT) == python_direct, only
        cat = [s for s in per_process(st) if s["program"] == "cat"]
        assert [c["opens_matched"] for c in cat] == cat_stats, (only, cat)
        assert all(s["program"] in ("cat", "python3", "python") or s["program"].startswith("python")
                   for s in per_process(st)), per_process(st)


def test_programs_variable_in_the_library(run, disk):
    """S3DLIO_DIRECT_PROGRAMS straight through the library: the program's executable
    (python3.11) or argv[0] (python) base name must match."""
    make_file(disk / "f", 65536)
    for programs, direct in (("python*", True), ("nomatch:cat", False), ("*", True), ("", True)):
        r = run([PY, "-c", READER, disk / "f"], paths=str(disk.path), env={"S3DLIO_DIRECT_PROGRAMS": programs})
        assert r.returncode == 0, r.stderr
        assert not r.stderr, f"no warning expected for {programs!r}: {r.stderr}"
        flags = json.loads(r.stdout)["files"][0]["flags"]
        assert bool(flags & O_DIRECT) == direct, programs
    r = run([PY, "-c", READER, disk / "f"], paths=str(disk.path), env={"S3DLIO_DIRECT_PROGRAMS": "/usr/bin/python3"})
    assert r.returncode == 0
    assert b"S3DLIO_DIRECT_PROGRAMS='/usr/bin/python3'" in r.stderr and b"contains '/'" in r.stderr, r.stderr
    assert not json.loads(r.stdout)["files"][0]["flags"] & O_DIRECT


def test_summary_says_when_nothing_matched(run, cli, tmp_path):
    r = cmd(run, cli, "run", "--paths", "/nonexistent-s3dlio", "--stats", tmp_path / "st", "--", "true")
    assert r.returncode == 0
    assert b"the library ran in 1 process but no file they opened matched --paths" in r.stderr, r.stderr
    assert b"1 more process loaded the library and matched nothing: true" in r.stderr, r.stderr
    assert b"never loaded" not in r.stderr, r.stderr
    # nothing matched: the index says the process ran, and no file of zeros is left
    assert [p.name for p in (tmp_path / "st").iterdir() if not p.name.endswith(".jsonl")] == []


# --------------------------------------------------------------------------- probe


def kernel_truth(path: Path) -> dict:
    """What the kernel answers when asked directly, the way a user could ask it."""
    t = {}
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            os.preadv(fd, [bytearray(1)], 0, RWF_DONTCACHE)
            t["dontcache"] = True
        except OSError:
            t["dontcache"] = False
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | O_DIRECT)
            t["o_direct"] = True
        except OSError as e:
            assert e.errno == errno.EINVAL, e
            t["o_direct"] = False
    finally:
        os.close(fd)
    r = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "--target", str(path)], capture_output=True,
                       text=True, timeout=30)
    t["fstype"], t["source"] = r.stdout.split()[:2]
    return t


def direct_read(path: Path, offset: int, length: int, mem_shift: int = 0):
    """An O_DIRECT pread; returns None or the errno."""
    fd = os.open(path, os.O_RDONLY | O_DIRECT)
    buf = mmap.mmap(-1, length + 2 * mmap.PAGESIZE)
    try:
        os.preadv(fd, [memoryview(buf)[mem_shift:mem_shift + length]], offset)
        return None
    except OSError as e:
        return e.errno
    finally:
        buf.close()
        os.close(fd)


def probe_json(run, cli, *args):
    r = cmd(run, cli, "probe", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("fs_kind", ["strict_fs", "ramfs", "tmpfs"])
def test_probe_reports_what_the_kernel_says(run, cli, request, fs_kind):
    fs = request.getfixturevalue(fs_kind)
    f = fs / "f.bin"
    make_file(f, 1 << 20)
    before = sorted(os.listdir(fs.path))
    rep_file, rep_dir, rep_new = probe_json(run, cli, "--paths", fs.path, f, fs.path, fs / "not" / "yet")
    assert sorted(os.listdir(fs.path)) == before, "probing a directory must leave nothing behind"
    truth = kernel_truth(f)
    for rep in (rep_file, rep_dir, rep_new):
        assert rep["filesystem"]["type"] == truth["fstype"], rep
        assert rep["filesystem"]["source"] == truth["source"], rep
        assert rep["o_direct"]["supported"] is truth["o_direct"], (rep, truth)
        assert rep["rwf_dontcache"]["supported"] is truth["dontcache"], (rep, truth)
        assert rep["pattern"]["direct"] is True and rep["pattern"]["entry"] == str(fs.path), rep
    assert "nearest existing parent" in rep_new["note"]
    a = rep_file["alignment"]
    if fs_kind == "ramfs":
        assert truth["o_direct"] is False, "ramfs takes O_DIRECT now: the fixtures need another refusing filesystem"
        assert "refuses O_DIRECT" in rep_file["o_direct"]["detail"]
        return
    # The alignment reported works, and half of it (where it is above 1) does not.
    assert direct_read(f, a["offset"], a["offset"]) is None
    assert direct_read(f, 0, a["offset"], mem_shift=a["memory"] % mmap.PAGESIZE) is None
    if fs_kind == "strict_fs":
        ss = subprocess.run(["blockdev", "--getss", fs.device], capture_output=True, text=True).stdout.strip()
        assert a["offset"] == int(ss) == 4096, (a, ss)
        assert a["source"] in ("statx", "block device"), a
        assert direct_read(f, a["offset"] // 2, a["offset"]) == errno.EINVAL
        assert direct_read(f, 0, a["offset"] // 2) == errno.EINVAL
        if a["memory"] > 1:
            assert direct_read(f, 0, a["offset"], mem_shift=a["memory"] // 2) == errno.EINVAL


def test_probe_text_and_patterns(run, cli, disk, tmp_path):
    make_file(disk / "f", 4096)
    r = cmd(run, cli, "probe", disk / "f", env={"S3DLIO_DIRECT_PATHS": str(disk.path),
                                                "S3DLIO_DIRECT_EXCLUDE": str(disk / "f")})
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    for key in ("filesystem", "O_DIRECT", "alignment", "RWF_DONTCACHE", "pattern"):
        assert f"\n  {key}" in text, text
    assert f"excluded by '{disk / 'f'}'" in text, text
    r = cmd(run, cli, "probe", disk / "f")
    assert b"S3DLIO_DIRECT_PATHS is not set" in r.stdout, r.stdout
    (rep,) = probe_json(run, cli, "--paths", "elsewhere", disk / "f")
    assert rep["pattern"]["direct"] is False


# --------------------------------------------------------------------------- stats


WORKERS = FDINFO_PY + r"""
import multiprocessing as mp, os, sys

def read_all(path):
    return os.getpid(), read_whole(path)[1]

if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    # close and join, not `with`: leaving the `with` block terminates the workers (SIGTERM)
    # and a killed process writes no statistics
    pool = ctx.Pool(3)
    got = pool.map(read_all, sys.argv[2:], chunksize=1)
    pool.close()
    pool.join()
    print(len({pid for pid, _ in got}), sum(n for _, n in got))
"""


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_stats_merge_multiprocessing_workers(run, cli, disk, tmp_path, start):
    files = [disk / f"shard{i}" for i in range(6)]
    sizes = [len(make_file(p, (i + 1) * 300_001, seed=i)) for i, p in enumerate(files)]
    script = tmp_path / "workers.py"
    script.write_text(WORKERS)
    st = tmp_path / "st"
    r = cmd(run, cli, "run", "--paths", disk.path, "--stats", st, "--", PY, script, start, *files)
    assert r.returncode == 0, r.stderr
    workers, total = map(int, r.stdout.split())
    assert total == sum(sizes)
    procs = per_process(st)
    # the parent matched nothing: it is in the index only
    assert len(procs) >= workers, procs
    merged = stats_json(run, cli, st)
    assert merged["processes"] == len(procs)
    assert merged["loaded"] >= len(procs) + 1, merged
    assert merged["matched_nothing"].get("python3", 0) + merged["matched_nothing"].get("python", 0) >= 1, merged
    assert sorted(merged["pids"]) == sorted(p["pid"] for p in procs)
    assert merged["read_bytes"] == sum(sizes) == sum(p["read_bytes"] for p in procs)
    assert merged["opens_direct"] == merged["opens_matched"] == len(files)
    readers = [p for p in procs if p["read_bytes"] > 0]
    assert 1 <= len(readers) <= workers
    # The table: a row per process and the total.
    table = cmd(run, cli, "stats", *sorted(st.glob("*.json"))).stdout.decode()
    for p in procs:
        assert any(line.split()[:1] == [str(p["pid"])] for line in table.splitlines()), (p["pid"], table)
    total_line = next(line for line in table.splitlines() if line.lstrip().startswith("TOTAL"))
    plural = "process" if len(procs) == 1 else "processes"
    assert f"{len(procs)} {plural}" in total_line, total_line
    # And the summary run printed covers the same processes.
    assert f"s3dlio-direct: {len(procs)} {plural} with statistics".encode() in r.stderr, r.stderr
    assert b"loaded the library and matched nothing: python" in r.stderr, r.stderr
    assert f"working: {len(files)} of {len(files)} matched opens went direct".encode() in r.stderr


FORK_EXEC = r"""
import os, sys
a, b = sys.argv[1], sys.argv[2]
pid = os.fork()
if pid == 0:
    os.execvp("cat", ["cat", b])
fd = os.open(a, os.O_RDONLY)
n = 0
while True:
    chunk = os.read(fd, 1 << 20)
    if not chunk:
        break
    n += len(chunk)
_, status = os.waitpid(pid, 0)
print(n, file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_stats_merge_a_fork_exec_chain(run, cli, disk, tmp_path):
    """sh execs python (one pid: one file, folded), python forks, the child execs cat
    (another pid: its file is cat's, with what the forked python did before folded in)."""
    a = make_file(disk / "a", 1048576 + 3, seed=1)
    b = make_file(disk / "b", 2 * 1048576 + 9, seed=2)
    st = tmp_path / "st"
    script = tmp_path / "forkexec.py"
    script.write_text(FORK_EXEC)
    r = cmd(run, cli, "run", "--paths", disk.path, "--stats", st, "--", "sh", "-c",
            f"exec {PY} {script} {disk / 'a'} {disk / 'b'}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b
    procs = per_process(st)
    assert len(procs) == 2, procs
    by_program = {p["program"]: p for p in procs}
    cat, python = sorted(by_program)
    assert cat == "cat" and python.startswith("python"), by_program
    assert by_program["cat"]["read_bytes"] == len(b)
    assert by_program[python]["read_bytes"] == len(a)
    merged = stats_json(run, cli, *sorted(st.glob("*.json")))
    assert merged["processes"] == 2
    assert merged["read_bytes"] == len(a) + len(b)
    assert merged["opens_direct"] == 2
    assert sorted(merged["programs"]) == sorted(by_program)


def test_stats_errors(run, cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    r = cmd(run, cli, "stats", bad)
    assert r.returncode == 1 and b"not JSON" in r.stderr, r.stderr
    r = cmd(run, cli, "stats", tmp_path / "missing.json")
    assert r.returncode == 1 and b"cannot read" in r.stderr, r.stderr
    r = cmd(run, cli, "stats")
    assert r.returncode == EXIT_OWN_FAILURE and b"required" in r.stderr, r.stderr


# --------------------------------------------------------------------------- install


def test_make_install_then_run_the_installed_command(run, disk, tmp_path):
    dest = tmp_path / "dest"
    prefix = "/opt/s3dlio"
    make = ["make", "-C", str(REPO), f"DESTDIR={dest}", f"PREFIX={prefix}"]
    # under `make test` the outer make's jobserver and level must not leak into this one
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = subprocess.run(make + ["install"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    installed_cli = dest / prefix.lstrip("/") / "bin" / "s3dlio-direct"
    installed_lib = dest / prefix.lstrip("/") / "lib" / "libs3dlio_direct.so"
    assert installed_cli.is_file() and installed_lib.is_file()
    make_file(disk / "f", 1 << 20)
    r = cmd(run, installed_cli, "run", "--paths", disk.path, "--", PY, "-c", READER, disk / "f")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["preload"] == str(installed_lib), "the installed command must use the installed library"
    assert out["files"][0]["flags"] & O_DIRECT
    assert cmd(run, installed_cli, "--version").returncode == 0
    r = subprocess.run(make + ["uninstall"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert not installed_cli.exists() and not installed_lib.exists()
