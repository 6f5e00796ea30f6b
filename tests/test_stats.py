"""S3DLIO_DIRECT_STATS: one JSON object per process, written at exit, at _exit and before
exec, atomically; %p/%h expansion, ".%p" appended without %p; a fork child starts from zero;
integer keys sum across processes. Numbers are checked against what the programs themselves
report (bytes they got) and against the kernel's fdinfo, not against the shim alone."""

import json
import os
import sys
import re
import socket

import pytest

from conftest import bin_path, fdinfo_of, is_direct, make_file, stats_files

INT_KEYS = [
    "opens_matched", "opens_direct", "opens_fallback", "read_calls", "read_bytes", "read_bounced_calls",
    "read_bounced_bytes", "write_calls", "write_bytes", "write_bounced_calls", "write_bounced_bytes",
    "einval_retries", "read_ahead_bytes", "read_device_bytes", "read_ahead_copied_bytes",
]


def load_all(d):
    out = {}
    for p in stats_files(d):
        with open(os.path.join(d, p)) as f:
            out[p] = json.load(f)
    return out


def check_schema(obj, pid=None):
    assert obj.get("schema") == 1, obj
    assert isinstance(obj.get("version"), str) and obj["version"], obj
    assert isinstance(obj.get("pid"), int), obj
    if pid is not None:
        assert obj["pid"] == pid
    assert "program" in obj, "DESIGN.md lists a `program` key"
    for k in INT_KEYS:
        assert isinstance(obj.get(k), int) and not isinstance(obj.get(k), bool) and obj[k] >= 0, (k, obj.get(k))
    assert isinstance(obj.get("fallbacks"), dict), obj
    for k, v in obj["fallbacks"].items():
        assert isinstance(k, str) and isinstance(v, int) and v >= 0, (k, v)


def setup(fs, size=1048576 + 7):
    d = fs.new_dir("data")
    st = fs.new_dir("stats")
    make_file(d / "f", size)
    return d, st


def test_keys_pid_suffix_and_counts(run, strict_fs):
    d, st = setup(strict_fs)
    r = run([bin_path("loader"), "-P", "-F", "-b", "4097", d / "f"], paths=str(d),
            env={"S3DLIO_DIRECT_STATS": str(st / "s.json")})
    assert r.returncode == 0, r.stderr
    pid = int(re.search(rb"PID (\d+)", r.stderr).group(1))
    files = stats_files(st)
    assert files == [f"s.json.{pid}"], f"without %p, '.%p' must be appended: {files}"
    obj = load_all(st)[f"s.json.{pid}"]
    check_schema(obj, pid)
    m = re.search(rb"bytes=(\d+) fnv=\w+ calls=(\d+)", r.stdout)
    got, calls = int(m.group(1)), int(m.group(2))
    assert obj["read_bytes"] == got == 1048583
    assert calls - 1 <= obj["read_calls"] <= calls
    assert is_direct(fdinfo_of(r.stderr, str(d / "f")))
    assert obj["opens_matched"] == 1 and obj["opens_direct"] == 1 and obj["opens_fallback"] == 0, obj
    # a 4097-byte buffer at +1: every byte is copied, out of read-ahead windows (the first
    # read, at the start of the file, is one) or bounced
    assert obj["read_bounced_calls"] <= obj["read_calls"]
    assert obj["read_bounced_bytes"] + obj["read_ahead_copied_bytes"] == obj["read_bytes"], obj
    assert obj["read_ahead_copied_bytes"] > 0, obj
    assert obj["write_calls"] == obj["write_bytes"] == 0


