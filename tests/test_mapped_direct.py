"""Mapped files, part 2 (issue 17): S3DLIO_DIRECT_MAP=direct serves read-only mappings of
matched files straight from the device (userfaultfd, O_DIRECT reads into the library's own
memory), with the page cache of the file sampled during the run at most 1% of it (or 64 KiB).

- c-harness/mapseq with read-only mappings (`ro`: the direct mode's kind) and writers opening
  the file between them: identical output and file with and without the library (what
  /proc/self/maps says of a direct mapping differs, and README says so);
- mapseq over a read-write descriptor: never direct (no read lease), bounded, counted;
- the loaders of part 1, direct, with their page cache sampled;
- fork children reading inherited mappings with the parent alive, exited and SIGKILLed, and a
  fork pool;
- a mapped page handed to write(2), send(2) and a write to a matched file, as root (direct) and
  as nobody (bounded, the reason counted);
- an lmdb reader mapping direct while a writer opens the database and commits: the reader
  sees the commits, never a torn value;
- what happens behind the hooks: a raw munmap (the library never maps over the program's new
  memory), a raw mremap (the moved mapping reads the file), a child made with _Fork (SIGSEGV,
  never other bytes); under a seccomp filter the mappings are bounded, the reason counted."""

import os
import subprocess
import sys
import time

import pytest

from conftest import assert_same_run, bin_path, drop_cache, fallback_total, load_stats, make_file, stats_summary, stats_total
from test_crash import crash_fs  # noqa: F401  (the fixture: a fresh ext4 that can be shut down)
from test_mapped import LOADER_CASES, LOADERS, MiB, run_sampled

DIRECT = {"S3DLIO_DIRECT_MAP": "direct"}


