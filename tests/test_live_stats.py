"""Statistics that survive any ending (issue #15): each process counts into a counters file
it maps shared, so a process killed by SIGKILL or SIGTERM, a terminated pool, forkserver
workers and a command stopped with Ctrl-C still leave their counts up to their last call;
every process that loads the library leaves index lines, one that matched nothing nothing
else; `top` shows a running job; and the files the library writes into a shared directory
never follow a link someone planted, nor trust a file someone else (or a corruption) left.

Counts are checked against the bytes the programs themselves say they read."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import FDINFO_PY, NOBODY, bin_path, load_index, make_file, stats_files

CLI = Path(__file__).resolve().parent.parent / "target" / "release" / "s3dlio-direct"
PY = sys.executable


@pytest.fixture(scope="session")
def cli(shim) -> str:
    if not CLI.is_file():
        pytest.fail(f"{CLI} is missing: build it with `make build`")
    return str(CLI)


def stats_json(run, cli, d) -> dict:
    r = run([cli, "stats", "--json", d], shim=False)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return json.loads(r.stdout)


def read_line(stream, pattern: bytes, timeout=60) -> re.Match:
    """Reads lines from a pipe until one matches (the timeout only guards against a hang)."""
    end = time.monotonic() + timeout
    seen = b""
    while time.monotonic() < end:
        r, _, _ = select.select([stream], [], [], 1)
        if not r:
            continue
        line = stream.readline()
        if not line:
            break
        seen += line
        m = re.search(pattern, line)
        if m:
            return m
    raise AssertionError(f"no line matching {pattern!r}; got {seen[-2000:]!r}")


# A reader that reads the given files in 65537-byte pieces, says how much it read, and then
# waits to be killed.
READ_AND_WAIT = textwrap.dedent(
    r"""
    import os, signal, sys
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # die of Ctrl-C as a C program would
    n = 0
    for path in sys.argv[1:]:
        fd = os.open(path, os.O_RDONLY)
        while True:
            b = os.read(fd, 65537)
            if not b:
                break
            n += len(b)
    print(f"READ {n}", flush=True)
    signal.pause()
    """
)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_process_keeps_its_counts(run, cli, disk, tmp_path, sig):
    make_file(disk / "a", 3_000_017, seed=1)
    make_file(disk / "b", 123_457, seed=2)
    st = tmp_path / "st"
    st.mkdir()
    script = tmp_path / "reader.py"
    script.write_text(READ_AND_WAIT)
    p = run.popen([PY, script, disk / "a", disk / "b"], paths=str(disk.path),
                  env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")}, stdout=subprocess.PIPE)
    try:
        n = int(read_line(p.stdout, rb"READ (\d+)").group(1))
        os.kill(p.pid, sig)
        p.wait(timeout=60)
    finally:
        p.kill()
    assert p.returncode == -sig
    assert n == 3_000_017 + 123_457
    assert stats_files(st) == [], "a killed process writes no JSON"
    live = [f for f in os.listdir(st) if f.endswith(".live")]
    assert live == [f"s-{p.pid}.json.{live[0].split('.')[2]}.live"], os.listdir(st)
    merged = stats_json(run, cli, st)
    assert merged["read_bytes"] == n, merged
    assert merged["opens_direct"] == merged["opens_matched"] == 2, merged
    assert merged["unfinished"] == [p.pid], merged
    events = [(e["event"], e["pid"]) for e in load_index(st)]
    assert ("load", p.pid) in events and ("matched", p.pid) in events and ("exit", p.pid) not in events, events


# A pool of workers ended with terminate() (SIGTERM), as PyTorch ends DataLoader workers.
POOL = FDINFO_PY + textwrap.dedent(
    r"""
    import multiprocessing as mp, os, sys, time

    def read_all(path):
        return os.getpid(), read_whole(path)[1]

    def wait_forever(ready):
        open(f"{ready}.{os.getpid()}", "w").close()
        time.sleep(3600)

    if __name__ == "__main__":
        ctx = mp.get_context(sys.argv[1])
        ready = sys.argv[2]
        pool = ctx.Pool(3)
        got = pool.map(read_all, sys.argv[3:], chunksize=1)
        # every worker busy, then terminate(): SIGTERM to each, as a DataLoader ends its workers
        pool.map_async(wait_forever, [ready] * 3, chunksize=1)
        d, base = os.path.split(ready)
        while len([f for f in os.listdir(d) if f.startswith(base + ".")]) < 3:
            time.sleep(0.01)
        pool.terminate()
        pool.join()
        print(len({pid for pid, _ in got}), sum(n for _, n in got), flush=True)
    """
)


@pytest.mark.parametrize("start", ["fork", "forkserver", "spawn"])
def test_terminated_pool_workers_are_counted(run, cli, disk, tmp_path, start):
    files = [disk / f"shard{i}" for i in range(6)]
    sizes = [len(make_file(p, (i + 1) * 200_003, seed=i)) for i, p in enumerate(files)]
    script = tmp_path / "pool.py"
    script.write_text(POOL)
    st = tmp_path / "st"
    ready = tmp_path / "ready"
    r = run([cli, "run", "--paths", disk.path, "--stats", st, "--", PY, script, start, ready, *files], shim=False)
    assert r.returncode == 0, r.stderr
    workers, total = map(int, r.stdout.split())
    assert total == sum(sizes)
    merged = stats_json(run, cli, st)
    assert merged["read_bytes"] == total, merged
    assert merged["opens_direct"] == merged["opens_matched"] == len(files), merged
    assert len(merged["unfinished"]) == workers, f"every reader was killed by SIGTERM: {merged}"
    assert not stats_files(st), "a worker killed by SIGTERM writes no JSON; the parent read nothing"
    err = r.stderr.decode()
    assert f"working: {len(files)} of {len(files)} matched opens went direct" in err, err
    assert "did not exit normally" in err, err
    assert "no file" not in err and "never loaded" not in err, err


def test_ctrl_c_of_run_reports_what_went_direct(run, cli, disk, tmp_path):
    """Ctrl-C at a terminal: the command dies of SIGINT, run reports from the counters."""
    make_file(disk / "a", 2_000_003, seed=3)
    script = tmp_path / "reader.py"
    script.write_text(READ_AND_WAIT)
    st = tmp_path / "st"
    env = run.env_for(shim=False)
    pid, master = pty.fork()
    if pid == 0:  # the child: run on the terminal
        try:
            os.execve(cli, [cli, "run", "--paths", str(disk.path), "--stats", str(st), "--", PY, str(script),
                            str(disk / "a")], env)
        finally:
            os._exit(127)
    out = b""
    try:
        end = time.monotonic() + 60
        while b"READ " not in out and time.monotonic() < end:
            r, _, _ = select.select([master], [], [], 1)
            if r:
                out += os.read(master, 4096)
        n = int(re.search(rb"READ (\d+)", out).group(1))
        os.write(master, b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground group
        while True:
            r, _, _ = select.select([master], [], [], 60)
            if not r:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(master)
    text = out.decode(errors="replace")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGINT, (status, text)
    assert n == 2_000_003
    assert "working: 1 of 1 matched opens went direct" in text, text
    assert "read      1.9 MiB" in text, text
    assert "never loaded" not in text and "no process" not in text, text
    assert stats_json(run, cli, st)["read_bytes"] == n


# Two forked children and the parent read until a stop file appears.
JOB = textwrap.dedent(
    r"""
    import os, sys, time
    data, stop = sys.argv[1], sys.argv[2]
    kids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            kids = None
            break
        kids.append(pid)
    fd = os.open(data, os.O_RDONLY)
    while not os.path.exists(stop):
        os.pread(fd, 1 << 20, 0)
        time.sleep(0.005)
    if kids is None:
        os._exit(0)
    for k in kids:
        os.waitpid(k, 0)
    """
)


def test_top_shows_a_running_job_and_ends_with_it(run, cli, disk, tmp_path):
    make_file(disk / "data", 4 << 20, seed=5)
    st = tmp_path / "st"
    st.mkdir()
    # what top must skip without trusting it: a corrupt counters file, a FIFO, links
    (st / "s3dlio-1-1.vm.1.json.1.live").write_bytes(b"S3DLLIVE" + b"\xff" * 100)
    os.mkfifo(st / "s3dlio-1-1.vm.2.json.2.live")
    os.symlink("/etc/passwd", st / "s3dlio-1-1.vm.index.jsonl")
    script = tmp_path / "job.py"
    script.write_text(JOB)
    stop = tmp_path / "stop"
    job = subprocess.Popen([cli, "run", "--paths", disk / "data", "--stats", st, "--", PY, script, disk / "data", stop],
                           env=run.env_for(shim=False), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    top = subprocess.Popen([cli, "top", "--json", "--interval", "0.3", st], env=run.env_for(shim=False),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        good = None
        lines = 0
        end = time.monotonic() + 90
        while time.monotonic() < end:
            line = top.stdout.readline()
            if not line:
                break
            lines += 1
            obj = json.loads(line)
            procs = obj["processes"]
            if len(procs) == 3 and all(p["statistics"] and p["read_mbps"] > 0 for p in procs):
                good = obj
                break
        assert good is not None, f"no refresh showed three processes reading ({lines} lines)"
        assert good["total"]["processes"] == 3 and good["total"]["read_mbps"] > 0, good
        assert all(p["files"] == 1 and "pid" in p for p in good["processes"]), good
        stop.write_text("")
        job.wait(timeout=60)
        rest, err = top.communicate(timeout=60)
    finally:
        stop.write_text("")
        job.kill()
        top.kill()
    assert job.returncode == 0, job.stderr.read()
    assert top.returncode == 0, err
    last = json.loads(rest.splitlines()[-1])
    assert last["processes"] == [], "top ends when the job has ended"
    assert b"ignored" in err and b"S3DLLIVE" not in err, err


def test_corrupt_and_hostile_files_are_ignored_by_stats(run, cli, tmp_path):
    d = tmp_path / "st"
    d.mkdir()
    good = {"schema": 1, "version": "0", "pid": 10, "starttime": 5, "program": "p", "read_bytes": 1000,
            "fallbacks": {}}
    (d / "s-10.json").write_text(json.dumps(good))
    (d / "s-11.json").write_text('{"schema":1,"pid":11,"read_bytes":')
    (d / "s-12.json").write_text(json.dumps({**good, "pid": 12, "read_bytes": -1}))
    (d / "s-13.json.5.live").write_bytes(os.urandom(4096))
    os.mkfifo(d / "s-14.json.5.live")
    os.symlink("/etc/passwd", d / "s-15.json")
    theirs = d / "s-16.json"
    theirs.write_text(json.dumps({**good, "pid": 16}))
    if os.geteuid() == 0:
        os.chown(theirs, NOBODY, NOBODY)
    (d / "s-index.jsonl").write_text('{"s3dlio_index":1,"event":"load"}\nnot json\n')
    r = run([cli, "stats", "--json", d], shim=False, timeout=60)
    assert r.returncode == 1, r.stderr
    merged = json.loads(r.stdout)
    assert merged["pids"] == [10] and merged["read_bytes"] == 1000, merged
    err = r.stderr.decode()
    for name in ("s-11.json", "s-12.json", "s-13.json.5.live", "s-14.json.5.live", "s-15.json", "s-index.jsonl"):
        assert name in err, (name, err)
    if os.geteuid() == 0:
        assert "s-16.json: it belongs to uid 65534" in err, err


def _launch_after(run, argv, env, plant, user=None):
    """Starts argv in a child that waits until plant(pid, starttime) ran in the parent: the
    names the library will use depend on the child's pid and start time."""
    r_fd, w_fd = os.pipe()
    argv = run.argv(argv, user=user)
    full_env = run.env_for(shim=True, env=env, user=user)
    if user:
        moved = [f"{k}={full_env.pop(k)}" for k in list(full_env) if k == "LD_PRELOAD" or k.startswith("S3DLIO_DIRECT_")]
        i = argv.index("--")
        argv = argv[: i + 1] + ["env", *moved] + argv[i + 1:]
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w_fd)
            os.read(r_fd, 1)
            os.execvpe(argv[0], argv, full_env)
        finally:
            os._exit(127)
    os.close(r_fd)
    with open(f"/proc/{pid}/stat") as f:
        starttime = int(f.read().rsplit(")", 1)[1].split()[19])
    plant(pid, starttime)
    os.write(w_fd, b"x")
    os.close(w_fd)
    _, status = os.waitpid(pid, 0)
    return pid, starttime, status


