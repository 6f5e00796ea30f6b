"""Mapped files (issue 16): every mapping of a matched file keeps a bounded footprint in the
page cache (S3DLIO_DIRECT_MAP_BUDGET), and what the program can observe stays the kernel's.

- c-harness/mapseq: a seeded sequence of mapping operations, identical output (bytes, return
  values, errno, SIGBUS) and file with and without the library, with a budget so small that
  pages are given back during the run;
- real loaders (tests/maploaders.py: np.memmap scans and nanoGPT batches, also in a fork pool,
  safetensors, pyarrow, lmdb, pandas): identical results, and the page cache of their files,
  sampled every few ms with cachestat(2) from this process, within the budget;
- a mapping ten times the budget read at random and in order (no re-read in order), a budget
  of one page, and the process's RSS as without the library."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_same_run, bin_path, drop_cache, load_stats, make_file, pin_shim_env, stats_summary, stats_total
from mapsample import Sampler


@pytest.fixture(autouse=True)
def bounded_mode(run):
    """Part 1's mode, S3DLIO_DIRECT_MAP=cache, for every test here: the default serves
    read-only mappings direct where the process may (root here), which test_mapped_direct.py
    tests with these same cases."""
    yield from pin_shim_env(run, {"S3DLIO_DIRECT_MAP": "cache"})

LOADERS = str(Path(__file__).with_name("maploaders.py"))
CLI = Path(__file__).resolve().parents[1] / "target" / "release" / "s3dlio-direct"
MiB = 1 << 20


def run_sampled(run, argv, shim, paths, files, env=None, timeout=300):
    """Runs argv (plainly or under the library) with the page cache of `files` sampled
    while it runs; returns (CompletedProcess-like, Sampler, read_bytes of /proc/PID/io)."""
    for f in files:
        if Path(f).exists():
            drop_cache(f)
    with Sampler(files) as s:
        p = run.popen(argv, shim=shim, paths=paths, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(argv, p.returncode, out, err), s


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def assert_bounded(plain_s, shim_s, budget, what, stats):
    """The footprint sampled during the shim run stays near the budget (plus what the
    program reads between two of the reclaimer's measures), where the plain run's grows
    far past it."""
    assert plain_s.peak >= 3 * budget or plain_s.peak >= budget + 64 * MiB, f"{what}: the plain run cached only {plain_s.peak >> 20} MiB: the test proves nothing"
    p90 = percentile(shim_s.series, 0.9)
    assert p90 <= 1.5 * budget + 24 * MiB and shim_s.peak <= 0.75 * plain_s.peak, (
        f"{what}: page cache of the mapped files during the run: 90th percentile {p90 >> 20} MiB, peak "
        f"{shim_s.peak >> 20} MiB, with a budget of {budget >> 20} MiB (plain run: {plain_s.peak >> 20} MiB, "
        f"{shim_s.samples} samples)\n{stats_summary(stats)}")


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_mapping_operations_are_the_kernels(run, strict_fs, seed):
    d = strict_fs.new_dir("seq")
    plain, shim, st = d / "plain", d / "shim", strict_fs.new_dir("stats")
    make_file(plain, 24 * MiB + 1234, seed=seed)
    make_file(shim, 24 * MiB + 1234, seed=seed)
    argv = lambda f: [bin_path("mapseq"), seed, f, 400]
    a = run(argv(plain), shim=False)
    b = run(argv(shim), shim=True, paths=str(shim),
            env={"S3DLIO_DIRECT_MAP_BUDGET": "2MiB", "S3DLIO_DIRECT_STATS": st / "s-%p.json"})
    assert a.returncode == 0, a.stderr
    out = a.stdout.decode()
    assert all(w in out for w in ("SIGBUS", "child-read", "mremap", "maps slot", "send(", "ftruncate")), (
        "the sequence must reach every kind of step")
    assert_same_run(a, b, f"mapseq seed {seed}", compare_stderr=True)
    assert plain.read_bytes() == shim.read_bytes(), "the files differ after the same stores, pwrites and truncates"
    stats = load_stats(st)
    assert stats_total(stats, "map_mappings") > 0, stats_summary(stats)
    assert stats_total(stats, "map_given_back_bytes") > 0, (
        f"a budget of 2 MiB over a 24 MiB file must give pages back during the run\n{stats_summary(stats)}")


LOADER_CASES = [
    ("memmap-seq", []),
    ("memmap-batches", ["400"]),
    ("safetensors", []),
    ("arrow", []),
    ("parquet", []),
    ("lmdb", ["4000"]),
    ("csv", []),
]


@pytest.mark.parametrize("kind,args", LOADER_CASES, ids=[c[0] for c in LOADER_CASES])
def test_loader_footprint_stays_within_the_budget(run, strict_fs, kind, args):
    d = strict_fs.new_dir("data")
    st = strict_fs.new_dir("stats")
    size = 96 * MiB
    path = d / ("db" if kind == "lmdb" else "data")
    subprocess.run([sys.executable, LOADERS, "make", kind, str(path), str(size)], check=True)
    files = [path / "data.mdb"] if kind == "lmdb" else [path]
    budget = {"lmdb": 24 * MiB}.get(kind, 16 * MiB)
    argv = [sys.executable, LOADERS, kind, path, *args]
    env = {"S3DLIO_DIRECT_MAP_BUDGET": budget, "S3DLIO_DIRECT_STATS": st / "s-%p.json"}
    plain, ps = run_sampled(run, argv, False, None, files)
    shim, ss = run_sampled(run, argv, True, str(d), files, env)
    assert plain.returncode == 0, plain.stderr.decode()[-2000:]
    assert_same_run(plain, shim, kind)
    stats = load_stats(st)
    assert_bounded(ps, ss, budget, kind, stats)
    assert stats_total(stats, "map_mappings") > 0, stats_summary(stats)


def test_memmap_in_a_fork_pool(run, strict_fs):
    """Four fork workers map the file for every batch: each measures the file's page cache
    against its own budget, so the file's page cache stays within the four (README: a fork
    pool), and what they read is the plain run's. The pool's workers end by SIGTERM (Pool's
    exit terminates them): the mappings of all four are counted from the statistics that
    survive that (`stats --json` merges their live files)."""
    d, st = strict_fs.new_dir("data"), strict_fs.new_dir("stats")
    path = d / "train.bin"
    subprocess.run([sys.executable, LOADERS, "make", "memmap-pool", str(path), str(128 * MiB)], check=True)
    budget = 8 * MiB
    argv = [sys.executable, LOADERS, "memmap-pool", path, "300"]
    plain, ps = run_sampled(run, argv, False, None, [path])
    shim, ss = run_sampled(run, argv, True, str(d), [path],
                           {"S3DLIO_DIRECT_MAP_BUDGET": budget, "S3DLIO_DIRECT_STATS": st / "s-%p.json"})
    assert plain.returncode == 0, plain.stderr.decode()[-2000:]
    assert_same_run(plain, shim, "memmap in a fork pool")
    stats = load_stats(st, killed_writers=True)  # Pool's exit terminates its workers
    assert_bounded(ps, ss, 4 * budget, "memmap in a fork pool of 4", stats)
    merged = json.loads(run([str(CLI), "stats", "--json", str(st)], shim=False).stdout)
    assert merged["map_mappings"] >= 4 * 300, merged


def test_lmdb_writer_beside_a_reader(run, strict_fs):
    """An lmdb writer (MDB_WRITEMAP: a shared writable mapping) commits while a reader reads:
    the reader never sees a torn value, the database is the plain run's, and what the writer
    wrote through its mapping is written back and dropped at the end."""
    results = []
    for shim in (False, True):
        d = strict_fs.new_dir("lmdb-shim" if shim else "lmdb-plain")
        db = d / "db"
        env = {"S3DLIO_DIRECT_MAP_BUDGET": "4MiB"} if shim else None
        w = run.popen([sys.executable, LOADERS, "lmdb-writer", db, "300"], shim=shim, paths=str(d), env=env,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        import time
        for _ in range(100):
            if (db / "data.mdb").exists():
                break
            time.sleep(0.05)
        r = run([sys.executable, LOADERS, "lmdb-reader", db, "200"], shim=shim, paths=str(d), env=env)
        wout, werr = w.communicate(timeout=300)
        assert w.returncode == 0 and r.returncode == 0, (werr.decode()[-2000:], r.stderr.decode()[-2000:])
        assert r.stdout.decode().startswith("reader: 0 torn values"), r.stdout
        results.append(wout)
        if shim:
            from mapsample import cachestat
            fd = os.open(db / "data.mdb", os.O_RDONLY)
            try:
                left = cachestat(fd)
            finally:
                os.close(fd)
            assert left <= 4 * MiB, f"the writer's pages stay cached after it exited: {left >> 20} MiB"
    assert results[0] == results[1], "the databases differ"


@pytest.mark.parametrize("mode", ["memmap-seq", "memmap-batches"])
def test_ten_times_the_budget(run, strict_fs, mode):
    """A mapping ten times the budget, read in order (nothing read twice from the device) and
    at random."""
    d, st = strict_fs.new_dir("data"), strict_fs.new_dir("stats")
    path = d / "big"
    budget = 16 * MiB
    subprocess.run([sys.executable, LOADERS, "make", "memmap-seq", str(path), str(10 * budget)], check=True)
    argv = [sys.executable, LOADERS, mode, path] + (["600"] if mode == "memmap-batches" else [])
    plain, ps = run_sampled(run, argv, False, None, [path])
    shim, ss = run_sampled(run, argv, True, str(d), [path],
                           {"S3DLIO_DIRECT_MAP_BUDGET": budget, "S3DLIO_DIRECT_STATS": st / "s-%p.json"})
    assert_same_run(plain, shim, mode)
    stats = load_stats(st)
    assert_bounded(ps, ss, budget, mode, stats)
    faulted = stats_total(stats, "map_faulted_bytes")
    if mode == "memmap-seq":
        assert faulted <= 1.1 * 10 * budget, (
            f"a sequential scan brought {faulted >> 20} MiB of a {10 * budget >> 20} MiB file into the page cache: "
            f"it read pages again that it had given back\n{stats_summary(stats)}")
    else:
        # no fault reads around (the kernel's read-around would refill the budget at every
        # touch): the random batches bring in about what they touch, within what the plain run
        # cached (every page it read stayed cached)
        assert faulted <= 1.1 * ps.peak, (
            f"random batches brought {faulted >> 20} MiB into the page cache, the plain run cached "
            f"{ps.peak >> 20} MiB: pages read around were given back and read again\n{stats_summary(stats)}")


SMAPS_FLAGS = r"""
import mmap, random, re, sys, time
f = open(sys.argv[1], "rb")
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
def flags():
    lines, out, inside = open("/proc/self/smaps").read().splitlines(), [], False
    for l in lines:
        head = l.split()
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", l):
            inside = len(head) >= 6 and head[-1] == sys.argv[1]
        elif inside and l.startswith("VmFlags:"):
            out.append("+".join(x for x in l.split()[1:] if x in ("rr", "sr", "dd")) or "-")
    return ",".join(out)
