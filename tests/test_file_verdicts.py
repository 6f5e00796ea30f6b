"""`run`'s summary names, per matched file, what happened to it, over every process of the
job (the files logs of the statistics directory, merged): a file read direct, one left
buffered on ramfs (which refuses O_DIRECT), one written through Linux AIO and raw system
calls (cached by I/O the library did not see), one read through np.memmap (mapped: bounded,
never "direct", with S3DLIO_DIRECT_MAP=cache; "mapped, direct" where the default serves the
mapping from the device), and one still open when the process execs; across a fork and an exec.
The verdicts are checked against the kernel's truth where it has one: the page cache of the
AIO file is empty afterwards, the mapped file was really mapped (its pages were cached
while the child read it)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from conftest import REPO, bin_path, cached_bytes, load_stats, make_file, stats_summary, stats_total

CLI = REPO / "target" / "release" / "s3dlio-direct"
MiB = 1 << 20

# parent: reads DIRECT whole and closes it, reads RAM, keeps OPEN open; a fork child maps
# MAPPED with np.memmap, sums it and leaves with _exit; then the parent execs rawio on AIO.
DRIVER = r"""
import os, sys
import numpy as np
direct, ram, kept, mapped, rawio, aio = sys.argv[1:]
def read_whole(fd):
    n = 0
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return n
        n += len(b)
for p in (direct, ram):
    fd = os.open(p, os.O_RDONLY)
    read_whole(fd)
    os.close(fd)
