"""Read-ahead windows under real reading patterns, on the strict 4096-sector ext4.

Python runs under the shim and reads a file of many windows (1 MiB windows here, so a 24 MiB
file is 24 of them) in the ways loaders do: small reads, large reads into misaligned
buffers, one read of the whole file, random preads. The bytes must be the file's, the kernel
must hold none of it in its page cache afterwards, and the statistics must show that
sequential patterns were read ahead while random ones moved no more than they asked for.
A second test changes the file behind windows that were already read ahead, from another
descriptor of the process and from another process, and the reader must see the new bytes.
"""

import hashlib
import sys
import textwrap

import pytest

from conftest import cached_bytes, drop_cache, load_stats, make_file, stats_summary, stats_total

WINDOW = 1 << 20
SIZE = 24 * WINDOW + 12345

READER = textwrap.dedent("""
    import hashlib, os, random, sys
    path, pattern = sys.argv[1], sys.argv[2]
    h = hashlib.sha256()
    size = os.path.getsize(path)
    if pattern == "small":
        fd = os.open(path, os.O_RDONLY)
        while True:
            b = os.read(fd, 4096 + 7)
            if not b:
                break
            h.update(b)
        os.close(fd)
    elif pattern == "large_misaligned":
        # readinto a bytearray (malloc'd: never page aligned) of an odd size, as loaders do
        buf = bytearray(3 * 1048576 + 5)
        with open(path, "rb", buffering=0) as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(memoryview(buf)[:n])
    elif pattern == "whole":
        # one read of the whole file after a small header read, as numpy.load does
        with open(path, "rb", buffering=0) as f:
            h.update(f.read(128))
            h.update(f.read(size))
            assert f.read(1) == b""
    elif pattern == "random":
        fd = os.open(path, os.O_RDONLY)
        rng = random.Random(7)
        for _ in range(200):
            off = rng.randrange(0, size - 65536) // 4096 * 4096
            h.update(os.pread(fd, 65536, off))
        os.close(fd)
    print(h.hexdigest())
""")


def expected_digest(data: bytes, pattern: str) -> str:
    if pattern != "random":
        return hashlib.sha256(data).hexdigest()
    import random

    h = hashlib.sha256()
    rng = random.Random(7)
    for _ in range(200):
        off = rng.randrange(0, len(data) - 65536) // 4096 * 4096
        h.update(data[off:off + 65536])
    return h.hexdigest()


@pytest.mark.parametrize("pattern", ["small", "large_misaligned", "whole", "random"])
def test_patterns_read_the_files_bytes_and_leave_the_cache_empty(run, strict_fs, pattern):
    d = strict_fs.new_dir(f"ra-{pattern}")
    data = make_file(d / "data", SIZE, seed=11)
    drop_cache(d / "data")
    script = d / "reader.py"
    script.write_text(READER)
    st = d / "stats"
    st.mkdir()
    r = run([sys.executable, str(script), str(d / "data"), pattern], paths=str(d / "data"),
            env={"S3DLIO_DIRECT_READAHEAD": str(WINDOW), "S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert r.stdout.decode().strip() == expected_digest(data, pattern), f"{pattern}: bytes differ from the file's"
    stats = load_stats(st)
    ahead = stats_total(stats, "read_ahead_bytes")
    if pattern == "random":
        assert ahead == 0, f"random preads read ahead {ahead} bytes\n{stats_summary(stats)}"
    else:
        assert ahead > 0, f"{pattern}: no read-ahead\n{stats_summary(stats)}"
        # every window starts before end of file: at most the file rounded up to a window
        assert ahead <= SIZE + WINDOW, f"{pattern}: read ahead {ahead} bytes of a {SIZE}-byte file\n{stats_summary(stats)}"
    assert cached_bytes(d / "data") == 0, f"{pattern}: the page cache holds part of the file"


CHANGER = textwrap.dedent("""
    import os, subprocess, sys
    path = sys.argv[1]
    fd = os.open(path, os.O_RDONLY)
    first = os.read(fd, 4096)
    for _ in range(20):
        os.read(fd, 65536)  # sequential: windows are now read ahead of the offset
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    # another descriptor of this process overwrites bytes the windows already hold
    w = os.open(path, os.O_WRONLY)
    os.pwrite(w, b"A" * 5000, pos + 100000)
    os.close(w)
    os.lseek(fd, pos + 100000, os.SEEK_SET)
    got1 = os.read(fd, 5000)
    os.read(fd, 65536)
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    # another process, without the shim, overwrites further ahead and appends
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    subprocess.run([sys.executable, "-c",
                    "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); "
                    "os.pwrite(fd, b'B' * 7000, int(sys.argv[2])); "
                    "os.pwrite(fd, b'C' * 3000, os.fstat(fd).st_size); os.close(fd)",
                    path, str(pos + 200000)], env=env, check=True)
    os.lseek(fd, pos + 200000, os.SEEK_SET)
    got2 = os.read(fd, 7000)
    end = os.fstat(fd).st_size
    os.lseek(fd, end - 3000, os.SEEK_SET)
    got3 = os.read(fd, 10000)
    print(got1 == b"A" * 5000, got2 == b"B" * 7000, got3 == b"C" * 3000, len(first))
""")


def test_windows_read_ahead_never_hide_a_change(run, strict_fs):
    d = strict_fs.new_dir("ra-change")
    make_file(d / "data", SIZE, seed=12)
    script = d / "changer.py"
    script.write_text(CHANGER)
    st = d / "stats"
    st.mkdir()
    r = run([sys.executable, str(script), str(d / "data")], paths=str(d / "data"),
            env={"S3DLIO_DIRECT_READAHEAD": str(WINDOW), "S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert r.stdout.decode().split() == ["True", "True", "True", "4096"], (
        "a read after another writer's change returned the old bytes "
        f"(this descriptor's write, another process's write, append): {r.stdout.decode()!r}")
    stats = load_stats(st)
    assert stats_total(stats, "read_ahead_bytes") > 0, f"nothing was read ahead\n{stats_summary(stats)}"