print("mapped", flags())
# random touches over a file 16 times the budget, until the kernel reads no more around them
rng, end = random.Random(1), time.monotonic() + 3
while time.monotonic() < end and "rr" not in flags():
    for _ in range(64):
        m[rng.randrange(len(m))]
    time.sleep(0.002)
print("thrashed", flags())
for name in ("SEQUENTIAL", "NORMAL", "RANDOM", "NORMAL"):
    m.madvise(getattr(mmap, "MADV_" + name))
    print(name, flags())
"""


def test_a_file_read_at_random_is_read_no_more_around(run, strict_fs):
    """What the kernel is told (/proc/self/smaps VmFlags): a file mapped without advice keeps
    the kernel's read-around until its pages are read again soon after being given back;
    then its mappings the program gave no advice are read at random (rr), the program's
    SEQUENTIAL reaches the kernel as it is and its RANDOM is marked dd to stay apart from no
    advice (README: What differs). The plain run's VMAs are never marked."""
    d = strict_fs.new_dir("data")
    path = d / "f"
    make_file(path, 64 * MiB, seed=3)
    argv = [sys.executable, "-c", SMAPS_FLAGS, path]
    plain = run(argv, shim=False)
    shim = run(argv, shim=True, paths=str(d), env={"S3DLIO_DIRECT_MAP_BUDGET": "4MiB"})
    assert plain.returncode == 0 and shim.returncode == 0, (plain.stderr, shim.stderr)
    want_plain = ["mapped -", "thrashed -", "SEQUENTIAL sr", "NORMAL -", "RANDOM rr", "NORMAL -"]
    want_shim = ["mapped -", "thrashed rr", "SEQUENTIAL sr", "NORMAL rr", "RANDOM rr+dd", "NORMAL rr"]
    assert plain.stdout.decode().splitlines() == want_plain, plain.stdout
    assert shim.stdout.decode().splitlines() == want_shim, shim.stdout