@pytest.mark.parametrize("victim", ["root", "nobody"])
def test_links_planted_in_a_shared_directory_are_never_followed(run, cli, disk, tmp_path, victim):
    """A directory another user owns and everyone may write (sticky): links planted at every
    name the library creates or appends to leave their targets untouched."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as two users")
    attacker = NOBODY if victim == "root" else 0
    owner = 0 if victim == "root" else NOBODY
    make_file(disk / "data", 1_000_003, seed=7)
    os.chmod(disk / "data", 0o644)
    shared = disk.path / "shared"
    shared.mkdir()
    os.chown(shared, attacker, attacker)
    os.chmod(shared, 0o1777)
    targets = disk.path / "targets"
    targets.mkdir(mode=0o755)
    os.chmod(targets, 0o755)
    planted = {}

    def plant(pid, start):
        names = [f"s-{pid}.json", f"s-{pid}.json.tmp{pid}", f"s-{pid}.json.{start}.live",
                 f"s-{pid}.json.{start}.live.tmp{pid}", "s-index.jsonl", "log"]
        for i, name in enumerate(names):
            t = targets / f"victim{i}"
            t.write_text("precious\n")
            os.chown(t, owner, owner)
            os.chmod(t, 0o644)
            os.symlink(t, shared / name)
            os.lchown(shared / name, attacker, attacker)
            planted[name] = t

    env = {"S3DLIO_DIRECT_PATHS": str(disk / "data"), "S3DLIO_DIRECT_STATS": str(shared / "s-%p.json"),
           "S3DLIO_DIRECT_LOG_FILE": str(shared / "log"), "S3DLIO_DIRECT_LOG": "info"}
    pid, _start, status = _launch_after(run, [bin_path("loader"), disk / "data"], env, plant,
                                        user="nobody" if victim == "nobody" else None)
    assert os.waitstatus_to_exitcode(status) == 0
    for name, t in planted.items():
        assert t.read_text() == "precious\n", f"{name}: the link's target was written"
        assert os.stat(t).st_uid == owner
    for name in os.listdir(shared):
        p = shared / name
        if not p.is_symlink():
            assert p.stat().st_uid == (0 if victim == "root" else NOBODY), name
            assert p.stat().st_mode & 0o077 == 0, f"{name} is readable by others"


def test_exec_ignores_corrupt_and_foreign_predecessor_files(run, cli, disk, tmp_path):
    """The image after an exec continues its predecessor's counters only from files that are
    this user's and what the library writes: a corrupt counters file and someone else's
    statistics file with the right pid and start time are ignored."""
    data = make_file(disk / "data", 777_777, seed=9)
    st = disk.path / "st"
    st.mkdir()
    os.chmod(st, 0o1777)
    reader = tmp_path / "r.py"
    reader.write_text("import os,sys\nfd=os.open(sys.argv[1],0)\nn=0\nwhile True:\n b=os.read(fd,65536)\n"
                      " if not b: break\n n+=len(b)\nprint(n)\n")

    def plant(pid, start):
        (st / f"s-{pid}.json.{start}.live").write_bytes(b"S3DLLIVE" + os.urandom(4088))
        foreign = st / f"s-{pid}.json"
        foreign.write_text(json.dumps({"schema": 1, "version": "0", "pid": pid, "starttime": start, "program": "x",
                                       "read_bytes": 10**12, "fallbacks": {}}))
        if os.geteuid() == 0:
            os.chown(foreign, NOBODY, NOBODY)
        else:  # a corrupt file of ours instead
            foreign.write_text('{"schema":1,"pid":' + str(pid))

    env = {"S3DLIO_DIRECT_PATHS": str(disk / "data"), "S3DLIO_DIRECT_STATS": str(st / "s-%p.json")}
    pid, start, status = _launch_after(run, [PY, reader, disk / "data"], env, plant)
    assert os.waitstatus_to_exitcode(status) == 0
    objs = [json.loads((st / f).read_text()) for f in stats_files(st)]
    assert [o["pid"] for o in objs] == [pid], objs
    assert objs[0]["read_bytes"] == len(data), objs
    assert objs[0]["starttime"] == start
    assert os.stat(st / f"s-{pid}.json").st_uid == os.geteuid()


def test_wrapper_scripts_leave_index_lines_and_one_statistics_file(run, cli, disk, tmp_path):
    data = make_file(disk / "data", 500_001, seed=11)
    w2 = tmp_path / "w2.sh"
    w2.write_text(f'#!/bin/bash\nexec {PY} -c "import os,sys; fd=os.open(sys.argv[1],0); '
                  f'print(len(os.read(fd, 1<<20)))" "$@"\n')
    w1 = tmp_path / "w1.sh"
    w1.write_text(f'#!/bin/bash\n/bin/true\nexec bash {w2} "$@"\n')
    for w in (w1, w2):
        os.chmod(w, 0o755)
    st = tmp_path / "st"
    r = run([cli, "run", "--paths", disk / "data", "--stats", st, "--", w1, disk / "data"], shim=False)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == len(data)
    files = stats_files(st)
    assert len(files) == 1, files
    [obj] = [json.loads((st / f).read_text()) for f in files]
    assert obj["program"].startswith("python") and obj["read_bytes"] == len(data), obj
    lines = load_index(st)
    loads = [e for e in lines if e["event"] == "load" and e["pid"] == obj["pid"]]
    assert [e["program"] for e in loads][:2] == ["w1.sh", "w2.sh"] or len(loads) >= 3, lines
    assert loads[-1]["program"].startswith("python"), loads
    assert any(e["event"] == "fork" for e in lines), "bash forks for /bin/true: the child is in the index"
    assert not [f for f in os.listdir(st) if f.endswith(".live")], "normal exits leave no counters file"
    err = r.stderr.decode()
    assert "1 process with statistics" in err and "matched nothing: true" in err, err
