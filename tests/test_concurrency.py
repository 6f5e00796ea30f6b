"""Concurrency through the shim (c-harness/conc.c): threads and processes writing interleaved
unaligned ranges that share sectors, O_APPEND from several processes, threads sharing one
description (offset atomicity), overlapping preads, fork while other threads do I/O.
conc verifies every byte itself; the summary must be "OK" and equal to the plain run's, and
the kernel must show O_DIRECT on the descriptor."""

import pytest

from conftest import assert_same_run, bin_path, fdinfo_of, is_direct

CASES = [
    # mode, args, timeout
    ("pwrite-threads", ["4", "1000", "4000"]),
    ("pwrite-threads", ["4", "513", "6000", "own"]),
    ("pwrite-threads", ["2", "4097", "1500"]),
    ("pwrite-procs", ["4", "1000", "4000"]),
    ("pwrite-procs", ["3", "777", "5000"]),
    ("append-procs", ["4", "400", "999"]),
    ("append-procs", ["3", "200", "5001"]),
    ("append-threads", ["4", "400", "1001"]),
    ("sharedfd-read", ["4", "1000", "5000"]),
    ("sharedfd-read", ["3", "4096", "800"]),
    ("sharedfd-write", ["4", "300", "1001"]),
    ("overlap-pread", ["4", "400"]),
    ("fork-storm", ["2", "150"]),
]


def _ids(c):
    return f"{c[0]}-{'-'.join(c[1])}"


def run_conc(run, fs, mode, args, direct_expected=True):
    dp = fs.new_dir("plain")
    ds = fs.new_dir("shim")
    env = {"HARNESS_FDINFO": "1"}
    plain = run([bin_path("conc"), mode, dp / "f", *args], shim=False, env=env, timeout=150)
    assert plain.returncode == 0 and plain.stdout.startswith(b"OK"), plain.stdout
    shimmed = run([bin_path("conc"), mode, ds / "f", *args], shim=True, paths=str(ds), env=env, timeout=150)
    assert shimmed.stdout.startswith(b"OK"), (
        f"{mode} {args} through the shim: {shimmed.stdout.decode(errors='replace')[:2000]}"
        f"\nstderr: {shimmed.stderr.decode(errors='replace')[-1500:]}"
    )
    assert_same_run(plain, shimmed, f"conc {mode}")
    fl = fdinfo_of(shimmed.stderr, "main")
    if direct_expected:
        assert is_direct(fl), f"the kernel shows no O_DIRECT on the shared descriptor (flags {fl:o})"
    else:
        assert not is_direct(fl)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_strict(run, strict_fs, case):
    run_conc(run, strict_fs, *case)


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c[0] in ("pwrite-procs", "append-procs", "sharedfd-read", "fork-storm")][:4],
    ids=_ids,
)
def test_disk(run, disk, case):
    run_conc(run, disk, *case)


@pytest.mark.parametrize("case", [("append-procs", ["3", "200", "999"]), ("pwrite-threads", ["3", "1000", "3000"])], ids=_ids)
def test_ramfs_fallback(run, ramfs, case):
    run_conc(run, ramfs, *case, direct_expected=False)


@pytest.mark.parametrize("case", [("append-procs", ["3", "300", "999"]), ("pwrite-procs", ["3", "1000", "3000"])], ids=_ids)
def test_strict_as_nobody(run, strict_fs, case):
    ds = strict_fs.new_dir("shim")
    r = run([bin_path("conc"), case[0], ds / "f", *case[1]], shim=True, paths=str(ds),
            env={"HARNESS_FDINFO": "1"}, user="nobody", timeout=150)
    assert r.returncode == 0 and r.stdout.startswith(b"OK"), r.stdout + r.stderr
    assert is_direct(fdinfo_of(r.stderr, "main"))


def test_mixed_shim_and_plain_processes(run, strict_fs):
    """Processes with and without the shim append to one file: nothing lost either way."""
    d = strict_fs.new_dir("mixed")
    f = d / "log"
    procs = []
    import subprocess

    # a shimmed and a plain writer running at the same time, each appending its own stream
    for i, shim in enumerate((True, False, True)):
        procs.append(run.popen([bin_path("writer"), "-a", "-n", "-S", str(10 + i), "-s", "2000001", "-c", "999,4097,1",
                                f], shim=shim, paths=str(d), stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        out, err = p.communicate(timeout=150)
        assert p.returncode == 0, out + err
    assert f.stat().st_size == 3 * 2000001


@pytest.mark.parametrize("pool", ["0", "64K", "1MiB"])
def test_small_bounce_pool(run, strict_fs, pool):
    """S3DLIO_DIRECT_POOL only bounds what is kept: reads larger than the pool, from several
    threads at once, still work."""
    ds = strict_fs.new_dir("shim")
    r = run([bin_path("conc"), "overlap-pread", ds / "f", "4", "200"], shim=True, paths=str(ds),
            env={"S3DLIO_DIRECT_POOL": pool, "HARNESS_FDINFO": "1"}, timeout=150)
    assert r.returncode == 0 and r.stdout.startswith(b"OK"), r.stdout + r.stderr[-1000:]
    assert is_direct(fdinfo_of(r.stderr, "main"))
    r = run([bin_path("conc"), "pwrite-threads", ds / "g", "4", "1000", "3000"], shim=True, paths=str(ds),
            env={"S3DLIO_DIRECT_POOL": pool}, timeout=150)
    assert r.returncode == 0 and r.stdout.startswith(b"OK"), r.stdout + r.stderr[-1000:]