def test_a_budget_of_one_page(run, strict_fs):
    d, st = strict_fs.new_dir("data"), strict_fs.new_dir("stats")
    path = d / "f"
    subprocess.run([sys.executable, LOADERS, "make", "memmap-seq", str(path), str(128 * MiB)], check=True)
    for mode, args in (("memmap-seq", []), ("memmap-batches", ["200"])):
        argv = [sys.executable, LOADERS, mode, path, *args]
        plain, ps = run_sampled(run, argv, False, None, [path])
        shim, ss = run_sampled(run, argv, True, str(d), [path],
                               {"S3DLIO_DIRECT_MAP_BUDGET": 4096, "S3DLIO_DIRECT_STATS": st / "s-%p.json"})
        assert_same_run(plain, shim, f"{mode} with a budget of one page")
        assert_bounded(ps, ss, 4096, f"{mode} with a budget of one page", load_stats(st))


def test_rss_as_without_the_library(run, strict_fs):
    """Giving pages back never costs the program memory: its peak RSS (which counts the mapped
    file pages it touched) is at most the plain run's."""
    d = strict_fs.new_dir("data")
    path = d / "f"
    subprocess.run([sys.executable, LOADERS, "make", "memmap-seq", str(path), str(64 * MiB)], check=True)
    code = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__'); "
            "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    argv = [sys.executable, "-c", code, LOADERS, "memmap-seq", path]
    plain = run(argv, shim=False)
    shim = run(argv, shim=True, paths=str(d), env={"S3DLIO_DIRECT_MAP_BUDGET": "8MiB"})
    assert_same_run(plain, shim, "rss")
    rss = [int(r.stderr.decode().split("maxrss")[1].split()[0]) for r in (plain, shim)]
    assert rss[1] <= rss[0] * 1.1 + 8192, f"peak RSS plain {rss[0]} KiB, under the library {rss[1]} KiB"


