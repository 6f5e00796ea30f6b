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


MANY = textwrap.dedent("""
    import ctypes, hashlib, os, sys
    paths = sys.argv[1:]
    def aio_nr():
        with open("/proc/sys/fs/aio-nr") as f:
            return int(f.read())
    before = aio_nr()
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    h = [hashlib.sha256() for _ in fds]
    # all files open at once, each read a little at a time, round robin
    done = set()
    while len(done) < len(fds):
        for i, fd in enumerate(fds):
            if i in done:
                continue
            b = os.read(fd, 65536 + 3)
            if not b:
                done.add(i)
            h[i].update(b)
    during = aio_nr() - before
    for fd in fds:
        os.close(fd)
    print(during, *[x.hexdigest() for x in h])
""")

PER_CONTEXT = textwrap.dedent("""
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    def aio_nr():
        with open("/proc/sys/fs/aio-nr") as f:
            return int(f.read())
    ctx = ctypes.c_ulong(0)
    b = aio_nr()
    assert libc.syscall(206, 6, ctypes.byref(ctx)) == 0  # io_setup(6): what the engine asks for
    print(aio_nr() - b)
""")


def test_many_open_files_take_few_aio_contexts(run, strict_fs):
    """Windows come from a budget, and only a description with a window takes an AIO context:
    contexts count against the system's aio-max-nr, which other programs need too."""
    d = strict_fs.new_dir("ra-many")
    n, size = 40, 3 * WINDOW + 999
    datas = [make_file(d / f"f{i}", size, seed=100 + i) for i in range(n)]
    (d / "many.py").write_text(MANY)
    (d / "ctx.py").write_text(PER_CONTEXT)
    per = run([sys.executable, str(d / "ctx.py")], shim=False)
    assert per.returncode == 0, per.stderr.decode()
    per_ctx = int(per.stdout)
    # 8 MiB of pool: 6 MiB of window mappings of half a window each (two quarter windows), so
    # at most 12 descriptions hold windows at a time (each file's first window is read without
    # a context)
    r = run([sys.executable, str(d / "many.py"), *[str(d / f"f{i}") for i in range(n)]], paths=str(d),
            env={"S3DLIO_DIRECT_READAHEAD": str(WINDOW), "S3DLIO_DIRECT_POOL": str(8 << 20)})
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    during, *digests = r.stdout.decode().split()
    assert digests == [hashlib.sha256(x).hexdigest() for x in datas], "bytes differ"
    # other processes on the machine may take contexts too: allow a few
    assert int(during) <= (12 + 4) * per_ctx, (
        f"{n} open files took {int(during) // per_ctx} AIO contexts ({during} of aio-nr, {per_ctx} each)")


FORKER = textwrap.dedent("""
    import hashlib, os, sys
    fd = os.open(sys.argv[1], os.O_RDONLY)
    out = []
    for _ in range(30):
        out.append(hashlib.sha256(os.read(fd, 40000)).hexdigest()[:12])
    pid = os.fork()  # windows of the parent are in flight now
    if pid == 0:
        h = hashlib.sha256()
        for _ in range(30):
            h.update(os.read(fd, 50001))
        print("child", h.hexdigest()[:12], os.lseek(fd, 0, os.SEEK_CUR), flush=True)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    h = hashlib.sha256()
    while True:
        b = os.read(fd, 70000)
        if not b:
            break
        h.update(b)
    print("parent", " ".join(out), h.hexdigest()[:12], status)
""")


def test_fork_with_reads_in_flight(run, strict_fs):
    """A fork while windows are being read: the child continues on the shared offset with
    windows of its own, the parent after it; the bytes are those of a plain run."""
    d = strict_fs.new_dir("ra-fork")
    make_file(d / "data", SIZE, seed=13)
    (d / "forker.py").write_text(FORKER)
    plain = run([sys.executable, str(d / "forker.py"), str(d / "data")], shim=False)
    shimmed = run([sys.executable, str(d / "forker.py"), str(d / "data")], paths=str(d / "data"),
                  env={"S3DLIO_DIRECT_READAHEAD": str(WINDOW)})
    assert plain.returncode == 0 and shimmed.returncode == 0, shimmed.stderr.decode()[-2000:]
    assert shimmed.stdout == plain.stdout


MAPPER = textwrap.dedent("""
    import mmap, os, sys
    path = sys.argv[1]
    r = os.open(path, os.O_RDONLY)
    for _ in range(20):
        os.read(r, 65536)  # windows are read ahead of the offset now
    pos = os.lseek(r, 0, os.SEEK_CUR)
    w = os.open(path, os.O_RDWR)
    m = mmap.mmap(w, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    seen = []
    for k in range(3):
        at = pos + 300000 * (k + 1)
        m[at:at + 4000] = bytes([65 + k]) * 4000  # no msync: the page cache has it
        os.lseek(r, at, os.SEEK_SET)
        seen.append(os.read(r, 4000) == bytes([65 + k]) * 4000)
        for _ in range(10):
            os.read(r, 65536)
    print(*seen)
""")


def test_a_shared_mapping_is_never_hidden_by_windows(run, strict_fs):
    """Stores through a shared writable mapping of the file are seen by the next read()."""
    d = strict_fs.new_dir("ra-mmap")
    make_file(d / "data", SIZE, seed=14)
    (d / "mapper.py").write_text(MAPPER)
    r = run([sys.executable, str(d / "mapper.py"), str(d / "data")], paths=str(d / "data"),
            env={"S3DLIO_DIRECT_READAHEAD": str(WINDOW)})
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert r.stdout.decode().split() == ["True"] * 3, f"a read returned bytes older than the mapping's: {r.stdout!r}"