def cache_limit(size):
    return max(size // 100, 64 << 10)


def without_maps_lines(out: bytes) -> bytes:
    return b"\n".join(l for l in out.split(b"\n") if not l.startswith(b"maps slot"))


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_read_only_mapping_operations_are_the_kernels(run, strict_fs, seed):
    d = strict_fs.new_dir("seq")
    plain, shim, st = d / "plain", d / "shim", strict_fs.new_dir("stats")
    make_file(plain, 24 * MiB + 1234, seed=seed)
    make_file(shim, 24 * MiB + 1234, seed=seed)
    argv = lambda f: [bin_path("mapseq"), seed, f, 400, "ro"]
    a = run(argv(plain), shim=False)
    b = run(argv(shim), shim=True, paths=str(shim),
            env={**DIRECT, "S3DLIO_DIRECT_MAP_BUDGET": "2MiB", "S3DLIO_DIRECT_STATS": st / "s-%p.json"})
    assert a.returncode == 0, a.stderr
    out = a.stdout.decode()
    assert all(w in out for w in ("SIGBUS", "child-read", "mremap", "send(", "ftruncate", "madvise", "mprotect")), (
        "the sequence must reach every kind of step")
    a.stdout, b.stdout = without_maps_lines(a.stdout), without_maps_lines(b.stdout)
    assert_same_run(a, b, f"mapseq ro seed {seed}", compare_stderr=True)
    assert plain.read_bytes() == shim.read_bytes(), "the files differ after the same pwrites and truncates"
    stats = load_stats(st)
    assert stats_total(stats, "map_direct_mappings") > 0, stats_summary(stats)
    assert stats_total(stats, "map_direct_read_bytes") > 0, stats_summary(stats)
    assert stats_total(stats, "map_direct_converted") > 0, (
        f"writers opened the file beside direct mappings: they must have been converted\n{stats_summary(stats)}")


def test_a_file_open_for_writing_is_bounded_not_direct(run, strict_fs):
    """mapseq maps through a read-write descriptor: no read lease can be had, so every mapping
    is part 1's (identical output, /proc/self/maps included), counted as map_writer."""
    d = strict_fs.new_dir("seq")
    plain, shim, st = d / "plain", d / "shim", strict_fs.new_dir("stats")
    make_file(plain, 24 * MiB + 1234, seed=7)
    make_file(shim, 24 * MiB + 1234, seed=7)
    argv = lambda f: [bin_path("mapseq"), 7, f, 300]
    a = run(argv(plain), shim=False)
    b = run(argv(shim), shim=True, paths=str(shim),
            env={**DIRECT, "S3DLIO_DIRECT_MAP_BUDGET": "2MiB", "S3DLIO_DIRECT_STATS": st / "s-%p.json"})
    assert_same_run(a, b, "mapseq over a read-write descriptor", compare_stderr=True)
    assert plain.read_bytes() == shim.read_bytes()
    stats = load_stats(st)
    assert stats_total(stats, "map_direct_mappings") == 0, stats_summary(stats)
    assert fallback_total(stats, "map_writer") > 0, stats_summary(stats)


DIRECT_LOADERS = list(LOADER_CASES)


@pytest.mark.parametrize("kind,args", DIRECT_LOADERS, ids=[c[0] for c in DIRECT_LOADERS])
def test_loaders_read_direct(run, strict_fs, kind, args):
    d = strict_fs.new_dir("data")
    st = strict_fs.new_dir("stats")
    size = 96 * MiB
    path = d / ("db" if kind == "lmdb" else "data")
    subprocess.run([sys.executable, LOADERS, "make", kind, str(path), str(size)], check=True)
    files = [path / "data.mdb"] if kind == "lmdb" else [path]
    budget = 16 * MiB
    argv = [sys.executable, LOADERS, kind, path, *args]
    env = {**DIRECT, "S3DLIO_DIRECT_MAP_BUDGET": budget, "S3DLIO_DIRECT_STATS": st / "s-%p.json"}
    plain, ps = run_sampled(run, argv, False, None, files)
    shim, ss = run_sampled(run, argv, True, str(d), files, env)
    assert plain.returncode == 0, plain.stderr.decode()[-2000:]
    assert_same_run(plain, shim, kind)
    stats = load_stats(st)
    fsize = sum(os.path.getsize(f) for f in files)
    assert ps.peak > 4 * cache_limit(fsize), f"{kind}: the plain run cached only {ps.peak} bytes: the test proves nothing"
    assert ss.peak <= cache_limit(fsize), (
        f"{kind}: page cache of the mapped file during the direct run peaked at {ss.peak} bytes "
        f"({ss.samples} samples; limit {cache_limit(fsize)})\n{stats_summary(stats)}")
    assert stats_total(stats, "map_direct_mappings") > 0, stats_summary(stats)
    assert stats_total(stats, "map_direct_read_bytes") > 0, stats_summary(stats)


def test_a_fork_pool_maps_direct_in_each_worker(run, strict_fs):
    """Four fork workers each map the file (np.memmap, nanoGPT batches): each gets its own
    userfaultfd and handler, and the file's page cache stays empty."""
    d, st = strict_fs.new_dir("data"), strict_fs.new_dir("stats")
    path = d / "train.bin"
    subprocess.run([sys.executable, LOADERS, "make", "memmap-pool", str(path), str(128 * MiB)], check=True)
    argv = [sys.executable, LOADERS, "memmap-pool", path, "200"]
    plain, ps = run_sampled(run, argv, False, None, [path])
    shim, ss = run_sampled(run, argv, True, str(d), [path],
                           {**DIRECT, "S3DLIO_DIRECT_MAP_BUDGET": 8 * MiB, "S3DLIO_DIRECT_STATS": st / "s-%p.json"})
    assert plain.returncode == 0, plain.stderr.decode()[-2000:]
    assert_same_run(plain, shim, "memmap in a fork pool, direct")
    stats = load_stats(st, killed_writers=True)  # Pool's exit terminates its workers
    size = os.path.getsize(path)
    assert ps.peak > 4 * cache_limit(size), "the plain run cached almost nothing: the test proves nothing"
    assert ss.peak <= cache_limit(size), f"page cache peaked at {ss.peak} bytes\n{stats_summary(stats)}"
    assert stats_total(stats, "map_direct_mappings") >= 4, stats_summary(stats)


FORK_CHILD = r"""
import hashlib, mmap, os, signal, sys, time
path, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
f = open(path, 'rb')
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
head = hashlib.sha256(m[:1 << 20]).hexdigest()  # the parent fills some pages first
print('direct' if 'memfd:s3dlio-direct' in open('/proc/self/maps').read() else 'not direct', flush=True)
parent = os.getpid()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    os.read(r, 1)
    if mode != 'alive':
        for _ in range(3000):
            if os.getppid() != parent:
                break
            time.sleep(0.01)
        else:
            os._exit(3)
    h = hashlib.sha256(m[:]).hexdigest()
    with open(out + '.tmp', 'w') as o:
        o.write(h)
    os.rename(out + '.tmp', out)
    os._exit(0)
os.write(w, b'x')
if mode == 'alive':
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
if mode == 'killed':
    os.kill(os.getpid(), signal.SIGKILL)
os._exit(0)
"""


@pytest.mark.parametrize("mode", ["alive", "exited", "killed"])
def test_a_fork_child_reads_an_inherited_direct_mapping(run, strict_fs, mode):
    import hashlib
    d, st = strict_fs.new_dir("data"), strict_fs.new_dir("stats")
    path = d / "f"
    data = make_file(path, 32 * MiB + 100, seed=11)
    out = strict_fs.new_dir("out") / "child"
    drop_cache(path)
    r = run([sys.executable, "-c", FORK_CHILD, path, mode, out], paths=str(d),
            env={**DIRECT, "S3DLIO_DIRECT_MAP_BUDGET": "4MiB", "S3DLIO_DIRECT_STATS": st / "s-%p.json"})
    want = {"alive": 0, "exited": 0, "killed": -9}[mode]
    assert r.returncode == want, r.stderr.decode()[-2000:]
    for _ in range(600):
        if out.exists():
            break
        time.sleep(0.05)
    assert out.exists(), f"the child never wrote its digest (parent {mode})"
    assert out.read_text() == hashlib.sha256(data).hexdigest(), f"the child read other bytes (parent {mode})"
    assert r.stdout == b"direct\n", "the parent's mapping was not direct (its memfd is not in /proc/self/maps)"


SYSCALLS = r"""
import mmap, os, socket, sys
path, sink = sys.argv[1], sys.argv[2]
f = open(path, 'rb')
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
v = memoryview(m)
size = len(m)
out = []
# Pages no one touched yet: the kernel's own copy faults on them.
for i, (a, n) in enumerate([(5 << 20, 3000), ((9 << 20) + 4095, 60000), (size - 5000, 5000)]):
    r, w = os.pipe()
    k = os.write(w, v[a:a + n])
    got = os.read(r, 1 << 20)
    out.append(f"write(pipe) {i} = {k} {hash(bytes(got))}")
    os.close(r); os.close(w)
    s1, s2 = socket.socketpair()
    k = s1.send(v[(a + (1 << 20)) % size:(a + (1 << 20)) % size + 2000])
    got = s2.recv(4096)
    out.append(f"send {i} = {k} {hash(bytes(got))}")
    s1.close(); s2.close()
with open(sink, 'wb') as o:
    o.write(v[(13 << 20):(13 << 20) + (3 << 20) + 17])
del v
print('\n'.join(out))
"""


@pytest.mark.parametrize("user", [None, "nobody"])
def test_a_mapped_page_handed_to_a_system_call(run, strict_fs, user):
    """write(2) to a pipe, send(2) and a write to a matched file of pages not touched before:
    the kernel's own copy faults on them; as root they are served by the handler (never
    EFAULT), as nobody the mapping is bounded and the reason counted."""
    d, st = strict_fs.new_dir("data"), strict_fs.new_dir("stats")
    os.chmod(d, 0o777)
    path = d / "f"
    make_file(path, 24 * MiB + 321, seed=12)
    os.chmod(path, 0o644)
    results = []
    for shim in (False, True):
        sink = d / f"sink-{int(shim)}"
        env = {**DIRECT, "S3DLIO_DIRECT_MAP_BUDGET": "4MiB", "S3DLIO_DIRECT_STATS": st / "s-%p.json",
               "PYTHONHASHSEED": "0"}
        drop_cache(path)
        r = run(["/usr/bin/python3", "-c", SYSCALLS, path, sink], shim=shim, paths=str(d), user=user,
                env=env if shim else {"PYTHONHASHSEED": "0"})
        results.append(r)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert_same_run(results[0], results[1], f"system calls on mapped pages ({user or 'root'})")
    assert (d / "sink-0").read_bytes() == (d / "sink-1").read_bytes()
    stats = load_stats(st)
    if user is None:
        assert stats_total(stats, "map_direct_mappings") >= 1, stats_summary(stats)
    else:
        assert stats_total(stats, "map_direct_mappings") == 0, stats_summary(stats)
        assert fallback_total(stats, "map_privilege") >= 1, stats_summary(stats)


LMDB_READER = r"""
import lmdb, sys, time
env = lmdb.open(sys.argv[1], readonly=True, subdir=True, map_size=256 << 20)
open(sys.argv[2], 'w').close()  # mapped: the writer may start
bad = seen = 0
deadline = time.time() + 120
done = False
while time.time() < deadline and not done:
    with env.begin() as txn:
        done = txn.get(b'done') is not None
        for k, v in txn.cursor():
            if k.startswith(b'w'):
                seen += 1
                i = int(k[1:])
                bad += v != v[:14] * 200 or not v.startswith(b'%06d:' % i)
print(f"reader: {bad} torn values, saw the last commit: {done}, writer values seen: {seen > 0}", flush=True)
"""

LMDB_WRITER = r"""
import lmdb, sys
import numpy as np
env = lmdb.open(sys.argv[1], map_size=256 << 20, subdir=True)
rng = np.random.default_rng(5)
for t in range(int(sys.argv[2])):
    with env.begin(write=True) as txn:
        for i in rng.integers(0, 2000, 50):
            txn.put(b"w%06d" % i, (b"%06d:%06d;" % (i, t)) * 200)
with env.begin(write=True) as txn:
    txn.put(b'done', b'1')
env.close()
"""


def test_lmdb_writer_beside_a_direct_reader(run, strict_fs):
    """The reader maps the database first (direct: nobody writes it yet); the writer then opens
    it for writing and commits: the reader's mapping becomes the page cache's before the
    writer's open returns, so the reader sees every commit, never a torn value."""
    d, st = strict_fs.new_dir("lmdb"), strict_fs.new_dir("stats")
    db = d / "db"
    subprocess.run([sys.executable, LOADERS, "make", "lmdb", str(db), str(8 * MiB)], check=True)
    ready = d / "ready"
    env = {**DIRECT, "S3DLIO_DIRECT_MAP_BUDGET": "4MiB", "S3DLIO_DIRECT_STATS": st / "s-%p.json"}
    r = run.popen([sys.executable, "-c", LMDB_READER, db, ready], shim=True, paths=str(d), env=env,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for _ in range(600):
        if ready.exists():
            break
        time.sleep(0.05)
    w = run([sys.executable, "-c", LMDB_WRITER, db, "200"], shim=True, paths=str(d), env=env)
    out, err = r.communicate(timeout=300)
    assert w.returncode == 0 and r.returncode == 0, (w.stderr.decode()[-2000:], err.decode()[-2000:])
    assert out.decode().startswith("reader: 0 torn values, saw the last commit: True, writer values seen: True"), out
    stats = load_stats(st)
    assert stats_total(stats, "map_direct_mappings") >= 1, stats_summary(stats)
    assert stats_total(stats, "map_direct_converted") >= 1, (
        f"the writer's open must have turned the reader's mapping back\n{stats_summary(stats)}")


RAW_MUNMAP = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.syscall.restype = ctypes.c_long
libc.syscall.argtypes = [ctypes.c_long] + [ctypes.c_ulong] * 6
SYS_MMAP, SYS_MUNMAP = {"x86_64": (9, 11), "aarch64": (222, 215)}[os.uname().machine]
path, n = sys.argv[1], 8 << 20
fd = os.open(path, os.O_RDONLY)
p = libc.mmap(None, n, 1, 1, fd, 0)
ctypes.string_at(p, 4096)
print('direct' if 'memfd:s3dlio-direct' in open('/proc/self/maps').read() else 'not direct', flush=True)
# behind the hooks: the mapping goes, anonymous memory of the program's takes its place
libc.syscall(SYS_MUNMAP, p, n, 0, 0, 0, 0)
q = libc.syscall(SYS_MMAP, p, n, 3, 0x32, (1 << 64) - 1, 0)
assert q == p, (q, p)
ctypes.memset(p, 0xAB, n)
os.close(os.open(path, os.O_WRONLY))  # a writer: the library gives up the lease and converts
time.sleep(0.1)
print('intact' if ctypes.string_at(p, n) == b'\xab' * n else 'damaged', flush=True)
"""


def test_memory_behind_a_raw_munmap_is_not_mapped_over(run, strict_fs):
    """A direct mapping unmapped with a raw system call and its addresses reused for the
    program's anonymous memory: when a writer makes the library give the file's regions back
    to the page cache, it must not map the file over the program's memory (the kernel is asked
    first whether the range is still the library's memfd)."""
    d = strict_fs.new_dir("data")
    path = d / "f"
    make_file(path, 16 * MiB, seed=5)
    r = run([sys.executable, "-c", RAW_MUNMAP, path], paths=str(d), env=DIRECT)
    assert r.returncode == 0 and r.stdout == b"direct\nintact\n", (r.stdout, r.stderr.decode()[-2000:])


RAW_MREMAP = r"""
import ctypes, hashlib, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.syscall.restype = ctypes.c_long
libc.syscall.argtypes = [ctypes.c_long] + [ctypes.c_ulong] * 6
SYS_MREMAP = {"x86_64": 25, "aarch64": 216}[os.uname().machine]
path, n = sys.argv[1], 4 << 20
fd = os.open(path, os.O_RDONLY)
p = libc.mmap(None, n, 1, int(sys.argv[2]), fd, 0)
print(hashlib.sha256(ctypes.string_at(p, 1 << 20)).hexdigest())  # some pages filled, the rest not
maps = open('/proc/self/maps').read()
# behind the hooks: moved and grown to 12 MiB (MREMAP_MAYMOVE)
q = libc.syscall(SYS_MREMAP, p, n, 3 * n, 1, 0, 0)
assert q > 0, ctypes.get_errno()
print(hashlib.sha256(ctypes.string_at(q, 3 * n)).hexdigest())
print('direct' if 'memfd:s3dlio-direct' in maps else 'not direct', file=sys.stderr)
"""


@pytest.mark.parametrize("flags", [1, 2], ids=["shared", "private"])
def test_a_direct_mapping_moved_behind_the_hooks_reads_the_file(run, strict_fs, flags):
    """A raw mremap system call (no hook sees it) moves and grows a direct mapping: the moved
    range stays registered (UFFD_FEATURE_EVENT_REMAP), and the next touch there makes it the
    file mapping again: the bytes are the file's, never zeros."""
    d = strict_fs.new_dir("data")
    path = d / "f"
    make_file(path, 16 * MiB, seed=6)
    a = run([sys.executable, "-c", RAW_MREMAP, path, flags], shim=False)
    b = run([sys.executable, "-c", RAW_MREMAP, path, flags], paths=str(d), env=DIRECT)
    assert a.returncode == 0, a.stderr
    assert b.stderr.decode().strip().endswith("direct") and "not direct" not in b.stderr.decode(), b.stderr
    assert a.stdout == b.stdout, (a.stdout, b.stdout)


SECCOMP_EXEC = r"""
import ctypes, os, struct, sys
UFFD, IOCTL = {"x86_64": (323, 16), "aarch64": (282, 29)}[os.uname().machine]
EPERM = 0x00050000 | 1
ALLOW = 0x7fff0000
def ins(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)
# userfaultfd(2) and ioctl(USERFAULTFD_IOC_NEW) refused with EPERM, as container profiles do
prog = b"".join([
    ins(0x20, 0, 0, 0), ins(0x15, 0, 1, UFFD), ins(0x06, 0, 0, EPERM),
    ins(0x15, 0, 3, IOCTL), ins(0x20, 0, 0, 24), ins(0x15, 0, 1, 0xaa00), ins(0x06, 0, 0, EPERM),
    ins(0x06, 0, 0, ALLOW)])
buf = ctypes.create_string_buffer(prog)
fprog = struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))
fbuf = ctypes.create_string_buffer(fprog)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.prctl(22, 2, fbuf, 0, 0) == 0, ctypes.get_errno()
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_under_a_seccomp_filter_mappings_are_bounded_with_the_reason(run, strict_fs):
    """A seccomp filter refusing userfaultfd (as Docker's and Kubernetes' default profiles do):
    the same program gives the same bytes, its mappings bounded, counted as map_seccomp."""
    d, st = strict_fs.new_dir("data"), strict_fs.new_dir("stats")
    path = d / "f"
    make_file(path, 24 * MiB + 321, seed=13)
    sinks = [d / "sink-plain", d / "sink-shim"]
    argv = lambda sink: [sys.executable, "-c", SECCOMP_EXEC, "/usr/bin/python3", "-c", SYSCALLS, path, sink]
    a = run(argv(sinks[0]), shim=False, env={"PYTHONHASHSEED": "0"})
    b = run(argv(sinks[1]), paths=str(d),
            env={**DIRECT, "PYTHONHASHSEED": "0", "S3DLIO_DIRECT_STATS": st / "s-%p.json"})
    assert a.returncode == 0, a.stderr.decode()[-2000:]
    assert_same_run(a, b, "under seccomp")
    assert sinks[0].read_bytes() == sinks[1].read_bytes()
    stats = load_stats(st)
    assert stats_total(stats, "map_direct_mappings") == 0, stats_summary(stats)
    assert fallback_total(stats, "map_seccomp") >= 1, stats_summary(stats)


RAW_FORK = r"""
import ctypes, hashlib, mmap, os, sys
path = sys.argv[1]
f = open(path, 'rb')
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
m[:4096]  # the parent fills one page
want = hashlib.sha256(f.read(1 << 20)).hexdigest()
pid = ctypes.CDLL(None)._Fork()  # no at-fork handler runs: the library cannot fix the child up
if pid == 0:
    os._exit(0 if hashlib.sha256(m[:1 << 20]).hexdigest() == want else 7)
_, st = os.waitpid(pid, 0)
if os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0:
    print('child read the file')
elif os.WIFSIGNALED(st) and os.WTERMSIG(st) == 11:
    print('child got SIGSEGV')
else:
    print('child read other bytes', st)
"""


def test_a_child_made_without_fork_fails_loudly_never_with_other_bytes(run, strict_fs):
    """_Fork runs no at-fork handler: the child does not have the direct mapping's pages
    (MADV_DONTFORK) and gets SIGSEGV touching them, where the plain run's child reads the file;
    never bytes that are not the file's."""
    d = strict_fs.new_dir("data")
    path = d / "f"
    make_file(path, 8 * MiB, seed=14)
    a = run([sys.executable, "-c", RAW_FORK, path], shim=False)
    b = run([sys.executable, "-c", RAW_FORK, path], paths=str(d), env=DIRECT)
    assert a.stdout == b"child read the file\n", a.stdout
    assert b.stdout == b"child got SIGSEGV\n", (b.stdout, b.stderr.decode()[-2000:])


RAW_DOFORK = r"""
import ctypes, hashlib, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.syscall.argtypes = [ctypes.c_long] + [ctypes.c_ulong] * 3
SYS_MADVISE = {"x86_64": 28, "aarch64": 233}[os.uname().machine]
f = open(sys.argv[1], 'rb')
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
maps = open('/proc/self/maps').read()
line = next(l for l in maps.splitlines() if 'memfd:s3dlio-direct' in l)
lo, hi = (int(x, 16) for x in line.split()[0].split('-'))
assert libc.syscall(SYS_MADVISE, lo, hi - lo, 11) == 0  # MADV_DOFORK, behind the hooks
want = hashlib.sha256(f.read()).hexdigest()
pid = os.fork()
if pid == 0:
    os._exit(0 if hashlib.sha256(m[:]).hexdigest() == want else 7)
_, st = os.waitpid(pid, 0)
print('child', os.waitstatus_to_exitcode(st), 'parent', hashlib.sha256(m[:]).hexdigest() == want)
"""


def test_a_fork_child_with_the_memfd_mapping_inherited_reads_the_file(run, strict_fs):
    """MADV_DOFORK behind the hooks (a raw system call): the child inherits the memfd mapping,
    which no userfaultfd serves there; the library's fork handler maps the file over it before
    the child runs on, so neither the child nor the parent reads zeros."""
    d = strict_fs.new_dir("data")
    path = d / "f"
    make_file(path, 8 * MiB + 5, seed=15)
    r = run([sys.executable, "-c", RAW_DOFORK, path], paths=str(d), env=DIRECT)
    assert r.stdout == b"child 0 parent True\n", (r.stdout, r.stderr.decode()[-2000:])


LOCKED_READER = r"""
import ctypes, fcntl, os, sys, time
# libc's mmap, not Python's mmap module: that one maps a dup of the descriptor and closes it
# at close(), which drops the process's record locks without any library.
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size

def touch():
    a = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
    assert a not in (None, ctypes.c_void_p(-1).value)
    return a, ctypes.string_at(a + (1 << 20), 16)

a, first = touch()
direct = b'/memfd:s3dlio-direct' in open('/proc/self/maps', 'rb').read()
fcntl.lockf(fd, fcntl.LOCK_SH, 4096, 0)
libc.munmap(a, size)
# The handler gives a file no region maps any more back within a few milliseconds; mapping
# it again after the lock must not bring the library's descriptors of it back.
time.sleep(0.2)
a, again = touch()
libc.munmap(a, size)
time.sleep(0.2)
print('direct' if direct else 'bounded', first == again, flush=True)
sys.stdin.readline()  # the test looks at the lock meanwhile
"""


def test_a_record_lock_on_a_direct_mapped_file_survives_its_release(run, strict_fs):
    """sqlite maps a database read-only and locks it: the library's descriptors of a directly
    mapped file are closed before the first lock, never after (closing any descriptor of a file
    drops the process's locks on it), and the file is not made direct again."""
    import fcntl
    import struct

    d, st = strict_fs.new_dir("data"), strict_fs.new_dir("stats")
    path = d / "db"
    make_file(path, 8 * MiB, seed=5)
    drop_cache(path)
    env = run.env_for(shim=True, env={**DIRECT, "S3DLIO_DIRECT_STATS": str(st / "s-%p.json")}, paths=str(d))
    p = subprocess.Popen([sys.executable, "-c", LOCKED_READER, path], env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = p.stdout.readline().decode()
        fd = os.open(path, os.O_RDONLY)
        try:
            got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhxxxxqqixxxx", fcntl.F_WRLCK, 0, 0, 4096, 0))
        finally:
            os.close(fd)
        kind, _, _, _, pid = struct.unpack("hhxxxxqqixxxx", got)
        _, err = p.communicate(b"\n", timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err.decode()[-2000:]
    assert line.split() == ["direct", "True"], line
    assert kind != fcntl.F_UNLCK and pid == p.pid, "the reader's record lock is gone"
    stats = load_stats(st)
    assert stats_total(stats, "map_direct_mappings") == 1, stats_summary(stats)
    assert fallback_total(stats, "posix_locks") >= 1, stats_summary(stats)


@pytest.mark.parametrize("side", ["plain", "shim"])
def test_a_device_failing_under_a_direct_mapping_never_shows_other_bytes(run, crash_fs, tmp_path, side):
    """The filesystem is shut down (EXT4_IOC_SHUTDOWN: every read fails from then on) while a
    direct mapping of a file on it is half read: every page the program touches afterwards
    holds the file's bytes or faults, as in the plain run; a failed read into the library's
    memory is never mapped (the handler punches it out and gives the region back to the
    kernel, which answers with its own fault)."""
    d = crash_fs.mnt / "data"
    d.mkdir()
    st = tmp_path / "stats"  # not on the filesystem that is shut down
    st.mkdir()
    size = 48 * MiB + 1234
    shim = side == "shim"
    env = {**DIRECT, "S3DLIO_DIRECT_MAP_BUDGET": "8MiB", "S3DLIO_DIRECT_STATS": st / "s-%p.json"}
    p = run.popen([bin_path("mapshut"), d / "f", size, 7], shim=shim, paths=str(d) if shim else None,
                  env=env if shim else None, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline().strip() == b"ready", p.stderr.read()
        crash_fs.shutdown()
        out, err = p.communicate(b"go\n", timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, f"pages with other bytes after the device failed: {out!r} {err!r}"
    counts = dict(kv.split("=") for kv in out.decode().split())
    if shim:
        # ext4 refuses reads and new mappings after a shutdown, but a page fault on the
        # plain run's own mapping still reads the device: its pages keep their bytes where
        # the library's failed reads give a fault (README, "What differs").
        assert int(counts["bus"]) + int(counts["segv"]) > 0, f"no read failed: the case proves nothing ({out!r})"
        stats = load_stats(st)
        assert stats_total(stats, "map_direct_mappings") > 0, stats_summary(stats)
        assert stats_total(stats, "map_direct_converted") > 0, (
            f"the failed read must have given the region back\n{stats_summary(stats)}")