keep = os.open(kept, os.O_RDONLY)
read_whole(keep)
pid = os.fork()
if pid == 0:
    m = np.memmap(mapped, dtype=np.uint8, mode="r")
    total = int(m.sum(dtype=np.uint64))
    print("mapped sum", total, flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
sys.stdout.flush()
os.execv(rawio, [rawio, aio])
"""


def summary_lines(stderr: bytes) -> list[str]:
    return stderr.decode(errors="replace").splitlines()


def named(lines: list[str], label: str, path) -> list[str]:
    """The summary lines that name `path` under a verdict label."""
    return [l for l in lines if f" {label} " in l and (f" {path}:" in l or l.endswith(f" {path}"))]


@pytest.mark.parametrize("map_mode", ["cache", "default"])
def test_run_names_what_happened_to_each_file(run, strict_fs, ramfs, map_mode):
    assert CLI.is_file(), f"{CLI} is missing: build it with `make build`"
    d = strict_fs.new_dir("files")
    direct, kept, mapped, aio = d / "direct.bin", d / "kept.bin", d / "mapped.bin", d / "aio.bin"
    make_file(direct, 3 * MiB + 4096)
    make_file(kept, 2 * MiB)
    make_file(mapped, 4 * MiB)
    ram = ramfs / "ram.bin"
    make_file(ram, MiB + 7)
    st = d.parent / "st"
    r = run([str(CLI), "run", "--paths", f"{d}:{ramfs.path}", "--stats", str(st), "--",
             sys.executable, "-c", DRIVER, direct, ram, kept, mapped, bin_path("rawio"), aio], shim=False,
            env={"S3DLIO_DIRECT_MAP": "cache"} if map_mode == "cache" else None)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert b"mapped sum" in r.stdout and b"aio read match 1" in r.stdout, r.stdout
    lines = summary_lines(r.stderr)
    text = "\n".join(lines)

    # the kernel's side: what AIO and raw calls cached was dropped at the last close
    assert cached_bytes(aio) == 0, "the AIO file's pages were left in the page cache"

    # the mapping is direct by default where the process may have a userfaultfd (root here)
    stats = load_stats(st)
    served_direct = stats_total(stats, "map_direct_mappings") > 0
    if map_mode == "cache":
        assert not served_direct, stats_summary(stats)
    elif os.geteuid() == 0:
        assert served_direct, f"root may have a userfaultfd: the mapping must be direct\n{stats_summary(stats)}"
    files = [l for l in lines if l.strip().startswith("files ")]
    assert len(files) == 1, text
    assert ("1 mapped, direct" if served_direct else "1 mapped, bounded (not direct)") in files[0], text
    assert "buffered" in files[0] and "cached by I/O the library did not see" in files[0], text

    (dl,) = named(lines, "direct", direct)
    assert "read 3.0 MiB" in dl, dl
    (kl,) = named(lines, "direct", kept)  # open at exec: counted then
    assert "read 2.0 MiB" in kl, kl
    (rl,) = named(lines, "buffered", ram)
    assert "filesystem does not support O_DIRECT" in rl, rl
    (al,) = named(lines, "cached", aio)
    assert "cached by I/O the library did not serve" in al, al
    (ml,) = named(lines, "mapped", mapped)
    assert ("read from the device" if served_direct else "through the page cache") in ml, ml
    assert not named(lines, "direct", mapped), f"a mapped file called direct:\n{text}"
    verdict = [l for l in lines if l.strip().startswith("verdict ")]
    assert verdict and "partly:" in verdict[0] and "not direct" in verdict[0], text

    # stats --json lists every file with its verdict; bytes are the program's
    s = run([str(CLI), "stats", "--json", str(st)], shim=False)
    assert s.returncode == 0, s.stderr
    by = {f["path"]: f for f in json.loads(s.stdout)["files"]}
    assert by[str(direct)]["verdict"] == "direct" and by[str(direct)]["read"] == os.path.getsize(direct), by
    assert by[str(kept)]["verdict"] == "direct" and by[str(kept)]["read"] == os.path.getsize(kept), by
    assert by[str(ram)]["verdict"] == "buffered" and by[str(ram)]["fallbacks"] == {"fs_no_odirect": 1}, by
    assert by[str(aio)]["verdict"] == "cached_unseen" and by[str(aio)]["cached_unseen"] > 0, by
    if served_direct:
        assert by[str(mapped)]["verdict"] == "mapped_direct" and by[str(mapped)]["mapped_direct"] >= 1, by
    else:
        assert by[str(mapped)]["verdict"] == "mapped" and by[str(mapped)]["mapped"] >= 1, by
    # `stats DIR` names them the same way
    t = run([str(CLI), "stats", str(st)], shim=False)
    assert t.returncode == 0, t.stderr
    assert named(summary_lines(t.stdout), "mapped", mapped) and named(summary_lines(t.stdout), "cached", aio), t.stdout
    # one files log per process image that matched a file: the parent (python, then rawio
    # in the same pid and start time: one log) and the fork child
    logs = sorted(st.glob("*.files"))
    assert len(logs) == 2, logs



# the library's own small writes (write-behind keeps their pages cached for a while), then an
# exec with the description still open
WRITE_EXEC = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
for _ in range(300):
    os.write(fd, b"x" * 1000)
os.execv("/bin/true", ["true"])
"""

# writes the library cannot see (a raw pwrite64 system call), a fork child that exits with
# the description open, then the parent's own last close
RAW_FORK = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
buf = ctypes.create_string_buffer(b"y" * 300_000)
assert libc.syscall(18, fd, buf, 300_000, ctypes.c_long(0)) == 300_000  # SYS_pwrite64
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print(os.getpid(), pid)
os.close(fd)
"""


def test_the_librarys_own_pages_are_never_unseen(run, strict_fs):
    """What the library's small writes cached is its own, not I/O it could not see: an exec
    with the description still open does not count it as cached_unseen."""
    d, st = strict_fs.new_dir("data"), strict_fs.new_dir("stats")
    r = run([sys.executable, "-c", WRITE_EXEC, d / "out"], paths=str(d),
            env={"S3DLIO_DIRECT_STATS": st / "s-%p.json"})
    assert r.returncode == 0, r.stderr
    assert (d / "out").stat().st_size == 300_000
    objs = [json.loads(p.read_text()) for p in st.glob("s-*.json")]
    assert sum(o.get("write_bytes", 0) for o in objs) == 300_000, "the writes were not the library's"
    assert sum(o.get("cached_unseen_bytes", 0) for o in objs) == 0, [o.get("cached_unseen_bytes") for o in objs]


def test_a_fork_child_does_not_judge_its_parents_description(run, strict_fs):
    """Pages that I/O the library did not see cached through a description shared with a fork
    child are counted by the process whose last close it is (the parent), not by the child
    exiting with its copy."""
    d, st = strict_fs.new_dir("data"), strict_fs.new_dir("stats")
    r = run([sys.executable, "-c", RAW_FORK, d / "raw"], paths=str(d),
            env={"S3DLIO_DIRECT_STATS": st / "s-%p.json"})
    assert r.returncode == 0, r.stderr
    parent, child = (int(x) for x in r.stdout.split())
    by_pid = {o["pid"]: o for o in (json.loads(p.read_text()) for p in st.glob("s-*.json"))}
    assert by_pid.get(child, {}).get("cached_unseen_bytes", 0) == 0, by_pid.get(child)
    assert by_pid[parent].get("cached_unseen_bytes", 0) >= 300_000, by_pid[parent]
