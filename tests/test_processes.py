"""Processes and threads through the shim (issue #3): the shim's state survives fork (a pool
of workers reading and writing inherited direct descriptors, some ending with _exit),
exec chains, vfork and posix_spawn, and Python multiprocessing workers with the fork and
spawn start methods. Statistics files of many processes do not overwrite each other, each
process (also one that ends with _exit) writes its own, and their counts add up to what
the programs report. Many threads on one descriptor lose no bytes (c-harness/mtstress.c).
Each case is compared with a plain run."""

import re
import sys
import textwrap

import pytest

from conftest import (
    _text,
    assert_same_run,
    bin_path,
    fdinfo_lines,
    is_direct,
    load_stats,
    make_file,
    stats_summary,
    stats_total,
)

CHILD_RE = re.compile(rb"^CHILD (\S+) pid=(\d+)(?: how=(\S+))? read=(\d+) wrote=(\d+)$", re.M)
PARENT_RE = re.compile(rb"^PARENT pid=(\d+) read=(\d+) wrote=(\d+)$", re.M)


def stats_by_pid(objs) -> dict:
    out = {}
    for name, o in objs.items():
        m = re.fullmatch(r"s-(\d+)\.json", name)
        assert m, f"unexpected file in the statistics directory: {name}"
        assert o.get("pid") == int(m.group(1)), f"{name} holds the statistics of pid {o.get('pid')}"
        out[int(m.group(1))] = o
    return out


def check_process_counts(by_pid, pid, read, wrote, what):
    assert pid in by_pid, (
        f"{what} (pid {pid}) wrote no statistics file; files: {sorted(by_pid)}\n{stats_summary(by_pid)}")
    o = by_pid[pid]
    assert o.get("read_bytes") == read and o.get("write_bytes") == wrote, (
        f"{what} (pid {pid}) read {read} and wrote {wrote} bytes of matched files; its statistics say "
        f"read_bytes={o.get('read_bytes')} write_bytes={o.get('write_bytes')}\n{stats_summary(by_pid)}")


# ------------------------------------------------------------------------- fork pool (C)


