"""The test bed itself, without the shim: the filesystems have the rules the suite relies on,
and the harness programs are deterministic (two plain runs agree), so any difference a
shimmed run shows is the shim's."""

import os

import pytest

from conftest import bin_path, fdinfo_of, fnv1a, is_direct, make_file


def test_strict_fs_rejects_misalignment(plain_run, strict_fs):
    p = strict_fs / "f"
    make_file(p, 100_000)
    r = plain_run([bin_path("loader"), "-D", "-F", p], shim=False)
    assert b"error read EINVAL" in r.stdout, r.stdout
    assert is_direct(fdinfo_of(r.stderr, str(p)))
    # aligned memory and length, offset 512: still EINVAL (offset alignment is 4096)
    r = plain_run([bin_path("loader"), "-D", "-m", "aligned", "-b", "4096", "-o", "512", p], shim=False)
    assert b"error aligned EINVAL" in r.stdout, r.stdout
    r = plain_run([bin_path("loader"), "-D", "-m", "aligned", "-b", "4096", p], shim=False)
    assert f"bytes=100000 fnv={fnv1a(p.read_bytes()):016x}".encode() in r.stdout, r.stdout


def test_ramfs_rejects_o_direct(plain_run, ramfs):
    p = ramfs / "f"
    make_file(p, 1000)
    r = plain_run([bin_path("loader"), "-D", p], shim=False)
    assert b"error open EINVAL" in r.stdout
    # the O_CREAT|O_EXCL|O_DIRECT trap: the file is created, the open fails
    q = ramfs / "excl"
    with pytest.raises(OSError) as ei:
        os.open(q, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_DIRECT, 0o644)
    assert ei.value.errno == 22
    assert q.exists()


def test_tmpfs_accepts_any_alignment(plain_run, tmpfs):
    p = tmpfs / "f"
    data = make_file(p, 100_001)
    r = plain_run([bin_path("loader"), "-D", "-b", "1001", p], shim=False)
    assert f"bytes=100001 fnv={fnv1a(data):016x}".encode() in r.stdout, r.stdout


def test_disk_is_512_aligned(plain_run, disk):
    p = disk / "f"
    make_file(p, 100_000)
    r = plain_run([bin_path("loader"), "-D", "-m", "aligned", "-b", "512", "-o", "512", p], shim=False)
    assert b"bytes=99488" in r.stdout, r.stdout


@pytest.mark.parametrize("fs", ["strict_fs", "tmpfs", "ramfs", "disk"])
def test_diffseq_is_deterministic(plain_run, request, fs):
    m = request.getfixturevalue(fs)
    outs = []
    for i in range(2):
        d = m.new_dir(f"r{i}")
        make_file(d / "data", 300_001, seed=5)
        r = plain_run([bin_path("diffseq"), "7", d / "data", "250"], shim=False)
        assert r.returncode == 0, r.stderr
        outs.append((r.stdout, (d / "data").read_bytes()))
    assert outs[0] == outs[1]


def test_fortified_builds_agree(plain_run, strict_fs):
    outs = set()
    for b in ("diffseq", "diffseq_fortify", "diffseq_fortify64"):
        d = strict_fs.new_dir(b)
        r = plain_run([bin_path(b), "3", d / "data", "200"], shim=False)
        assert r.returncode == 0
        outs.add(r.stdout)
    assert len(outs) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["pwrite-threads", "4", "1000", "2000"],
        ["pwrite-procs", "3", "777", "2000"],
        ["append-procs", "4", "300", "999"],
        ["append-threads", "4", "300", "999"],
        ["sharedfd-read", "4", "1000", "3000"],
        ["sharedfd-write", "4", "300", "999"],
        ["overlap-pread", "3", "200"],
        ["fork-storm", "2", "50"],
    ],
    ids=lambda a: a[0],
)
def test_conc_plain_ok(plain_run, strict_fs, args):
    r = plain_run([bin_path("conc"), args[0], strict_fs / "c", *args[1:]], shim=False)
    assert r.returncode == 0 and r.stdout.startswith(b"OK"), r.stdout + r.stderr


def test_static_helpers_are_static():
    for b in ("loader_static", "writer_static"):
        with open(bin_path(b), "rb") as f:
            head = f.read(1 << 16)
        assert b"ld-linux" not in head, f"{b} is dynamically linked"
