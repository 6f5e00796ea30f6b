"""Processes sharing one open file description (issue #12, point 5): a shell redirect that
`make -j4`'s recipes inherit, O_APPEND logs, a forked writer pool. The kernel moves the
description's offset atomically for every write(2), so each record lands whole, exactly once,
and the file's size is the sum of the records: also under the library, also for records large
enough to go direct (up to 3 MiB; the library's write-behind size is 1 MiB).

The records are self-describing (c-harness/records.c: id, length, checksums of header and
payload); `records check` lists the whole ones in file order and every stretch that is not one,
`records plan` what each writer writes. Each case runs plainly and under the library (make,
its shells and the record writers all preloaded, the data directory matched), and both runs
must give the same multiset of records and the same size. Seeds pick the record sizes; the
failure messages name them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import SHIM_ENV, bin_path, cached_bytes, load_stats, stats_summary, stats_total

MAX = 3 * 1024 * 1024
TARGETS = 12  # make targets, each a writer of the shared log and one of the O_APPEND log
LOG_RECORDS = 8
APPLOG_RECORDS = 5


def plan(writer: int, count: int, seed: int) -> Counter:
    r = subprocess.run([bin_path("records"), "plan", str(writer), str(count), str(seed), str(MAX)],
                       capture_output=True, text=True, check=True)
    return Counter(tuple(int(x) for x in line.split()) for line in r.stdout.splitlines())


def records_in(path: Path) -> tuple[Counter, list[str], int]:
    """(Counter of (id, length) of the whole records, the 'bad' lines, the file's size)."""
    r = subprocess.run([bin_path("records"), "check", str(path)], capture_output=True, text=True, check=True)
    recs: Counter = Counter()
    bad: list[str] = []
    size = -1
    for line in r.stdout.splitlines():
        f = line.split()
        if f[0] == "rec":
            recs[(int(f[1]), int(f[2]))] += 1
        elif f[0] == "bad":
            bad.append(line)
        elif f[0] == "end":
            size = int(f[1])
    return recs, bad, size


def _ids(c: Counter) -> str:
    return ", ".join(f"{i >> 16}/{i & 0xFFFF} ({n} bytes)" + (f" x{k}" if k > 1 else "") for (i, n), k in sorted(c.items())[:12])


def assert_records(path: Path, expected: Counter, what: str):
    """Every expected record whole, exactly once, nothing else, size the sum of the lengths."""
    got, bad, size = records_in(path)
    want_size = sum(n * k for (_i, n), k in expected.items())
    problems = []
    if bad:
        problems.append(f"{len(bad)} stretches that are not whole records (torn or overwritten): {bad[:8]}")
    missing = expected - got
    extra = got - expected
    if missing:
        problems.append(f"{sum(missing.values())} records missing (writer/record): {_ids(missing)}")
    if extra:
        problems.append(f"{sum(extra.values())} records extra or repeated: {_ids(extra)}")
    if size != want_size:
        problems.append(f"size {size}, the records add up to {want_size}")
    if problems:
        raise AssertionError(f"{what}: {path}:\n  " + "\n  ".join(problems))
    return got, size


def _stats_env(d: Path) -> dict:
    return {"S3DLIO_DIRECT_STATS": str(d / "s-%p.json")}


def _assert_library_saw(stats_dir: Path, what: str, writes=True):
    stats = load_stats(stats_dir)
    summary = stats_summary(stats)
    assert stats, f"{what}: no process under the library wrote statistics"
    assert stats_total(stats, "opens_matched") > 0, f"{what}: the library matched no open of the data directory\n{summary}"
    if writes:
        assert stats_total(stats, "write_calls") > 0, f"{what}: the library served no write\n{summary}"
    return stats


MAKEFILE = """\
T := $(addprefix t,$(shell seq 1 {targets}))
.PHONY: all $(T)
all: $(T)
$(T): t%:
\t@$(BIN)/records emit $* {log} $(SEED) {max}
\t@$(BIN)/records emit $$(( $* + 100 )) {applog} $(SEED) {max} >> applog
"""


@pytest.mark.parametrize("seed", [1, 2])
def test_make_j4_through_one_redirect(run, strict_fs, seed):
    """`make -s -j4 > log` in the matched directory: every recipe writes records through the
    shell redirect make inherited (one description, no O_APPEND, shared by make, its shells and
    the writers) and through its own `>> applog` (O_APPEND descriptions, concurrently)."""
    expected_log = sum((plan(t, LOG_RECORDS, seed) for t in range(1, TARGETS + 1)), Counter())
    expected_app = sum((plan(t + 100, APPLOG_RECORDS, seed) for t in range(1, TARGETS + 1)), Counter())
    results = {}
    for side in ("plain", "shim"):
        d = strict_fs.new_dir(side)
        (d / "Makefile").write_text(MAKEFILE.format(targets=TARGETS, log=LOG_RECORDS, applog=APPLOG_RECORDS, max=MAX))
        sd = strict_fs.new_dir(f"stats-{side}")
        shim = side == "shim"
        what = f"make -j4 seed {seed} ({side}{' ' + str(SHIM_ENV) if shim and SHIM_ENV else ''})"
        r = run(["sh", "-c", f"make -s -j4 SEED={seed} BIN={Path(bin_path('records')).parent} > log"],
                shim=shim, paths=str(d) if shim else None, env=_stats_env(sd) if shim else None, cwd=str(d),
                timeout=300)
        assert r.returncode == 0, f"{what}: status {r.returncode}\nstderr: {r.stderr.decode(errors='replace')[-3000:]}"
        assert not r.stdout, f"{what}: unexpected stdout {r.stdout[:500]!r}"
        cached = (cached_bytes(d / "log"), cached_bytes(d / "applog"))  # before the check reads them
        log = assert_records(d / "log", expected_log, f"{what}: the shared redirect")
        app = assert_records(d / "applog", expected_app, f"{what}: the O_APPEND log")
        results[side] = (log, app)
        if shim:
            # the shells open the files; make and the writers they exec inherit plain buffered
            # descriptions the library leaves to the kernel
            stats = _assert_library_saw(sd, what, writes=False)
            print(f"{what}: cached_unseen_bytes {stats_total(stats, 'cached_unseen_bytes')}, "
                  f"write_calls {stats_total(stats, 'write_calls')}")
            print(f"{what}: page cache left: log {cached[0]} of {log[1]} bytes, applog {cached[1]} of {app[1]} bytes")
            # (applog's cache is only printed: its overlapping descriptions leave some of it
            # cached now and then, test_unseen_cache_of_overlapping_descriptions has that alone)
            assert cached[0] <= log[1] // 100, f"{what}: the library left {cached[0]} of {log[1]} bytes of log cached"
        for name in ("log", "applog"):  # room for the other run
            os.unlink(d / name)
    assert results["plain"] == results["shim"], f"seed {seed}: the plain and the library's run differ"


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("append", [False, True], ids=["no-append", "append"])
def test_forked_writers_share_one_description(run, strict_fs, append, seed):
    """A parent opens a matched file (with O_APPEND or without), writes a record, forks 4
    children that write 12 records each (random sizes up to 3 MiB, one write(2) each) through
    the inherited description, waits, and writes one more."""
    children, count = 4, 12
    expected = plan(0, 2, seed) + sum((plan(c, count, seed) for c in range(1, children + 1)), Counter())
    results = {}
    for side in ("plain", "shim"):
        d = strict_fs.new_dir(side)
        sd = strict_fs.new_dir(f"stats-{side}")
        shim = side == "shim"
        what = (f"forked writers {'with' if append else 'without'} O_APPEND seed {seed} "
                f"({side}{' ' + str(SHIM_ENV) if shim and SHIM_ENV else ''})")
        argv = [bin_path("records"), "fork", d / "out", str(children), str(count), str(seed), str(MAX)]
        if append:
            argv.append("append")
        r = run(argv, shim=shim, paths=str(d) if shim else None, env=_stats_env(sd) if shim else None, timeout=300)
        out = r.stdout.decode(errors="replace")
        assert r.returncode == 0 and "parent ok" in out, (
            f"{what}: status {r.returncode}\nstdout: {out}\nstderr: {r.stderr.decode(errors='replace')[-3000:]}")
        cached = cached_bytes(d / "out")  # before the check reads it
        results[side] = assert_records(d / "out", expected, what)
        if shim:
            stats = _assert_library_saw(sd, what)
            assert stats_total(stats, "opens_direct") > 0, f"{what}: the file did not go direct\n{stats_summary(stats)}"
            print(f"{what}: page cache left {cached} of {results[side][1]} bytes")
            assert cached <= results[side][1] // 100, f"{what}: {cached} of {results[side][1]} bytes left cached"
        os.unlink(d / "out")
    assert results["plain"] == results["shim"], f"seed {seed}: the plain and the library's run differ"


OVERLAP_PY = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def raw_write(fd, data):
    # a raw system call: I/O the library does not see, like Linux AIO or io_uring
    n = libc.syscall(1, fd, data, len(data))
    assert n == len(data), (n, ctypes.get_errno())
f = sys.argv[1]
b = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
raw_write(b, b"b" * (3 << 20))
a = os.open(f, os.O_WRONLY | os.O_APPEND)   # opened while b's pages are cached
os.close(b)                                  # b's last close drops them
raw_write(a, b"a" * (2 << 20))
os.close(a)                                  # a's last close must drop what a left
print("ok")
"""


def test_unseen_cache_of_overlapping_descriptions(run, strict_fs):
    """What `make -j4`'s concurrent `>> applog` descriptions do, in one process and in order:
    two descriptions of a matched file overlap, each writes through a raw system call (I/O the
    library cannot see), the first one's last close drops the cache, then the second writes and
    closes. After the last close nothing the library did not see may stay cached (issue #12,
    point 2), and all of it is counted in cached_unseen_bytes."""
    d = strict_fs.new_dir("data")
    sd = strict_fs.new_dir("stats")
    f = d / "applog"
    plain = run([sys.executable, "-c", OVERLAP_PY, d / "plain"], shim=False)
    assert plain.returncode == 0, plain.stderr
    assert cached_bytes(d / "plain") >= 5 << 20, "the plain run did not leave its writes cached: measurement broken?"
    r = run([sys.executable, "-c", OVERLAP_PY, f], paths=str(d), env=_stats_env(sd))
    assert r.returncode == 0 and r.stdout == plain.stdout, r.stderr
    assert f.stat().st_size == 5 << 20
    left = cached_bytes(f)
    stats = load_stats(sd)
    unseen = stats_total(stats, "cached_unseen_bytes")
    assert left <= (5 << 20) // 100, (
        f"{left} bytes of the file stay cached after the last close ({unseen} counted as cached_unseen_bytes): "
        f"the second description's raw writes were neither dropped nor counted, because its baseline "
        f"(pages cached when it was opened) was larger than what it left\n{stats_summary(stats)}")
    assert unseen >= 5 << 20, f"cached_unseen_bytes {unseen}, the raw writes cached {5 << 20}\n{stats_summary(stats)}"