def _run_pair(run, fs, argv_of, timeout=150):
    """plain and shim runs of argv_of(dir) in fresh dirs; the shim one with per-process stats."""
    dp, ds, st = fs.new_dir("plain"), fs.new_dir("shim"), fs.new_dir("stats")
    plain = run(argv_of(dp), shim=False, timeout=timeout)
    shimmed = run(argv_of(ds), shim=True, paths=str(ds), timeout=timeout,
                  env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json"), "S3DLIO_DIRECT_LOG_FILE": str(fs.path / "shim.log")})
    return dp, ds, plain, shimmed, stats_by_pid(load_stats(st))


@pytest.mark.parametrize("workers,files", [(4, 9), (3, 3)])
def test_fork_pool(run, strict_fs, workers, files):
    argv = lambda d: [bin_path("forkpool"), "pool", d, workers, files]  # noqa: E731
    dp, ds, plain, shimmed, by_pid = _run_pair(run, strict_fs, argv)
    assert plain.returncode == 0 and b"OK workers" in plain.stdout, plain.stdout + plain.stderr
    assert_same_run(plain, shimmed, "forkpool pool")
    for k in range(files):
        assert (dp / f"out.{k}").read_bytes() == (ds / f"out.{k}").read_bytes()
    assert (dp / "shared").read_bytes() == (ds / "shared").read_bytes()

    fl = fdinfo_lines(shimmed.stderr)
    inherited = [(lab, f) for lab, _fd, f in fl if lab.startswith("child-inherited")]
    own = [(lab, f) for lab, _fd, f in fl if lab.startswith("child-own")]
    assert len(inherited) == len(own) == files
    notdirect = [lab for lab, f in inherited + own if not is_direct(f)]
    assert not notdirect, f"worker descriptors without O_DIRECT after fork: {notdirect}"
    assert is_direct(fdinfo_lines(shimmed.stderr)[0][2])

    # one statistics file per process; _exit()ed workers too; counts add up
    children = CHILD_RE.findall(shimmed.stderr)
    assert len(children) == workers, _text(shimmed.stderr)
    assert len(by_pid) == workers + 1, (
        f"a parent and {workers} workers: {workers + 1} statistics files expected, found {len(by_pid)}: "
        f"{sorted(by_pid)}")
    for w, pid, how, rd, wr in children:
        check_process_counts(by_pid, int(pid), int(rd), int(wr), f"worker {w.decode()} (ended with {how.decode()})")
    ppid, prd, pwr = PARENT_RE.search(shimmed.stderr).groups()
    check_process_counts(by_pid, int(ppid), int(prd), int(pwr), "the parent")
    for pid, o in by_pid.items():
        assert o.get("opens_direct", 0) >= 1, f"pid {pid} opened matched files but none direct\n{stats_summary(by_pid)}"


def test_posix_spawn_vfork_exec(run, strict_fs):
    argv = lambda d: [bin_path("forkpool"), "spawn", d, bin_path("forkpool")]  # noqa: E731
    dp, ds, plain, shimmed, by_pid = _run_pair(run, strict_fs, argv)
    assert plain.returncode == 0 and plain.stdout.rstrip().endswith(b"OK"), plain.stdout + plain.stderr
    assert_same_run(plain, shimmed, "forkpool spawn")
    for via in ("posix_spawn", "vfork", "fork-exec"):
        assert (dp / f"out.{via}").read_bytes() == (ds / f"out.{via}").read_bytes()
    fl = {lab: f for lab, _fd, f in fdinfo_lines(shimmed.stderr)}
    assert is_direct(fl["parent"]), f"parent's descriptor {fl['parent']:o}"
    for via in ("posix_spawn", "vfork", "fork-exec"):
        assert is_direct(fl[f"child-own-{via}"]), f"the {via} child's own open is not direct ({fl[f'child-own-{via}']:o})"
    children = CHILD_RE.findall(shimmed.stderr)
    assert len(children) == 3, _text(shimmed.stderr)
    assert len(by_pid) == 4, f"a parent and three children: {sorted(by_pid)}\n{stats_summary(by_pid)}"
    for via, pid, _how, rd, wr in children:
        o = by_pid.get(int(pid))
        assert o is not None, f"the {via.decode()} child (pid {pid.decode()}) wrote no statistics"
        # the inherited descriptor went buffered before the spawn: only its own open is
        # sure to be served by the engine
        own = 300007
        assert own <= o["read_bytes"] <= int(rd) and o["write_bytes"] == int(wr), (
            f"{via.decode()} child: reported read={rd.decode()} wrote={wr.decode()}\n{stats_summary(by_pid)}")


# ------------------------------------------------------------------------- threads


@pytest.mark.parametrize("args", [("4", "150", "4099"), ("3", "100", "513"), ("2", "60", "65539")],
                         ids=["4x150-rec4099", "3x100-rec513", "2x60-rec65539"])
def test_threads_one_descriptor(run, strict_fs, args):
    argv = lambda d: [bin_path("mtstress"), d / "f", *args]  # noqa: E731
    dp, ds, plain, shimmed, by_pid = _run_pair(run, strict_fs, argv)
    assert plain.returncode == 0 and plain.stdout.startswith(b"OK"), plain.stdout
    assert shimmed.stdout.startswith(b"OK"), f"mtstress through the shim: {_text(shimmed.stdout)[:3000]}"
    assert_same_run(plain, shimmed, "mtstress")
    assert (dp / "f").read_bytes() == (ds / "f").read_bytes()
    fl = fdinfo_lines(shimmed.stderr)
    assert is_direct(fl[0][2]), f"the shared descriptor has no O_DIRECT ({fl[0][2]:o})"
    m = re.search(rb"size=(\d+) read_bytes=(\d+) writes=\d+ write_bytes=(\d+)", shimmed.stdout)
    size, rd, wr = (int(x) for x in m.groups())
    [o] = by_pid.values()
    assert o["read_bytes"] == rd and o["write_bytes"] == size + wr, (
        f"threads read {rd} and wrote {size}+{wr} bytes\n{stats_summary(by_pid)}")


def test_threads_one_descriptor_disk(run, disk):
    argv = lambda d: [bin_path("mtstress"), d / "f", "3", "60", "4099"]  # noqa: E731
    _dp, _ds, plain, shimmed, _ = _run_pair(run, disk, argv)
    assert plain.stdout.startswith(b"OK") and shimmed.stdout.startswith(b"OK"), shimmed.stdout
    assert_same_run(plain, shimmed, "mtstress on disk")


# ------------------------------------------------------------------------- python multiprocessing

MP_SCRIPT = textwrap.dedent(
    r"""
    import hashlib, multiprocessing as mp, os, random, sys

    def work(k):
        D = sys.argv[1]
        h, n, parts = hashlib.sha256(), 0, []
        with open(f"{D}/in.{k}", "rb", buffering=0) as f:
            while True:
                b = f.read(4097 + 10 * k)
                if not b:
                    break
                h.update(b); n += len(b); parts.append(b)
        out = b"".join(parts)[::-1]
        with open(f"{D}/out.{k}", "wb", buffering=0) as f:
            for i in range(0, len(out), 65537):
                f.write(out[i:i + 65537])
        return k, os.getpid(), n, len(out), h.hexdigest()[:16]

    if __name__ == "__main__":
        D, method = sys.argv[1], sys.argv[2]
        sizes = [200003 + 40961 * k + (k % 3) * 4096 for k in range(8)]
        wrote = 0
        for k, s in enumerate(sizes):
            with open(f"{D}/in.{k}", "wb") as f:
                wrote += f.write(random.Random(k).randbytes(s))
        ctx = mp.get_context(method)
        pool = ctx.Pool(3)
        results = pool.map(work, range(8), chunksize=1)
        pool.close()   # workers end by themselves (fork: os._exit); terminate() would kill them
        pool.join()
        read = 0
        for k, pid, n, m, h in sorted(results):
            print(k, n, m, h)
            sys.stderr.write(f"WORKER {k} pid={pid} read={n} wrote={m}\n")
            with open(f"{D}/out.{k}", "rb") as f:
                back = f.read()
            read += len(back)
            print("verify", k, back == random.Random(k).randbytes(sizes[k])[::-1])
        sys.stderr.write(f"PARENT pid={os.getpid()} read={read} wrote={wrote}\n")
    """
)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_python_multiprocessing(run, strict_fs, tmp_path, method):
    script = tmp_path / "mp.py"
    script.write_text(MP_SCRIPT)
    argv = lambda d: [sys.executable, script, d, method]  # noqa: E731
    dp, ds, plain, shimmed, by_pid = _run_pair(run, strict_fs, argv)
    assert plain.returncode == 0 and b"verify 7 True" in plain.stdout, plain.stderr
    assert_same_run(plain, shimmed, f"multiprocessing {method}")
    assert b"False" not in shimmed.stdout
    workers = {}
    for k, pid, rd, wr in re.findall(rb"^WORKER (\d+) pid=(\d+) read=(\d+) wrote=(\d+)$", shimmed.stderr, re.M):
        w = workers.setdefault(int(pid), [0, 0])
        w[0] += int(rd)
        w[1] += int(wr)
    assert workers, _text(shimmed.stderr)
    ppid, prd, pwr = (int(x) for x in PARENT_RE.search(shimmed.stderr).groups())
    # every worker wrote its own file: fork workers end with os._exit
    for pid, (rd, wr) in workers.items():
        check_process_counts(by_pid, pid, rd, wr, f"{method} worker")
    check_process_counts(by_pid, ppid, prd, pwr, "the parent")
    # other processes (spawn's resource tracker) may have files of their own, with nothing
    # matched; the totals add up
    total_rd = prd + sum(w[0] for w in workers.values())
    total_wr = pwr + sum(w[1] for w in workers.values())
    assert stats_total(by_pid, "read_bytes") == total_rd and stats_total(by_pid, "write_bytes") == total_wr, (
        f"totals over {len(by_pid)} statistics files differ from read={total_rd} wrote={total_wr}\n"
        f"{stats_summary(by_pid)}")


# ------------------------------------------------------------------------- exec chain

EXEC_SCRIPT = textwrap.dedent(
    r"""
    import os, sys
    D, stage = sys.argv[1], int(sys.argv[2])
    def readall(fd, chunk):
        out = []
        while True:
            b = os.read(fd, chunk)
            if not b:
                return b"".join(out)
            out.append(b)
    if stage == 0:
        sys.stderr.write(f"PID {os.getpid()}\n")
        fd = os.open(f"{D}/a", os.O_RDONLY)
        first = b""
        while len(first) < 100001:
            first += os.read(fd, 100001 - len(first))
        w = os.open(f"{D}/out0", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(w, first[::-1]); os.close(w)
        os.set_inheritable(fd, True)
        print("stage 0", len(first)); sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, sys.argv[0], D, "1", str(fd), sys.argv[4]])
    elif stage == 1:
        fd = int(sys.argv[3])
        rest = readall(fd, 65537)          # the inherited description continues at 100001
        b = os.open(f"{D}/b", os.O_RDONLY)
        data = readall(b, 4097)
        w = os.open(f"{D}/out1", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(w, rest + data); os.close(w)
        print("stage 1", len(rest), len(data)); sys.stdout.flush()
        os.execv(sys.argv[4], [sys.argv[4], "-F", "-b", "4097", f"{D}/c"])
    """
)


def test_exec_chain(run, strict_fs, tmp_path):
    """python -> exec python (inherited descriptor) -> exec the C loader: one pid, one
    statistics file that folds in every image's counts."""
    script = tmp_path / "chain.py"
    script.write_text(EXEC_SCRIPT)
    sizes = {"a": 300007, "b": 123457, "c": 1000003}

    def argv(d):
        for i, (n, s) in enumerate(sizes.items()):
            make_file(d / n, s, seed=i + 60)
        return [sys.executable, script, d, "0", "-", bin_path("loader")]

    dp, ds, plain, shimmed, by_pid = _run_pair(run, strict_fs, argv)
    assert plain.returncode == 0, plain.stderr
    assert_same_run(plain, shimmed, "exec chain")
    for n in ("out0", "out1"):
        assert (dp / n).read_bytes() == (ds / n).read_bytes()
    fl = fdinfo_lines(shimmed.stderr)
    assert fl and is_direct(fl[-1][2]), f"the loader at the end of the chain: {fl}"
    pid = int(re.search(rb"PID (\d+)", shimmed.stderr).group(1))
    assert list(by_pid) == [pid], f"one process image after another, one pid: {sorted(by_pid)}"
    o = by_pid[pid]
    # the inherited descriptor went buffered at exec: its 199,906 bytes may or may not count
    least = 100001 + sizes["b"] + sizes["c"]
    assert least <= o["read_bytes"] <= least + sizes["a"] - 100001, (
        f"stage 0 read 100001 bytes, stage 1 {sizes['b']} (+ the inherited rest), the loader {sizes['c']}: "
        f"{stats_summary(by_pid)}")
    assert o["write_bytes"] == 100001 + sizes["a"] - 100001 + sizes["b"], stats_summary(by_pid)
