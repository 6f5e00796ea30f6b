"""Page cache: a file read (or written) through the shim leaves at most 1% of it cached
according to the kernel (fincore / mincore), where the same run without the shim caches
(nearly) all of it. Reads are also sampled while they run (cachestat): a cache filled and
dropped again at close would pass a look afterwards."""

import sys

import pytest

from conftest import assert_same_run, bin_path, cached_bytes, drop_cache, make_file
from mapsample import Sampler

SIZE = 48 * 1048576 + 4097
WRITE_BEHIND_PEAK = (8 + 1) * 1048576

READERS = {
    "loader-aligned-1MiB": lambda f: [bin_path("loader"), "-m", "aligned", "-b", "1048576", f],
    "loader-read-4097": lambda f: [bin_path("loader"), "-m", "read", "-b", "4097", f],
    "loader-pread-65537": lambda f: [bin_path("loader"), "-m", "pread", "-b", "65537", f],
    "loader-readv-300000": lambda f: [bin_path("loader"), "-m", "readv", "-b", "300000", f],
    "cat": lambda f: ["sh", "-c", f"cat {f} | md5sum"],
    "dd-bs1000": lambda f: ["sh", "-c", f"dd if={f} bs=1000 status=none | md5sum"],
    "python-read": lambda f: [sys.executable, "-c",
                              f"import hashlib; f=open('{f}','rb'); h=hashlib.md5()\n"
                              "while (b := f.read(100003)): h.update(b)\nprint(h.hexdigest())"],
    # the try-without-blocking-then-block pattern of event loops (fio's pvsync2 nowait, Samba):
    # RWF_NOWAIT left to the program's buffered descriptor would start read-ahead into the cache
    "python-preadv-nowait": lambda f: [sys.executable, "-c",
                                       f"import hashlib, os; fd=os.open('{f}', os.O_RDONLY); h=hashlib.md5()\n"
                                       "b=bytearray(262147); off=0\n"
                                       "while True:\n"
                                       "    try: n=os.preadv(fd, [b], off, os.RWF_NOWAIT)\n"
                                       "    except BlockingIOError: n=0\n"
                                       "    if n==0: n=os.preadv(fd, [b], off)\n"
                                       "    if n==0: break\n"
                                       "    h.update(b[:n]); off+=n\n"
                                       "print(h.hexdigest())"],
}


def _measure(run, cmd, f, shim, paths):
    drop_cache(f)
    before = cached_bytes(f)
    assert before <= SIZE // 100, f"could not drop the cache of {f} ({before} bytes stay cached)"
    with Sampler([f]) as s:
        r = run(cmd, shim=shim, paths=paths, timeout=180)
    assert r.returncode == 0, r.stderr
    return r, max(s.peak, cached_bytes(f))


# every reader on the strict filesystem, a few on the ordinary disk
READ_CASES = [(r, "strict_fs") for r in READERS] + [(r, "disk") for r in ("loader-aligned-1MiB", "loader-read-4097", "cat")]


@pytest.mark.parametrize("reader,fsname", READ_CASES, ids=[f"{r}-{f}" for r, f in READ_CASES])
def test_read_leaves_no_cache(run, request, fsname, reader):
    fs = request.getfixturevalue(fsname)
    d = fs.new_dir("data")
    f = d / "big"
    make_file(f, SIZE)
    cmd = READERS[reader](f)
    plain, plain_cached = _measure(run, cmd, f, False, None)
    shimmed, shim_cached = _measure(run, cmd, f, True, str(d))
    assert_same_run(plain, shimmed, reader)
    assert plain_cached >= SIZE * 0.9, f"the plain read cached only {plain_cached} of {SIZE} bytes: measurement broken?"
    assert shim_cached <= SIZE // 100, (
        f"{reader} through the shim had {shim_cached} bytes ({100 * shim_cached / SIZE:.1f}%) of the file cached, "
        "at its peak during the run or after it"
    )


@pytest.mark.parametrize("chunks", ["1048576", "1000,4097,1048579", "1048579", "4097"])
def test_write_leaves_no_cache(run, strict_fs, chunks):
    dp = strict_fs.new_dir("plain")
    ds = strict_fs.new_dir("shim")
    argv = lambda d: [bin_path("writer"), "-s", str(SIZE), "-c", chunks, d / "out"]  # noqa: E731
    p = run(argv(dp), shim=False, timeout=180)
    plain_cached = cached_bytes(dp / "out")
    with Sampler([ds / "out"]) as sampled:
        s = run(argv(ds), shim=True, paths=str(ds), timeout=180)
    shim_cached = cached_bytes(ds / "out")
    assert_same_run(p, s, f"writer chunks {chunks}")
    assert (dp / "out").read_bytes() == (ds / "out").read_bytes()
    assert plain_cached >= SIZE * 0.9, f"plain write cached only {plain_cached}"
    assert shim_cached <= SIZE // 100, (
        f"writing with chunks {chunks} through the shim left {shim_cached} bytes "
        f"({100 * shim_cached / SIZE:.1f}%) cached"
    )
    # small writes go through the page cache behind the program (README, Write-behind: about
    # 8 MiB at most, two 4 MiB ranges); a write of up to S3DLIO_DIRECT_WRITE_BEHIND on top
    assert sampled.peak <= WRITE_BEHIND_PEAK, (
        f"writing with chunks {chunks} through the shim had {sampled.peak} bytes cached at one moment "
        f"(at most {WRITE_BEHIND_PEAK} expected)"
    )


def test_cp_leaves_no_cache(run, strict_fs):
    """cp uses copy_file_range: neither the source nor the copy stays cached."""
    d = strict_fs.new_dir("data")
    make_file(d / "src", SIZE)
    drop_cache(d / "src")
    r = run(["cp", d / "src", d / "dst"], shim=True, paths=str(d), timeout=180)
    assert r.returncode == 0, r.stderr
    assert (d / "src").read_bytes() == (d / "dst").read_bytes()
    # (read_bytes above caches; measure a fresh copy)
    drop_cache(d / "src")
    r = run(["cp", d / "src", d / "dst2"], shim=True, paths=str(d), timeout=180)
    src_c, dst_c = cached_bytes(d / "src"), cached_bytes(d / "dst2")
    assert src_c <= SIZE // 100 and dst_c <= SIZE // 100, f"cp through the shim left src {src_c}, dst {dst_c} bytes cached"