def test_aligned_reads_are_not_bounced(run, strict_fs):
    # read-ahead off: an aligned buffer, offset and length go straight to the kernel
    d, st = setup(strict_fs, size=4 * 1048576)
    r = run([bin_path("loader"), "-m", "aligned", "-b", "1048576", d / "f"], paths=str(d),
            env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json"), "S3DLIO_DIRECT_READAHEAD": "0"})
    assert r.returncode == 0
    [obj] = load_all(st).values()
    assert obj["read_bytes"] == 4 * 1048576
    assert obj["read_bounced_calls"] == 0 and obj["read_bounced_bytes"] == 0, (
        "aligned buffer, offset and length must go straight to the kernel", obj)


def test_aligned_sequential_reads_are_read_ahead(run, strict_fs):
    # with the defaults a sequential aligned reader is served from read-ahead windows after its
    # first read (a large aligned one goes straight to the kernel: no window for it),
    # each byte read from the device once (large aligned reads out of sequence: unit tests)
    d, st = setup(strict_fs, size=4 * 1048576)
    plain = run([bin_path("loader"), "-m", "aligned", "-b", "1048576", d / "f"], shim=False)
    r = run([bin_path("loader"), "-m", "aligned", "-b", "1048576", d / "f"], paths=str(d),
            env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert r.returncode == 0 and r.stdout == plain.stdout
    [obj] = load_all(st).values()
    assert obj["read_bytes"] == 4 * 1048576
    assert obj["read_ahead_bytes"] == 3 * 1048576, obj
    assert obj["read_device_bytes"] == 4 * 1048576, obj
    assert obj["read_ahead_copied_bytes"] == 3 * 1048576, obj
    assert obj["read_bounced_bytes"] == 0, "copies out of windows are not bounces"


def test_write_counts(run, strict_fs):
    d, st = setup(strict_fs)
    r = run([bin_path("writer"), "-s", "3145733", "-c", "1000,4097,1048579", d / "w"], paths=str(d),
            env={"S3DLIO_DIRECT_STATS": str(st / "w-%p.json")})
    assert r.returncode == 0 and b"wrote=3145733" in r.stdout
    [obj] = load_all(st).values()
    check_schema(obj)
    assert obj["write_bytes"] == 3145733
    assert obj["write_calls"] >= 3145733 // 1048579
    # the writer's buffer is misaligned in memory: every byte has to be bounced
    assert 0 < obj["write_bounced_bytes"] <= 3145733
    assert obj["opens_direct"] == 1


def test_percent_p_and_h(run, strict_fs):
    d, st = setup(strict_fs)
    r = run([bin_path("loader"), "-P", d / "f"], paths=str(d), env={"S3DLIO_DIRECT_STATS": str(st / "x-%h-%p.json")})
    pid = int(re.search(rb"PID (\d+)", r.stderr).group(1))
    host = socket.gethostname()
    assert stats_files(st) == [f"x-{host}-{pid}.json"]
    logs = [n for n in os.listdir(st) if n.endswith(".files")]
    assert len(logs) == 1 and logs[0].startswith(f"x-{host}-{pid}.json."), logs
    assert sorted(set(os.listdir(st)) - set(logs)) == sorted([f"x-{host}-index.jsonl", f"x-{host}-{pid}.json"])


def test_no_temporary_files_left(run, strict_fs):
    d, st = setup(strict_fs)
    for _ in range(3):
        run([bin_path("loader"), d / "f"], paths=str(d), env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    names = stats_files(st)
    assert len(names) == 3 and all(re.fullmatch(r"s-\d+\.json", n) for n in names), names
    logs = [n for n in os.listdir(st) if n.endswith(".files")]
    assert len(logs) == 3, f"one files log per process: {logs}"
    assert sorted(set(os.listdir(st)) - set(logs)) == sorted(names + ["s-index.jsonl"]), \
        "no counters file after a normal exit"


@pytest.mark.parametrize("how", ["exit", "_exit"])
def test_fork_child_starts_from_zero(run, strict_fs, how):
    d, st = setup(strict_fs)
    r = run([bin_path("fdsem"), "statsfork", d / "f", how], paths=str(d),
            env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert r.returncode == 0, r.stderr
    parent = int(re.search(rb"PARENT (\d+)", r.stderr).group(1))
    child = int(re.search(rb"CHILD (\d+)", r.stderr).group(1))
    objs = load_all(st)
    assert f"s-{child}.json" in objs, f"the {how}() child wrote no statistics: {list(objs)}"
    c, p = objs[f"s-{child}.json"], objs[f"s-{parent}.json"]
    check_schema(c, child)
    check_schema(p, parent)
    assert c["read_bytes"] == 50001, c
    assert c["opens_matched"] == 1
    assert p["read_bytes"] == 100001 + 7, p
    assert p["opens_matched"] == 1


def test_written_before_exec(run, strict_fs):
    d, st = setup(strict_fs)
    # the static program the process becomes cannot load the shim: only the pre-exec file exists
    r = run([bin_path("fdsem"), "statsexec", d / "f", bin_path("writer_static"), "-s", "10", d.parent / "unmatched"],
            paths=str(d), env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert r.returncode == 0, r.stderr
    pid = int(re.search(rb"PID (\d+)", r.stderr).group(1))
    objs = load_all(st)
    assert list(objs) == [f"s-{pid}.json"], objs
    assert objs[f"s-{pid}.json"]["read_bytes"] == 100001


def test_sums_across_processes(run, strict_fs):
    d, st = setup(strict_fs)
    r = run([bin_path("conc"), "append-procs", d / "log", "4", "300", "999"], paths=str(d),
            env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")}, timeout=150)
    assert r.stdout.startswith(b"OK"), r.stdout
    objs = list(load_all(st).values())
    assert len(objs) == 5, f"a parent and four children: {len(objs)} files"
    size = (d / "log").stat().st_size
    assert sum(o["write_bytes"] for o in objs) == size
    assert sum(o["write_calls"] for o in objs) == 4 * 300
    assert sum(o["read_bytes"] for o in objs) == size  # the parent's verification read


def test_copy_file_range_counts_read_and_write(run, strict_fs):
    d, st = setup(strict_fs, size=1_000_003)
    r = run([bin_path("fdsem"), "cfr", d / "f", d / "g"], paths=str(d), env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert b"copied=1000003" in r.stdout, r.stdout
    assert (d / "f").read_bytes() == (d / "g").read_bytes()
    [obj] = load_all(st).values()
    assert obj["read_bytes"] == 1_000_003 and obj["write_bytes"] == 1_000_003, obj


def test_ramfs_fallback_counted(run, ramfs):
    d, st = setup(ramfs)
    r = run([bin_path("loader"), "-F", "-b", "4097", d / "f"], paths=str(d),
            env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert r.returncode == 0
    assert not is_direct(fdinfo_of(r.stderr, str(d / "f")))
    [obj] = load_all(st).values()
    check_schema(obj)
    assert obj["opens_matched"] == 1 and obj["opens_direct"] == 0 and obj["opens_fallback"] == 1, obj
    assert sum(obj["fallbacks"].values()) >= 1, obj


def test_fdopen_streams_counted(run, strict_fs):
    """fdopen on a direct descriptor gives a stream the engine serves: counted, no fallback."""
    d, st = setup(strict_fs)
    r = run([bin_path("fdsem"), "reuse", d / "f", d.parent / "other"], paths=str(d),
            env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert r.returncode == 0, r.stderr
    [obj] = load_all(st).values()
    assert obj["streams_direct"] >= 2, f"fdopen on direct descriptors must give served streams: {obj}"
    assert sum(obj["fallbacks"].values()) == 0, obj


def test_freopen_onto_matched_file_counted(run, strict_fs):
    """freopen of glibc's own stdin onto a matched file stays buffered: counted as a fallback."""
    d, st = setup(strict_fs)
    code = f"import ctypes; c = ctypes.CDLL(None); c.freopen.restype = ctypes.c_void_p; " \
           f"c.freopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]; " \
           f"stdin = ctypes.c_void_p.in_dll(c, 'stdin'); assert c.freopen(b'{d / 'f'}', b'r', stdin)"
    r = run([sys.executable, "-c", code], paths=str(d), env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert r.returncode == 0, r.stderr
    [obj] = load_all(st).values()
    assert obj["fallbacks"]["fdopen_stream"] == 1, obj


def test_stats_as_nobody(run, strict_fs):
    d, st = setup(strict_fs)
    os.chmod(d / "f", 0o644)
    r = run([bin_path("loader"), "-b", "1000", d / "f"], paths=str(d), user="nobody",
            env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert r.returncode == 0, r.stderr
    [(name, obj)] = load_all(st).items()
    assert os.stat(st / name).st_uid == 65534
    assert obj["read_bytes"] == 1048583