def test_an_unprivileged_reader_of_someone_elses_file(run, strict_fs):
    """nobody maps root's read-only data set: cachestat(2) is refused to a user who may not
    write the file (Linux 6.14+), so residency is measured with mincore of the mapping; the
    footprint stays bounded and the bytes are the same."""
    d, st = strict_fs.new_dir("data"), strict_fs.new_dir("stats")
    path = d / "f"
    make_file(path, 96 * MiB, seed=9)
    os.chmod(path, 0o644)
    code = ("import hashlib, mmap, sys; f = open(sys.argv[1], 'rb'); "
            "m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); h = hashlib.sha256(); "
            "[h.update(m[i:i + (1 << 20)]) for i in range(0, len(m), 1 << 20)]; print(h.hexdigest())")
    argv = ["/usr/bin/python3", "-c", code, path]
    plain, ps = run_sampled(run, argv, False, None, [path])
    for f in [path]:
        drop_cache(f)
    with Sampler([path]) as ss:
        shim = run(argv, shim=True, paths=str(d), user="nobody",
                   env={"S3DLIO_DIRECT_MAP_BUDGET": "16MiB", "S3DLIO_DIRECT_STATS": st / "s-%p.json"})
    assert_same_run(plain, shim, "an unprivileged reader")
    stats = load_stats(st)
    assert_bounded(ps, ss, 16 * MiB, "an unprivileged reader", stats)
    assert stats_total(stats, "map_given_back_bytes") > 0, stats_summary(stats)


@pytest.mark.parametrize("ending", ["exit", "exec", "_exit"])
def test_mapped_pages_go_when_the_process_ends(run, strict_fs, ending):
    """A file smaller than the budget keeps its pages while mapped; they are dropped when the
    process exits, calls _exit (as fork workers do) or execs another program (the mappings end
    with the image), where a plain run leaves them all cached."""
    from mapsample import cachestat
    d = strict_fs.new_dir("data")
    path = d / "f"
    make_file(path, 48 * MiB, seed=4)
    end = {"exit": "", "exec": "os.execv('/bin/true', ['true'])", "_exit": "os._exit(0)"}[ending]
    code = ("import mmap, os, sys; f = open(sys.argv[1], 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); "
            f"s = sum(m[i] for i in range(0, len(m), 4096)); print(s, flush=True); {end}")
    left = []
    for shim in (False, True):
        drop_cache(path)
        r = run(["/usr/bin/python3", "-c", code, path], shim=shim, paths=str(d), env={"S3DLIO_DIRECT_MAP_BUDGET": "256MiB"})
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        fd = os.open(path, os.O_RDONLY)
        try:
            left.append(cachestat(fd))
        finally:
            os.close(fd)
    assert left[0] >= 40 * MiB, f"the plain run left only {left[0] >> 20} MiB cached: the test proves nothing"
    assert left[1] <= MiB, f"after {ending}, {left[1] >> 20} MiB of the mapped file stay cached"


def test_memory_behind_a_raw_munmap_is_left_alone(run, strict_fs):
    """A mapping of a matched file unmapped with a raw system call (no hook sees it) and its
    addresses reused for anonymous memory: the registry still lists the range, and giving the
    file's cached pages back must not discard the program's new memory there (MADV_DONTNEED
    only where the kernel confirms the range is still the file's)."""
    d, st = strict_fs.new_dir("data"), strict_fs.new_dir("stats")
    path = d / "f"
    make_file(path, 16 * MiB, seed=5)
    r = run([bin_path("mapstale"), path, "2"], paths=str(d),
            env={"S3DLIO_DIRECT_MAP_BUDGET": 4096, "S3DLIO_DIRECT_STATS": st / "s-%p.json"})
    assert r.returncode == 0 and r.stdout == b"intact\n", (r.stdout, r.stderr)
    objs = load_stats(st)
    assert stats_total(objs, "map_mappings") >= 1 and stats_total(objs, "map_given_back_bytes") > 0, (
        "the library gave nothing back: the test proves nothing", objs)
