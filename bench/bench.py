#!/usr/bin/env python3
"""bench/bench.py: the s3dlio-direct benchmark (issue 5, part 1).

Runs every access pattern in every mode, side by side, in paired rounds, and writes a
Markdown report (docs/benchmarks.md) with ratio columns, target checks, machine facts and a
PNG chart beside it.

    make bench                       # 2 GiB, 3 rounds, writes docs/benchmarks.md + .png
    make bench BENCH_SIZE=512MiB BENCH_ROUNDS=1
    make bench-smoke                 # 64 MiB, 1 round, report to a temp file
    python3 bench/bench.py --help

Patterns (rows): C loader read() of 4 KiB, 64 KiB, 1 MiB into malloc'd buffers; C loader
1 MiB posix_memalign buffers; random 64 KiB and 4 KiB pread()s; a strided read (64 KiB, skip
1 MiB); a 128-byte header then random 64 KiB pread()s per file; 256 KiB chunks in shuffled order,
each read as four 64 KiB read()s; an h5py chunked dataset (256 KiB chunks) read in shuffled
chunk order and in order; lmdb random gets (through its mapping); numpy.memmap read in order,
in random 64 KiB batches (nanoGPT's get_batch) and the same in 4 fork workers, and safetensors
load_file (mapped: the shim bounds their page cache, it cannot make them direct); 1,500 files of 1 MiB read
with 64 KiB read()s (BENCH_SMALL_FILES); Python f.read(65536) (BufferedReader), f.readinto()
of 8 MiB, numpy.load of .npy files; an fread loader; 8 threads streaming 1 MiB reads;
sequential writes of 1 MiB aligned, 4 KiB and 1000-byte chunks from C and from Python, each
ending with fsync; the device's ceiling (fio libaio, 4 MiB requests, 8 in flight, from huge
pages: vm.nr_hugepages is raised for the run when it can be, as root, and put back after;
without huge pages the report says so and the ceiling is fio's with 4 KiB pages), and the
previous ceiling (1 MiB, 16 in flight, 4 KiB pages) for reference; and a micro-benchmark of a
million 1-byte read()s of a file the shim does not manage, with and without LD_PRELOAD.
Every read row also gets its device bytes per byte asked (/proc/PID/io), buffered cold and
under the shim, and the read-amplification bound of issue 14.

Modes (columns), the list MODES below; add one with an extra environment variable, e.g.
    "dontcache": Mode("dontcache", "shim dontcache", shim_env={"S3DLIO_DIRECT_MODE": "dontcache"})
and select with BENCH_MODES=cold,warm,direct,nocache,shim,dontcache,mapdirect,mapcache (the
last two only for the rows that map their files: "shim" serves their read-only mappings direct
where the process may, mapcache bounds them in the page cache).
  cold     buffered, data evicted first (fsync + posix_fadvise(DONTNEED): no root needed)
  warm     buffered, data read into the page cache first
  direct   the same pattern done with O_DIRECT natively (C loader/writer opening with
           O_DIRECT and posix_memalign buffers of the same request size)
  nocache  Debian's nocache wrapper (read patterns only)
  shim     LD_PRELOAD=libs3dlio_direct.so S3DLIO_DIRECT_PATHS=<data dirs>

Figures per cell: throughput (bytes / the program's own I/O time, fsync included for
writes), CPU seconds (child's rusage) per GiB, device bytes (/proc/PID/io read_bytes or
write_bytes of the child, read while it is a zombie; the block device's stat delta is kept in
the raw JSON), page-cache residency of the data at the end and its peak during the run
(bench/src/cachemon.c samples mincore every 50 ms), peak RSS (ru_maxrss) and the shim's extra
RSS (shim minus buffered cold, same pattern, same round). Medians over rounds; ratios are the
medians of per-round ratios of runs made back to back (modes interleaved, rotated per round).

Environment (or the matching --options): BENCH_DIR (/var/tmp/s3dlio-bench), BENCH_SIZE
(2GiB), BENCH_FILES (16), BENCH_ROUNDS (3), BENCH_CELL_SECS (5: time cap per run),
BENCH_PATTERNS (row keys to run, e.g. c64k,small,h5shuf; default all), BENCH_SMALL_FILES (1500),
BENCH_WRITE_SIZE (1GiB, capped at BENCH_SIZE), BENCH_MAP_BUDGET (S3DLIO_DIRECT_MAP_BUDGET of the
shim runs: an eighth of BENCH_SIZE, so that the mapped rows' bound has work to do), BENCH_MODES, BENCH_OUT (docs/benchmarks.md),
BENCH_KEEP=1 (keep the generated data), BENCH_STRICT=1 (fail when fio, nocache, numpy or
matplotlib is missing instead of marking those cells missing), BENCH_SHIM (the .so).
Needs Python 3.9+; numpy for the numpy.load row, h5py and lmdb (PyPI: bench/deps.sh puts them
in bench/.venv) for theirs, matplotlib for the chart.

Comparing two builds of the library (`make bench-ab A=<rev> B=<rev|worktree|.so>`) is
bench/ab.py, which imports this module's patterns, runs and report pieces.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.path.join(HERE, "bin")
SRC = os.path.join(HERE, "src")
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def parse_size(s: str) -> int:
    s = str(s).strip()
    units = {"": 1, "k": KiB, "kib": KiB, "m": MiB, "mib": MiB, "g": GiB, "gib": GiB}
    num = s.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = s[len(num):].lower()
    if unit not in units:
        raise ValueError(f"bad size {s!r}")
    return int(float(num) * units[unit])


def human(n: float) -> str:
    for u, d in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= d:
            v = n / d
            return f"{v:.0f} {u}" if v == int(v) else f"{v:.1f} {u}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------- modes


@dataclass
class Mode:
    key: str
    label: str
    cache: str = "cold"  # state of the data's page cache before the run: "cold" or "warm"
    native: bool = False  # run the pattern's native O_DIRECT program instead
    wrapper: list = field(default_factory=list)  # e.g. ["nocache"]
    shim_env: dict | None = None  # None: no shim; else LD_PRELOAD + PATHS + STATS + these
    reads_only: bool = False
    tool: str | None = None  # an executable the mode needs
    mmap_only: bool = False  # only the rows that map their files (the others run as "shim")

    @property
    def is_shim(self) -> bool:
        return self.shim_env is not None


MODES = {
    "cold": Mode("cold", "buffered cold"),
    "warm": Mode("warm", "buffered warm", cache="warm", reads_only=True),
    "direct": Mode("direct", "native O_DIRECT", native=True),
    "nocache": Mode("nocache", "nocache", wrapper=["nocache"], reads_only=True, tool="nocache"),
    "shim": Mode("shim", "shim", shim_env={}),
    # the engine's RWF_DONTCACHE mode, once it exists (not in the default list):
    "dontcache": Mode("dontcache", "shim dontcache", shim_env={"S3DLIO_DIRECT_MODE": "dontcache"}),
    # mappings served from the device, explicitly (S3DLIO_DIRECT_MAP=direct, the default; not in the default list)
    "mapdirect": Mode("mapdirect", "shim, direct mappings", shim_env={"S3DLIO_DIRECT_MAP": "direct"},
                      mmap_only=True),
    # mappings bounded in the page cache (S3DLIO_DIRECT_MAP=cache), beside the default's direct ones
    "mapcache": Mode("mapcache", "shim, bounded mappings", shim_env={"S3DLIO_DIRECT_MAP": "cache"},
                     mmap_only=True),
}
DEFAULT_MODES = "cold,warm,direct,nocache,shim,mapcache"


# --------------------------------------------------------------------------- patterns


@dataclass
class Pattern:
    key: str
    label: str
    kind: str  # "read", "write"
    argv: object  # fn(ctx) -> list
    native: object = None  # fn(ctx) -> list, or None when the pattern cannot go direct natively
    native_label: str = ""
    group: str = ""  # which target applies
    modes: tuple | None = None  # restrict to these mode keys
    python: bool = False
    data: str = "npy"  # the data set it reads: "npy" (the .npy files), "small", "h5", "lmdb"
    seq: bool = True  # a sequential read pattern (may fetch one read-ahead window more)
    needs: str = ""  # a Python module the row needs (h5py, lmdb)
    mmap: bool = False  # reads through a memory mapping: the page cache serves it by design


def bload(*args):
    return lambda c: [os.path.join(BIN, "bload"), "-T", str(c.cell_secs), *map(str, args), *c.files]


def bwrite(*args):
    return lambda c: [os.path.join(BIN, "bwrite"), "-T", str(c.cell_secs), "-S", str(c.write_size),
                      *map(str, args), c.out_file]


def pyload(*args, files=True):
    def f(c):
        tail = c.files if files else [c.out_file]
        extra = ["-L", str(c.write_size)] if not files else []
        return [c.python, os.path.join(HERE, "pyload.py"), "-T", str(c.cell_secs), *extra,
                *map(str, args), *tail]
    return f


def rand_argv(native, size=65536):
    def f(c):
        a = [os.path.join(BIN, "bload"), "-m", "rand", "-b", str(size), "-n", str(c.rand_count),
             "-T", str(c.cell_secs)]
        if native:
            a += ["-A", "-D"]
        return a + c.files
    return f


def bload_on(which, *args):
    """bload over another data set than the .npy files."""
    return lambda c: [os.path.join(BIN, "bload"), "-T", str(c.cell_secs), *map(str, args), *c.data_paths(which)]


def pyload_on(which, *args):
    """pyload over one file or directory of another data set."""
    def f(c):
        target = c.lmdb_dir if which == "lmdb" else c.data_paths(which)[0]
        return [c.python, os.path.join(HERE, "pyload.py"), "-T", str(c.cell_secs), *map(str, args), target]
    return f


NAT = "C loader, O_DIRECT, posix_memalign, same request size"
PATTERNS = [
    Pattern("c4k", "C read() 4 KiB, malloc", "read", bload("-b", 4096), bload("-b", 4096, "-A", "-D"),
            NAT, "small"),
    Pattern("c64k", "C read() 64 KiB, malloc", "read", bload("-b", 65536), bload("-b", 65536, "-A", "-D"),
            NAT, "small"),
    Pattern("c1m", "C read() 1 MiB, malloc", "read", bload("-b", MiB), bload("-b", MiB, "-A", "-D"),
            NAT, "unaligned_large"),
    Pattern("c1ma", "C read() 1 MiB, posix_memalign", "read", bload("-b", MiB, "-A"),
            bload("-b", MiB, "-A", "-D"), NAT, "aligned_large"),
    Pattern("rand64k", "C random pread() 64 KiB", "read", rand_argv(False), rand_argv(True), NAT, "random",
            seq=False),
    Pattern("rand4k", "C random pread() 4 KiB", "read", rand_argv(False, 4096), rand_argv(True, 4096), NAT,
            "random", seq=False),
    Pattern("stride", "C read() 64 KiB, skip 1 MiB", "read", bload("-m", "stride", "-b", 65536),
            bload("-m", "stride", "-b", 65536, "-A", "-D"), NAT, "pattern", seq=False),
    Pattern("hdrjump", "C header, then random 64 KiB pread()s", "read",
            lambda c: bload("-m", "hdrjump", "-b", 65536, "-n", c.rand_count)(c),
            lambda c: bload("-m", "hdrjump", "-b", 65536, "-n", c.rand_count, "-A", "-D")(c),
            "C loader, O_DIRECT, a 4 KiB header, then the same preads", "pattern", seq=False),
    Pattern("chunks", "C 256 KiB chunks shuffled, 4 read()s of 64 KiB", "read",
            lambda c: bload("-m", "chunks", "-b", 65536, "-n", c.rand_count // 4)(c),
            lambda c: bload("-m", "chunks", "-b", 65536, "-n", c.rand_count // 4, "-A", "-D")(c),
            NAT, "pattern", seq=False),
    Pattern("h5shuf", "h5py chunked dataset, chunks shuffled", "read", pyload_on("h5", "h5", "shuffled"), None,
            "", "pattern", python=True, data="h5", needs="h5py", seq=False),
    Pattern("h5seq", "h5py chunked dataset, chunks in order", "read", pyload_on("h5", "h5", "inorder"), None,
            "", "pattern", python=True, data="h5", needs="h5py"),
    Pattern("lmdb", "lmdb random gets (1 KiB values)", "read", lambda c: pyload_on("lmdb", "lmdb", c.rand_count)(c),
            None, "", "pattern", python=True, data="lmdb", needs="lmdb", seq=False, mmap=True),
    Pattern("mmseq", "numpy.memmap in order, 1 MiB slices", "read", pyload("memmap-seq"), None, "", "pattern",
            python=True, needs="numpy", mmap=True),
    Pattern("mmbatch", "numpy.memmap random 64 KiB batches (nanoGPT)", "read",
            lambda c: pyload("memmap-batches", max(16, c.rand_count // 16), 1)(c), None, "", "pattern",
            python=True, needs="numpy", seq=False, mmap=True),
    Pattern("mmpool", "numpy.memmap random 64 KiB batches, 4 fork workers", "read",
            lambda c: pyload("memmap-batches", max(4, c.rand_count // 64), 4)(c), None, "", "pattern",
            python=True, needs="numpy", seq=False, mmap=True),
    Pattern("safet", "safetensors load_file", "read", pyload_on("safetensors", "safetensors"), None, "",
            "pattern", python=True, data="safetensors", needs="safetensors", mmap=True),
    Pattern("small", "C many 1 MiB files, read() 64 KiB", "read", bload_on("small", "-b", 65536),
            bload_on("small", "-b", 65536, "-A", "-D"), NAT, "small_files", data="small"),
    Pattern("pyread", "Python f.read(65536)", "read", pyload("read", 65536), bload("-b", 65536, "-A", "-D"),
            "C loader, O_DIRECT, 64 KiB aligned", "small", python=True),
    Pattern("pyinto", "Python f.readinto() 8 MiB", "read", pyload("readinto", 8 * MiB),
            bload("-b", 8 * MiB, "-A", "-D"), "C loader, O_DIRECT, 8 MiB aligned", "unaligned_large", python=True),
    Pattern("npy", "numpy.load(.npy)", "read", pyload("npy"), bload("-b", 8 * MiB, "-A", "-D", "-F"),
            "C loader, O_DIRECT, 8 MiB aligned into a fresh buffer of the file's size per file, as numpy.load",
            "unaligned_large", python=True),
    Pattern("fread", "C fread() 64 KiB", "read", bload("-m", "fread", "-b", 65536),
            bload("-b", 65536, "-A", "-D"), "C loader, O_DIRECT, 64 KiB aligned", "small"),
    Pattern("t8", "C 8 threads read() 1 MiB, malloc", "read", bload("-t", 8, "-b", MiB),
            bload("-t", 8, "-b", MiB, "-A", "-D"), "8 threads, O_DIRECT, aligned", "threads",
            modes=("cold", "direct", "shim", "dontcache")),
    Pattern("cw1m", "C write() 1 MiB aligned + fsync", "write", bwrite("-b", MiB, "-A"),
            bwrite("-b", MiB, "-A", "-D"), "C writer, O_DIRECT, 1 MiB aligned", "large_write"),
    Pattern("cw4k", "C write() 4 KiB + fsync", "write", bwrite("-b", 4096), bwrite("-b", 4096, "-A", "-D"),
            "C writer, O_DIRECT, 4 KiB aligned", "small_write"),
    Pattern("cw1000", "C write() 1000 B + fsync", "write", bwrite("-b", 1000), None, "", "small_write"),
    Pattern("pyw1m", "Python f.write() 1 MiB + fsync", "write", pyload("write", MiB, files=False),
            bwrite("-b", MiB, "-A", "-D"), "C writer, O_DIRECT, 1 MiB aligned", "large_write", python=True),
    Pattern("pyw4k", "Python f.write() 4 KiB + fsync", "write", pyload("write", 4096, files=False),
            bwrite("-b", 4096, "-A", "-D"), "C writer, O_DIRECT, 4 KiB aligned", "small_write", python=True),
    Pattern("pyw1000", "Python f.write() 1000 B + fsync", "write", pyload("write", 1000, files=False),
            None, "", "small_write", python=True),
]


# --------------------------------------------------------------------------- helpers


def clean_env() -> dict:
    e = {k: v for k, v in os.environ.items()
         if k != "LD_PRELOAD" and not k.startswith(("S3DLIO_DIRECT_", "NOCACHE_", "BENCH_"))}
    e["LC_ALL"] = "C"
    return e


def compile_tools(strict_cc=True):
    """Build bench/bin/* from bench/src/*.c when missing or older than the source."""
    os.makedirs(BIN, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    for src in sorted(glob.glob(os.path.join(SRC, "*.c"))):
        out = os.path.join(BIN, os.path.splitext(os.path.basename(src))[0])
        if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
            continue
        cmd = [cc, "-O2", "-Wall", "-Wextra", "-pthread", "-o", out, src]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"bench: compiling {src} failed:\n{r.stderr}")


def parse_kv(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        for tok in line.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                try:
                    out[k] = float(v) if "." in v else int(v)
                except ValueError:
                    out[k] = v
    return out


def block_device_of(path: str) -> str | None:
    """The whole-disk name under /sys/block of the filesystem holding path."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    p = f"/sys/dev/block/{major}:{minor}"
    if not os.path.exists(p):
        return None
    real = os.path.realpath(p)
    if os.path.exists(os.path.join(real, "partition")):
        real = os.path.dirname(real)
    return os.path.basename(real)


def blk_stat(dev: str | None) -> tuple[int, int]:
    """(bytes read, bytes written) of the device so far (sectors are 512 bytes in this file)."""
    if not dev:
        return (0, 0)
    try:
        f = open(f"/sys/block/{dev}/stat").read().split()
        return int(f[2]) * 512, int(f[6]) * 512
    except OSError:
        return (0, 0)


def evict(paths):
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                os.fdatasync(fd)
            except OSError:
                pass
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident(paths) -> int:
    r = subprocess.run([os.path.join(BIN, "cachemon"), "-o", *paths], capture_output=True, text=True)
    return int(parse_kv(r.stdout).get("resident", 0))


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------- context


class Ctx:
    def __init__(self, a):
        self.dir = os.path.abspath(a.dir)
        self.size = a.size
        self.nfiles = a.files
        self.rounds = a.rounds
        self.cell_secs = a.cell_secs
        self.write_size = min(a.write_size, a.size)
        self.keep = a.keep
        self.strict = a.strict
        self.smoke = a.smoke
        self.out = a.out
        self.python = a.python or sys.executable
        self.shim = os.path.abspath(a.shim)
        self.shim_orig = self.shim
        self.shim_info = ""
        self.data_dir = os.path.join(self.dir, "data")
        self.out_dir = os.path.join(self.dir, "out")
        self.plain_dir = os.path.join(self.dir, "plain")
        self.stats_dir = os.path.join(self.dir, "stats")
        self.out_file = os.path.join(self.out_dir, "w.bin")
        self.small_file = os.path.join(self.plain_dir, "small.bin")
        # the data sets of the other read rows (the shim's PATHS cover them too)
        self.sets_dir = os.path.join(self.dir, "sets")
        self.nsmall = 32 if self.smoke else int(os.environ.get("BENCH_SMALL_FILES", "1500"))
        self.small_dir = os.path.join(self.sets_dir, "small")
        self.small_files = [os.path.join(self.small_dir, f"s{i:04d}.bin") for i in range(self.nsmall)]
        self.h5_file = os.path.join(self.sets_dir, "h5", "chunks.h5")
        self.h5_size = max(16 * MiB, min(512 * MiB, self.size // 4))
        self.lmdb_dir = os.path.join(self.sets_dir, "lmdb")
        self.lmdb_size = max(8 * MiB, min(256 * MiB, self.size // 8))
        self.safetensors_file = os.path.join(self.sets_dir, "safetensors", "model.safetensors")
        self.safetensors_size = max(16 * MiB, min(1024 * MiB, self.size // 2))
        self.patterns = [p for p in PATTERNS if not a.patterns or p.key in a.patterns.split(",")]
        self.file_size = (self.size // self.nfiles) // 4096 * 4096
        self.files = [os.path.join(self.data_dir, f"d{i:03d}.npy") for i in range(self.nfiles)]
        self.rand_count = max(64, self.size // 65536 // 4)
        self.micro_count = 100_000 if self.smoke else 1_000_000
        self.micro_pairs = 3 if self.smoke else 5
        self.dev = None
        self.missing = {}  # tool -> reason
        self.mode_keys = [m.strip() for m in a.modes.split(",") if m.strip()]
        for k in self.mode_keys:
            if k not in MODES:
                sys.exit(f"bench: unknown mode {k!r} (known: {', '.join(MODES)})")
        self.modes = [MODES[k] for k in self.mode_keys]

    def data_paths(self, which: str) -> list:
        """The files a data set consists of (what is evicted, warmed and watched)."""
        if which == "small":
            return self.small_files
        if which == "h5":
            return [self.h5_file]
        if which == "lmdb":
            return [os.path.join(self.lmdb_dir, "data.mdb")]
        if which == "safetensors":
            return [self.safetensors_file]
        return self.files

    def shim_env(self, mode: Mode, shim: str | None = None) -> dict:
        """The environment of a shim run: LD_PRELOAD of `shim` (default: the library under test)."""
        e = {"LD_PRELOAD": shim or self.shim,
             "S3DLIO_DIRECT_PATHS": f"{self.data_dir}:{self.sets_dir}:{self.out_dir}",
             "S3DLIO_DIRECT_STATS": os.path.join(self.stats_dir, "st-%p.json"),
             # mapped rows: a budget of an eighth of the data, so that bounding has work to do
             "S3DLIO_DIRECT_MAP_BUDGET": os.environ.get("BENCH_MAP_BUDGET", str(max(4 * MiB, self.size // 8)))}
        e.update(mode.shim_env or {})
        return e


def make_npy_header(nbytes: int) -> bytes:
    d = "{'descr': '|u1', 'fortran_order': False, 'shape': (%d,), }" % nbytes
    h = d.encode()
    total = 128
    pad = total - 10 - len(h) - 1
    if pad < 0:
        raise ValueError("header too long")
    return b"\x93NUMPY\x01\x00" + (total - 10).to_bytes(2, "little") + h + b" " * pad + b"\n"


def generate(ctx: Ctx):
    for d in (ctx.data_dir, ctx.out_dir, ctx.plain_dir, ctx.stats_dir):
        os.makedirs(d, exist_ok=True)
    stamp = os.path.join(ctx.data_dir, ".stamp")
    want = f"v1 {ctx.nfiles} {ctx.file_size}"
    if os.path.exists(stamp) and open(stamp).read() == want and all(
            os.path.exists(f) and os.path.getsize(f) == ctx.file_size for f in ctx.files):
        print(f"bench: reusing data in {ctx.data_dir}", flush=True)
    else:
        for f in glob.glob(os.path.join(ctx.data_dir, "*")):
            os.unlink(f)
        print(f"bench: generating {human(ctx.nfiles * ctx.file_size)} in {ctx.nfiles} .npy files "
              f"in {ctx.data_dir}", flush=True)
        block = bytearray(os.urandom(MiB))
        for i, path in enumerate(ctx.files):
            with open(path, "wb") as f:
                f.write(make_npy_header(ctx.file_size - 128))
                left = ctx.file_size - 128
                k = 0
                while left > 0:
                    block[0:8] = (i * 1_000_003 + k).to_bytes(8, "little")
                    n = min(left, MiB)
                    f.write(block[:n] if n < MiB else block)
                    left -= n
                    k += 1
                f.flush()
                os.fsync(f.fileno())
        with open(stamp, "w") as f:
            f.write(want)
    with open(ctx.small_file, "wb") as f:
        f.write(os.urandom(MiB))
    evict(ctx.files)
    generate_sets(ctx)


def generate_sets(ctx: Ctx):
    """The data of the rows that do not read the .npy files: many 1 MiB files, an HDF5 file of
    256 KiB chunks, an LMDB environment; each made once and reused while its stamp matches."""
    keys = {p.data for p in ctx.patterns if p.kind == "read"}

    def fresh(stamp, want, paths):
        return (os.path.exists(stamp) and open(stamp).read() == want
                and all(os.path.exists(p) for p in paths))

    if "small" in keys:
        os.makedirs(ctx.small_dir, exist_ok=True)
        stamp, want = os.path.join(ctx.small_dir, ".stamp"), f"v1 {ctx.nsmall}"
        if not fresh(stamp, want, ctx.small_files):
            print(f"bench: generating {ctx.nsmall} files of 1 MiB in {ctx.small_dir}", flush=True)
            for f in glob.glob(os.path.join(ctx.small_dir, "*")):
                os.unlink(f)
            for path in ctx.small_files:
                with open(path, "wb") as f:
                    f.write(os.urandom(MiB))
            os.sync()
            with open(stamp, "w") as f:
                f.write(want)
    for key, verb, target, size in (("h5", "mkh5", ctx.h5_file, ctx.h5_size),
                                    ("lmdb", "mklmdb", ctx.lmdb_dir, ctx.lmdb_size),
                                    ("safetensors", "mksafetensors", ctx.safetensors_file, ctx.safetensors_size)):
        module = {"h5": "h5py"}.get(key, key)
        if key not in keys or module in ctx.missing:
            continue
        d = target if key == "lmdb" else os.path.dirname(target)
        stamp, want = os.path.join(d, ".stamp"), f"v1 {size}"
        if fresh(stamp, want, ctx.data_paths(key)):
            continue
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        print(f"bench: generating the {module} data set ({human(size)}) in {d}", flush=True)
        r = subprocess.run([ctx.python, os.path.join(HERE, "pyload.py"), verb, str(size), target],
                           capture_output=True, text=True, env=clean_env())
        if r.returncode != 0:
            sys.exit(f"bench: generating the {module} data set failed:\n{r.stderr[-2000:]}")
        with open(stamp, "w") as f:
            f.write(want)
    for key in keys:
        evict(ctx.data_paths(key))


# --------------------------------------------------------------------------- one run


def run_child(ctx: Ctx, argv, env_extra, targets, kind, pre_warm=False, evict_first=True, timeout=None,
              parse=parse_kv):
    """Runs one measured program; returns a result dict."""
    if kind == "read":
        if pre_warm:
            subprocess.run([os.path.join(BIN, "bload"), "-b", str(MiB), *targets], check=True,
                           stdout=subprocess.DEVNULL, env=clean_env())
        elif evict_first:
            evict(targets)
    else:
        if os.path.exists(ctx.out_file):
            os.unlink(ctx.out_file)
    for f in glob.glob(os.path.join(ctx.stats_dir, "*")):
        os.unlink(f)
    env = clean_env()
    env.update(env_extra)
    mon = subprocess.Popen([os.path.join(BIN, "cachemon"), "-i", "50", *targets],
                           stdout=subprocess.PIPE, text=True, env=clean_env())
    mon.stdout.readline()  # "ready"
    out = tempfile.TemporaryFile(mode="w+")
    err = tempfile.TemporaryFile(mode="w+")
    resfile = os.path.join(ctx.stats_dir, "..brun")
    b0 = blk_stat(ctx.dev)
    t0 = time.monotonic()
    limit = int(timeout or (ctx.cell_secs * 6 + 120))
    p = subprocess.run([os.path.join(BIN, "brun"), "-o", resfile, "-t", str(limit), "--", *argv],
                       env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    ru = parse_kv(open(resfile).read()) if p.returncode == 0 and os.path.exists(resfile) else {}
    if os.path.exists(resfile):
        os.unlink(resfile)
    rc = ru.get("rc", 255)
    wall = time.monotonic() - t0
    b1 = blk_stat(ctx.dev)
    mon.send_signal(signal.SIGTERM)
    mon_out = parse_kv(mon.communicate()[0])
    end_res = resident(targets)
    out.seek(0)
    err.seek(0)
    so, se = out.read(), err.read()
    out.close()
    err.close()
    kv = parse(so)
    res = {
        "ok": rc == 0 and "bytes" in kv,
        "rc": rc,
        "bytes": kv.get("bytes", 0),
        "secs": kv.get("secs", wall),
        "calls": kv.get("calls", 0),
        "wall": wall,
        "cpu": ru.get("utime", 0) + ru.get("stime", 0),
        "maxrss": ru.get("maxrss", 0) * 1024,
        "dev_read": ru.get("read_bytes") if ru.get("read_bytes", -1) >= 0 else None,
        "dev_write": ru.get("write_bytes") if ru.get("write_bytes", -1) >= 0 else None,
        "blk_read": b1[0] - b0[0],
        "blk_write": b1[1] - b0[1],
        "peak_res": mon_out.get("peak", 0),
        "end_res": end_res,
        "stderr": se[-2000:],
    }
    res["mbps"] = res["bytes"] / res["secs"] / 1e6 if res["ok"] and res["secs"] > 0 else None
    # the shim's statistics (one JSON per process)
    st = {}
    for f in glob.glob(os.path.join(ctx.stats_dir, "*.json*")):
        try:
            d = json.load(open(f))
        except (OSError, ValueError):
            continue
        for k, v in d.items():
            if isinstance(v, int) and k not in ("pid", "schema", "starttime"):
                st[k] = st.get(k, 0) + v
            elif k == "fallbacks" and isinstance(v, dict):
                fb = st.setdefault("fallbacks", {})
                for r, n in v.items():
                    if n:
                        fb[r] = fb.get(r, 0) + n
        os.unlink(f)
    if st:
        res["shim_stats"] = st
    if kind == "write" and os.path.exists(ctx.out_file):
        os.unlink(ctx.out_file)
    if not res["ok"]:
        print(f"bench:   FAILED rc={rc}: {' '.join(argv)}\n{se[-1500:]}", flush=True)
    return res


def run_cell(ctx: Ctx, pat: Pattern, mode: Mode, shim: str | None = None):
    """One run of a pattern in a mode; `shim` overrides the library of shim modes (bench/ab.py)."""
    if mode.native:
        if pat.native is None:
            return None
        argv = pat.native(ctx)
    else:
        argv = pat.argv(ctx)
    env = {}
    if mode.wrapper:
        argv = list(mode.wrapper) + argv
    if mode.is_shim:
        env.update(ctx.shim_env(mode, shim))
    targets = ctx.data_paths(pat.data) if pat.kind == "read" else [ctx.out_dir]
    return run_child(ctx, argv, env, targets, pat.kind, pre_warm=(mode.cache == "warm"))


def parse_fio(text: str) -> dict:
    """fio's JSON report -> bytes/secs/calls of the read side."""
    try:
        js = json.loads(text[text.index("{"):])
        rd = js["jobs"][0]["read"]
        return {"bytes": int(rd["io_bytes"]), "secs": rd["runtime"] / 1000.0, "calls": int(rd["total_ios"])}
    except (ValueError, KeyError, IndexError):
        return {}


# Huge pages the honest ceiling's fio needs: 8 requests of 4 MiB in flight in one SysV
# segment of 2 MiB pages, and room.
HUGEPAGES = 24


def hugepages_free() -> int:
    try:
        return next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("HugePages_Free:"))
    except (OSError, StopIteration, ValueError):
        return 0


def reserve_hugepages(ctx: Ctx):
    """Reserves HUGEPAGES huge pages for the ceiling (vm.nr_hugepages, root only); sets
    ctx.hugepages (True or why not) and ctx.hp_restore (the value to put back at the end)."""
    path = "/proc/sys/vm/nr_hugepages"
    ctx.hp_restore = None
    free = hugepages_free()
    if free >= HUGEPAGES:
        ctx.hugepages = True
        return
    try:
        old = int(open(path).read())
        with open(path, "w") as f:
            f.write(str(old + HUGEPAGES - free))
    except (OSError, ValueError) as e:
        ctx.hugepages = f"huge pages could not be reserved ({path}: {getattr(e, 'strerror', e)}; needs root)"
        return
    ctx.hp_restore = old
    if hugepages_free() < HUGEPAGES:
        ctx.hugepages = (f"the kernel reserved only {hugepages_free()} of {HUGEPAGES} huge pages "
                         "(memory too fragmented)")
        release_hugepages(ctx)
        return
    ctx.hugepages = True


def release_hugepages(ctx: Ctx):
    if getattr(ctx, "hp_restore", None) is not None:
        try:
            with open("/proc/sys/vm/nr_hugepages", "w") as f:
                f.write(str(ctx.hp_restore))
        except OSError:
            pass
        ctx.hp_restore = None


def ceiling_label(ctx: Ctx) -> str:
    if getattr(ctx, "hugepages", None) is True:
        return "fio libaio, 4 MiB requests, 8 in flight, `iomem=shmhuge` (huge pages)"
    return "fio libaio, 4 MiB requests, 8 in flight, 4 KiB-page buffers (NO huge pages: see below)"


def run_fio(ctx: Ctx):
    """The device's honest read ceiling: 4 MiB requests, 8 in flight, from huge pages (with 4 KiB
    pages each request is split at the disk's 254 segments, about 1 MiB)."""
    if "fio" in ctx.missing:
        return None
    mem = "shmhuge" if getattr(ctx, "hugepages", None) is True else "malloc"
    argv = ["fio", "--name=ceiling", "--thread", "--rw=read", "--bs=4M", "--iodepth=8",
            "--ioengine=libaio", "--direct=1", "--readonly", f"--iomem={mem}",
            "--file_service_type=sequential", f"--runtime={ctx.cell_secs}", "--output-format=json",
            "--filename=" + ":".join(ctx.files)]
    return run_child(ctx, argv, {}, ctx.files, "read", parse=parse_fio)


def run_fio_1m(ctx: Ctx):
    """The previous ceiling, for reference: 1 MiB requests, 16 in flight, 4 KiB-page buffers."""
    if "fio" in ctx.missing:
        return None
    argv = ["fio", "--name=ceiling1m", "--thread", "--rw=read", "--bs=1M", "--iodepth=16",
            "--ioengine=libaio", "--direct=1", "--readonly", "--file_service_type=sequential",
            f"--runtime={ctx.cell_secs}", "--output-format=json",
            "--filename=" + ":".join(ctx.files)]
    return run_child(ctx, argv, {}, ctx.files, "read", parse=parse_fio)


def run_micro(ctx: Ctx):
    """Alternating pairs of the unmanaged-fd micro-benchmark: [(plain secs, shim secs)]."""
    argv = [os.path.join(BIN, "tinyread"), "-n", str(ctx.micro_count), "-b", "1", ctx.small_file]
    shim_env = clean_env()
    shim_env.update(ctx.shim_env(MODES["shim"]))
    pairs = []
    subprocess.run(argv, env=clean_env(), capture_output=True)  # warm the file
    for i in range(ctx.micro_pairs):
        t = {}
        order = ("plain", "shim") if i % 2 == 0 else ("shim", "plain")
        for which in order:
            r = subprocess.run(argv, env=shim_env if which == "shim" else clean_env(),
                               capture_output=True, text=True)
            kv = parse_kv(r.stdout)
            t[which] = kv.get("secs") if r.returncode == 0 else None
        pairs.append((t["plain"], t["shim"]))
    for f in glob.glob(os.path.join(ctx.stats_dir, "*")):
        os.unlink(f)
    return pairs


# --------------------------------------------------------------------------- the run


def check_tools(ctx: Ctx, tools=("fio", "nocache", "numpy", "matplotlib")):
    """Records in ctx.missing which of `tools` are absent; exits under BENCH_STRICT when any is."""
    for tool in ("fio", "nocache"):
        if tool in tools and shutil.which(tool) is None:
            ctx.missing[tool] = f"{tool} is not installed (Debian: apt-get install {tool})"
    if "numpy" in tools:
        r = subprocess.run([ctx.python, "-c", "import numpy"], capture_output=True)
        if r.returncode != 0:
            ctx.missing["numpy"] = f"numpy is not importable by {ctx.python} (Debian: python3-numpy)"
    for module in sorted({p.needs for p in ctx.patterns if p.needs}):
        r = subprocess.run([ctx.python, "-c", f"import {module}"], capture_output=True)
        if r.returncode != 0:
            ctx.missing[module] = (f"{module} is not importable by {ctx.python} "
                                   f"(PyPI: bench/deps.sh installs it into bench/.venv)")
    if "matplotlib" in tools:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ctx.missing["matplotlib"] = (f"matplotlib is not importable by {sys.executable} "
                                         "(Debian: python3-matplotlib)")
    if not os.path.exists(ctx.shim):
        sys.exit(f"bench: the shim {ctx.shim} is missing: run `make build`")
    if ctx.missing:
        for v in ctx.missing.values():
            print(f"bench: MISSING: {v}", file=sys.stderr, flush=True)
        if ctx.strict:
            sys.exit("bench: BENCH_STRICT is set and tools are missing (bench/deps.sh installs them as root)")


def cell_allowed(ctx: Ctx, pat: Pattern, mode: Mode) -> str | None:
    """None when the cell runs, else why not."""
    if pat.modes and mode.key not in pat.modes:
        return "not measured"
    if mode.reads_only and pat.kind != "read":
        return "reads only"
    if mode.mmap_only and not pat.mmap:
        return "mapped rows only"
    if mode.native and pat.native is None:
        return "not possible natively"
    if mode.tool and mode.tool in ctx.missing:
        return "missing: " + mode.tool
    if pat.key == "npy" and "numpy" in ctx.missing:
        return "missing: numpy"
    if pat.needs and pat.needs in ctx.missing:
        return "missing: " + pat.needs
    return None


def run_all(ctx: Ctx):
    results = {}  # (pattern key, mode key) -> [result per round]
    extra = {"fio": [], "fio1m": [], "micro": []}
    t_start = time.monotonic()
    for rnd in range(ctx.rounds):
        print(f"bench: round {rnd + 1}/{ctx.rounds} ({time.monotonic() - t_start:.0f} s so far)", flush=True)
        f = run_fio(ctx)
        if f is not None:
            extra["fio"].append(f)
        f = run_fio_1m(ctx)
        if f is not None:
            extra["fio1m"].append(f)
        for pat in ctx.patterns:
            modes = ctx.modes[rnd % len(ctx.modes):] + ctx.modes[:rnd % len(ctx.modes)]
            line = []
            for mode in modes:
                if cell_allowed(ctx, pat, mode):
                    continue
                # every row runs its own native reference, next to its other modes (paired),
                # even where another row's reference is the same program
                r = run_cell(ctx, pat, mode)
                results.setdefault((pat.key, mode.key), []).append(r)
                line.append(f"{mode.key} {r['mbps']:.0f}" if r and r["mbps"] else f"{mode.key} FAIL")
            print(f"bench:   {pat.label:36s} " + ", ".join(line) + " MB/s", flush=True)
        extra["micro"].extend(run_micro(ctx))
    return results, extra, time.monotonic() - t_start


def machine_facts(ctx: Ctx) -> list[tuple[str, str]]:
    facts = []
    facts.append(("kernel", platform.release()))
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        model = "?"
    facts.append(("cores", f"{os.cpu_count()} ({model})"))
    try:
        mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
        facts.append(("memory", human(mem * 1024)))
    except (OSError, StopIteration):
        pass
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE,TARGET", "-T", ctx.dir],
                        capture_output=True, text=True).stdout.strip()
    facts.append(("filesystem of BENCH_DIR", f"`{ctx.dir}`: {fs}"))
    if ctx.dev:
        q = f"/sys/block/{ctx.dev}/queue"

        def rd(p):
            try:
                return open(p).read().strip()
            except OSError:
                return "?"
        facts.append(("device", f"{ctx.dev}: {human(int(rd(f'/sys/block/{ctx.dev}/size')) * 512)}, "
                                f"logical block {rd(q + '/logical_block_size')} B, "
                                f"rotational {rd(q + '/rotational')}, read_ahead_kb {rd(q + '/read_ahead_kb')}, "
                                f"scheduler {rd(q + '/scheduler')}, max_sectors_kb {rd(q + '/max_sectors_kb')}"))
    try:
        fio = subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        fio = "missing"
    py = subprocess.run([ctx.python, "-c", "import sys,numpy;print(sys.version.split()[0], numpy.__version__)"],
                        capture_output=True, text=True).stdout.split()
    facts.append(("tools", f"{fio}; python {py[0] if py else '?'}, numpy {py[1] if len(py) > 1 else 'missing'}; "
                           f"glibc {platform.libc_ver()[1]}"))
    head = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"], capture_output=True,
                          text=True).stdout.strip()
    facts.append(("shim", f"`{os.path.relpath(ctx.shim_orig, REPO)}` ({ctx.shim_info}), work tree at commit {head or '?'}"))
    return facts


# --------------------------------------------------------------------------- report


def fmt(v, spec="{:.0f}", none="–"):
    return none if v is None else spec.format(v)


def pct(v):
    if v is None:
        return "–"
    if v > 100:
        return ">100%"
    return f"{v:.1f}%" if v < 10 else f"{v:.0f}%"


def paired_ratios(a_list, b_list, key="mbps"):
    """The per-round ratios a/b of runs made back to back (rounds where either failed left out)."""
    return [a[key] / b[key] for a, b in zip(a_list or [], b_list or [])
            if a and b and a.get(key) and b.get(key)]


def round_ratios(a_list, b_list, key="mbps"):
    """Per-round ratio a/b (paired), median."""
    return med(paired_ratios(a_list, b_list, key))


def summarise(ctx, results, extra):
    """Medians per cell and the per-round pairs the ratios need."""
    S = {}
    for (pk, mk), rs in results.items():
        ok = [r for r in rs if r and r["ok"]]
        if not ok:
            S[(pk, mk)] = {"failed": True, "n": len(rs)}
            continue
        kind = next(p.kind for p in ctx.patterns if p.key == pk)
        moved = [(r["dev_read"] if kind == "read" else r["dev_write"]) for r in ok]
        S[(pk, mk)] = {
            "n": len(ok),
            "mbps": med([r["mbps"] for r in ok]),
            "mbps_min": min(r["mbps"] for r in ok),
            "mbps_max": max(r["mbps"] for r in ok),
            "bytes": med([r["bytes"] for r in ok]),
            "cpu_per_gib": med([r["cpu"] / (r["bytes"] / GiB) for r in ok if r["bytes"]]),
            "dev_ratio": med([m / r["bytes"] for m, r in zip(moved, ok) if m is not None and r["bytes"]]),
            "peak_pct": med([100.0 * r["peak_res"] / r["bytes"] for r in ok if r["bytes"]]),
            "end_pct": med([100.0 * r["end_res"] / r["bytes"] for r in ok if r["bytes"]]),
            "peak_mib": med([r["peak_res"] / MiB for r in ok]),
            "end_mib": med([r["end_res"] / MiB for r in ok]),
            "rss_mib": med([r["maxrss"] / MiB for r in ok]),
            "bounced_pct": med([100.0 * (r["shim_stats"].get("read_bounced_bytes", 0)
                                         + r["shim_stats"].get("write_bounced_bytes", 0)) / r["bytes"]
                                for r in ok if r.get("shim_stats") and r["bytes"]]),
            "fallbacks": sorted({k for r in ok for k in (r.get("shim_stats") or {}).get("fallbacks", {})}),
            "opens_direct": med([(r.get("shim_stats") or {}).get("opens_direct") for r in ok
                                 if r.get("shim_stats")]),
        }
    for pat in ctx.patterns:
        for m in ctx.modes:
            c = S.get((pat.key, m.key))
            if c and not c.get("failed") and m.is_shim:
                c["extra_rss_mib"] = med([
                    (a["maxrss"] - b["maxrss"]) / MiB
                    for a, b in zip(results.get((pat.key, m.key), []), results.get((pat.key, "cold"), []))
                    if a and b and a["ok"] and b["ok"]])
    fio1m = [r for r in extra["fio1m"] if r and r["ok"]]
    S["fio1m"] = {"mbps": med([r["mbps"] for r in fio1m]),
                  "mbps_min": min([r["mbps"] for r in fio1m], default=None),
                  "mbps_max": max([r["mbps"] for r in fio1m], default=None)}
    fio = [r for r in extra["fio"] if r and r["ok"]]
    S["fio"] = {"mbps": med([r["mbps"] for r in fio]),
                "mbps_min": min([r["mbps"] for r in fio], default=None),
                "mbps_max": max([r["mbps"] for r in fio], default=None),
                "n": len(fio)}
    micro = [(a, b) for a, b in extra["micro"] if a and b]
    S["micro"] = {
        "plain_ns": med([a / ctx.micro_count * 1e9 for a, _ in micro]),
        "shim_ns": med([b / ctx.micro_count * 1e9 for _, b in micro]),
        "ratio": med([b / a for a, b in micro]),
        "n": len(micro),
    }
    return S


def fio_round_ratio(results, extra, pk, mk):
    rs = []
    cells = results.get((pk, mk), [])
    for i, f in enumerate(extra["fio"]):
        # the fio run of round i and the cell of round i
        if i < len(cells) and cells[i] and f and cells[i].get("mbps") and f.get("mbps"):
            rs.append(cells[i]["mbps"] / f["mbps"])
    return med(rs)


def ceiling_round_ratio(results, extra, pk, mk):
    """Median over rounds of a cell's rate against min(the round's ceiling, the same program's
    warm-cache rate of the round)."""
    rs = []
    cells, warm = results.get((pk, mk), []), results.get((pk, "warm"), [])
    for i, f in enumerate(extra["fio"]):
        if i < len(cells) and cells[i] and cells[i].get("mbps") and f and f.get("mbps"):
            top = f["mbps"]
            if i < len(warm) and warm[i] and warm[i].get("mbps"):
                top = min(top, warm[i]["mbps"])
            rs.append(cells[i]["mbps"] / top)
    return med(rs)


def amplification(ctx, results, pat, mk):
    """Device bytes per byte asked, cold and under the shim, per round; the bound of issue 14
    (1.1 × max(cold's device bytes, bytes asked) + 64 KiB; sequential rows: one read-ahead
    window more per file) as a fraction per round, the worst round; and the speed against cold."""
    cold, shim = results.get((pat.key, "cold"), []), results.get((pat.key, mk), [])
    window = 4 * MiB
    fracs, ca, sa = [], [], []
    for c, m in zip(cold, shim):
        if not (c and m and c.get("ok") and m.get("ok") and c["bytes"] and m["bytes"]):
            continue
        if c["dev_read"] is None or m["dev_read"] is None:
            continue
        camp, samp = c["dev_read"] / c["bytes"], m["dev_read"] / m["bytes"]
        slack = 64 * KiB + (window * len(ctx.data_paths(pat.data)) if pat.seq else 0)
        bound = 1.1 * max(camp, 1.0) + slack / m["bytes"]
        fracs.append(samp / bound)
        ca.append(camp)
        sa.append(samp)
    if not fracs:
        return None
    return {"cold": med(ca), "shim": med(sa), "worst": max(fracs), "frac": med(fracs),
            "speed": round_ratios(shim, cold)}


def targets(ctx, results, extra, S):
    """[(target, measured, met?)]"""
    shim_modes = [m for m in ctx.modes if m.is_shim]
    rows = []

    def cell(pk, mk):
        c = S.get((pk, mk))
        return None if not c or c.get("failed") else c

    def yn(ok):
        return "–" if ok is None else ("met" if ok else "**not met**")

    for sm in shim_modes:
        tag = "" if sm.key == "shim" else f" ({sm.label})"
        r = round_ratios(results.get(("c1ma", sm.key)), results.get(("c1ma", "direct")))
        rows.append((f"aligned 1 MiB reads ≥ 0.97 × native O_DIRECT{tag}", fmt(r, "{:.2f}×"),
                     yn(None if r is None else r >= 0.97)))
        for pk in ("c1m", "pyinto", "npy"):
            p = next(p for p in PATTERNS if p.key == pk)
            r = round_ratios(results.get((pk, sm.key)), results.get((pk, "direct")))
            rows.append((f"{p.label} ≥ 0.90 × native aligned O_DIRECT{tag}", fmt(r, "{:.2f}×"),
                         yn(None if r is None else r >= 0.90)))
        for pk in ("c4k", "c64k", "c1m", "c1ma", "pyread", "pyinto", "fread", "npy", "small"):
            p = next(p for p in PATTERNS if p.key == pk)
            r = ceiling_round_ratio(results, extra, pk, sm.key)
            rc = round_ratios(results.get((pk, sm.key)), results.get((pk, "cold")))
            ok = None if r is None or rc is None else (r >= 0.9 and rc >= 1.0)
            rows.append((f"{p.label} ≥ 0.9 × min(ceiling, warm) and ≥ buffered cold{tag} (issue 14)",
                         f"{fmt(r, '{:.2f}')}× min(ceiling, warm), {fmt(rc, '{:.2f}')}× cold", yn(ok)))
        for pat in ctx.patterns:
            if pat.kind != "read" or pat.seq:
                continue
            a = amplification(ctx, results, pat, sm.key)
            if a is None:
                continue
            rows.append((f"{pat.label}: device bytes within 1.1 × max(cold, asked) + 64 KiB and no slower "
                         f"than cold{tag} (issue 14)",
                         f"worst round {a['worst']:.2f} of the bound, {fmt(a['speed'], '{:.2f}')}× cold",
                         yn(a["worst"] <= 1.0 and (a["speed"] or 0) >= 1.0)))
        r = round_ratios(results.get(("rand64k", sm.key)), results.get(("rand64k", "direct")))
        c = cell("rand64k", sm.key)
        dr = c["dev_ratio"] if c else None
        rows.append((f"random 64 KiB pread ≥ 0.95 × native, device bytes ≤ 1.1 × asked{tag}",
                     f"{fmt(r, '{:.2f}')}×, device {fmt(dr, '{:.2f}')}× asked",
                     yn(None if r is None or dr is None else (r >= 0.95 and dr <= 1.1))))
        for pk in ("cw4k", "cw1000", "pyw4k", "pyw1000"):
            p = next(p for p in PATTERNS if p.key == pk)
            r = round_ratios(results.get((pk, sm.key)), results.get((pk, "cold")))
            rows.append((f"{p.label} ≥ 1.0 × buffered{tag}", fmt(r, "{:.2f}×"),
                         yn(None if r is None else r >= 1.0)))
        worst = []
        for pat in ctx.patterns:
            c = cell(pat.key, sm.key)
            if c and not pat.mmap:  # a mapping is served by the page cache by design
                worst.append((max(c["peak_pct"] or 0, c["end_pct"] or 0), pat.label, c))
        if worst:
            bad = [w for w in worst if w[0] > 1.0]
            desc = (f"{len(worst) - len(bad)}/{len(worst)} patterns ≤ 1%"
                    + (("; over: " + ", ".join(f"{lab} (peak {pct(c['peak_pct'])}, end {pct(c['end_pct'])})"
                                              for _, lab, c in sorted(bad, key=lambda w: -w[0])))
                       if bad else ""))
            rows.append((f"page cache at end and peak ≤ 1% of the data, every pattern{tag}", desc, yn(not bad)))
        c = cell("t8", sm.key)
        x = c.get("extra_rss_mib") if c else None
        rows.append((f"extra RSS ≤ 64 MiB with 8 threads streaming{tag}", fmt(x, "{:.1f} MiB"),
                     yn(None if x is None else x <= 64)))
    m = S["micro"]
    rows.append(("unmanaged fd: 1M 1-byte read()s ≤ 2% slower with LD_PRELOAD",
                 f"{fmt(m['ratio'], '{:.3f}')}× ({fmt(m['plain_ns'], '{:.0f}')} → {fmt(m['shim_ns'], '{:.0f}')} ns/call)",
                 yn(None if m["ratio"] is None else m["ratio"] <= 1.02)))
    return rows


def write_report(ctx, results, extra, S, facts, elapsed, chart_rel):
    L = []
    shim_modes = [m for m in ctx.modes if m.is_shim]
    L.append("# s3dlio-direct benchmarks\n")
    L.append(f"Generated by `make bench` (`bench/bench.py`) on {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}: "
             f"{human(ctx.nfiles * ctx.file_size)} of data in {ctx.nfiles} `.npy` files of {human(ctx.file_size)}, "
             f"{ctx.rounds} round(s), modes interleaved within each round (order rotated per round), "
             f"each run capped at {ctx.cell_secs} s (a capped run reports what it moved in that time), "
             f"writes of up to {human(ctx.write_size)}. Run time {elapsed / 60:.1f} min.\n")
    L.append("Throughputs are medians over the rounds in MB/s (10^6 bytes/s) of the program's own I/O "
             "time (fsync included for writes); ratios are medians of per-round ratios of runs made "
             "back to back. Rerun: `make bench` (`BENCH_SIZE=`, `BENCH_ROUNDS=`, `BENCH_DIR=`, "
             "`BENCH_MODES=`; see the header of `bench/bench.py`).\n")
    L.append("## Machine\n")
    L.append("| fact | value |\n|---|---|")
    for k, v in facts:
        L.append(f"| {k} | {v} |")
    L.append("")
    if ctx.missing:
        L.append("**Missing tools, their cells are empty:** " + "; ".join(ctx.missing.values()) + "\n")
    # main table
    L.append("## Throughput\n")
    hdr = ["pattern"] + [m.label for m in ctx.modes]
    for sm in shim_modes:
        hdr += [f"{sm.label} / cold", f"{sm.label} / native", f"{sm.label} / ceiling",
                f"device/asked cold → {sm.label}"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for pat in ctx.patterns:
        row = [pat.label]
        for m in ctx.modes:
            why = cell_allowed(ctx, pat, m)
            c = S.get((pat.key, m.key))
            if why:
                row.append("n/a" if not why.startswith("missing") else why)
            elif not c or c.get("failed"):
                row.append("FAILED")
            else:
                row.append(f"{c['mbps']:.0f}")
        for sm in shim_modes:
            row.append(fmt(round_ratios(results.get((pat.key, sm.key)), results.get((pat.key, "cold"))), "{:.2f}"))
            row.append(fmt(round_ratios(results.get((pat.key, sm.key)), results.get((pat.key, "direct"))), "{:.2f}"))
            row.append(fmt(fio_round_ratio(results, extra, pat.key, sm.key), "{:.2f}") if pat.kind == "read" else "")
            cc, cs = S.get((pat.key, "cold")), S.get((pat.key, sm.key))
            if pat.kind == "read" and cc and cs and not cc.get("failed") and not cs.get("failed"):
                row.append(f"{fmt(cc['dev_ratio'], '{:.2f}')} → {fmt(cs['dev_ratio'], '{:.2f}')}")
            else:
                row.append("")
        L.append("| " + " | ".join(row) + " |")
    f = S["fio"]
    L.append(f"| **device ceiling**: {ceiling_label(ctx)} | "
             + " | ".join(fmt(f["mbps"]) if m.key == "direct" else "" for m in ctx.modes)
             + " |" + " |" * (4 * len(shim_modes)))
    f1 = S["fio1m"]
    L.append(f"| the previous ceiling: fio libaio, 1 MiB, 16 in flight, 4 KiB-page buffers | "
             + " | ".join(fmt(f1["mbps"]) if m.key == "direct" else "" for m in ctx.modes)
             + " |" + " |" * (4 * len(shim_modes)))
    L.append("")
    if ctx.hugepages is True:
        L.append(f"The ceiling is the disk's own: fio with 4 MiB requests, 8 in flight, from huge pages "
                 f"(`iomem=shmhuge`; {HUGEPAGES} huge pages reserved with `vm.nr_hugepages` for the run and "
                 f"released after), so that each request is a few segments the disk takes whole. "
                 f"\"/ ceiling\" is each read row's rate against the ceiling of the same round.\n")
    else:
        L.append(f"**The ceiling is not the disk's own**: {ctx.hugepages}, so fio ran with 4 KiB-page "
                 f"buffers, whose 4 MiB requests the disk's 254-segment limit splits into requests of "
                 f"about 1 MiB. \"/ ceiling\" is against that lower figure.\n")
    L.append("\"device/asked\": bytes the process made the device read (`/proc/PID/io` read_bytes) per "
             "byte the program got, buffered cold and under the shim (the amplification).")
    m = S["micro"]
    L.append("")
    L.append(f"Unmanaged-fd micro-benchmark ({ctx.micro_count:,} 1-byte `read()`s of a warm file outside "
             f"`S3DLIO_DIRECT_PATHS`, {m['n']} alternating pairs): {fmt(m['plain_ns'], '{:.1f}')} ns/call "
             f"without the shim, {fmt(m['shim_ns'], '{:.1f}')} ns/call with it: "
             f"**{fmt(m['ratio'], '{:.3f}')}×**.\n")
    L.append(f"Native O_DIRECT reference per row: the C loader/writer opening with O_DIRECT and "
             f"posix_memalign buffers of the same request size (Python and fread rows: the C loader "
             f"with 64 KiB or 8 MiB; numpy.load: 8 MiB requests into a fresh buffer of the file's size per file, "
             f"as numpy.load allocates its array). A 1000-byte write cannot be done with O_DIRECT.\n")
    if chart_rel:
        L.append(f"![throughput and page cache per pattern and mode]({chart_rel})\n")
    # amplification
    L.append("## Read amplification (issue 14)\n")
    L.append("Device bytes per byte asked (`/proc/PID/io` read_bytes of the program), buffered cold and "
             "under the shim, medians over the rounds; the bound is 1.1 × max(cold's, 1) + 64 KiB per run "
             "(sequential rows: one 4 MiB read-ahead window more per file), \"of the bound\" is the worst "
             "round's shim figure against it (≤ 1.00: within); speed is shim against cold, paired.\n")
    L.append("| pattern | kind | cold device/asked | shim device/asked | of the bound (worst round) | "
             "shim speed / cold |")
    L.append("|---|---|---|---|---|---|")
    for pat in ctx.patterns:
        if pat.kind != "read":
            continue
        for sm in shim_modes:
            a = amplification(ctx, results, pat, sm.key)
            if a is None:
                continue
            kind = ("sequential" if pat.seq else "not sequential") + (", mmap" if pat.mmap else "")
            L.append(f"| {pat.label}{'' if sm.key == 'shim' else ' (' + sm.label + ')'} | {kind} | "
                     f"{a['cold']:.2f} | {a['shim']:.2f} | {a['worst']:.2f} | {fmt(a['speed'], '{:.2f}')} |")
    L.append("")
    # targets
    L.append("## Targets (issue 5)\n")
    L.append("| target | measured | |\n|---|---|---|")
    for t, v, ok in targets(ctx, results, extra, S):
        L.append(f"| {t} | {v} | {ok} |")
    L.append("")
    L.append("<!-- analysis -->\n")
    # details
    L.append("## Details per cell\n")
    L.append("MB/s median [min–max over rounds]; CPU: user+system seconds of the process per GiB moved "
             "(Python rows include the interpreter's start); device: bytes the process made the device "
             "move (`/proc/PID/io` read_bytes or write_bytes) per byte asked; cache peak/end: page-cache "
             "residency of the data during/after the run, in % of the bytes the run read or wrote "
             "(mincore sampled every 50 ms; warm runs start fully cached); RSS: peak resident set "
             "(extra: shim minus buffered cold, same round); bounced: bytes the shim copied through "
             "its aligned buffers, % of bytes moved.\n")
    L.append("| pattern | mode | MB/s | CPU s/GiB | device/asked | cache peak | cache end | RSS MiB | shim |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for pat in ctx.patterns:
        for mo in ctx.modes:
            if cell_allowed(ctx, pat, mo):
                continue
            c = S.get((pat.key, mo.key))
            if not c:
                continue
            if c.get("failed"):
                L.append(f"| {pat.label} | {mo.label} | FAILED | | | | | | |")
                continue
            rss = f"{c['rss_mib']:.0f}"
            if "extra_rss_mib" in c and c["extra_rss_mib"] is not None:
                rss += f" (extra {c['extra_rss_mib']:+.0f})"
            shim = ""
            if mo.is_shim:
                shim = f"bounced {c['bounced_pct']:.0f}%" if c["bounced_pct"] is not None else "no stats"
                if c["fallbacks"]:
                    shim += "; fallbacks: " + ", ".join(c["fallbacks"])
            name = pat.label if not mo.native else f"{pat.label} (native: {pat.native_label})"
            L.append(f"| {name} | {mo.label} | {c['mbps']:.0f} [{c['mbps_min']:.0f}–{c['mbps_max']:.0f}] | "
                     f"{fmt(c['cpu_per_gib'], '{:.2f}')} | {fmt(c['dev_ratio'], '{:.2f}')} | "
                     f"{pct(c['peak_pct'])} ({c['peak_mib']:.0f} MiB) | {pct(c['end_pct'])} ({c['end_mib']:.0f} MiB) | "
                     f"{rss} | {shim} |")
    f = S["fio"]
    if f["mbps"]:
        L.append(f"| ceiling: {ceiling_label(ctx)} | native O_DIRECT | {f['mbps']:.0f} "
                 f"[{f['mbps_min']:.0f}–{f['mbps_max']:.0f}] | | | | | | |")
    f1 = S["fio1m"]
    if f1["mbps"]:
        L.append(f"| fio direct=1 1 MiB QD16, 4 KiB pages | native O_DIRECT | {f1['mbps']:.0f} "
                 f"[{f1['mbps_min']:.0f}–{f1['mbps_max']:.0f}] | | | | | | |")
    L.append("")
    return "\n".join(L) + "\n"


def chart(ctx, S, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pats = ctx.patterns
    modes = ctx.modes
    fig, axes = plt.subplots(2, 1, figsize=(15, 9.5), sharex=True)
    width = 0.8 / len(modes)
    colors = ["#4c72b0", "#8c8c8c", "#55a868", "#c44e52", "#dd8452", "#8172b3", "#937860"]
    for j, m in enumerate(modes):
        xs, ys, ps = [], [], []
        for i, p in enumerate(pats):
            c = S.get((p.key, m.key))
            if c and not c.get("failed") and not cell_allowed(ctx, p, m):
                xs.append(i + (j - (len(modes) - 1) / 2) * width)
                ys.append(c["mbps"])
                ps.append(max(c["peak_pct"] or 0, 0.01))
        axes[0].bar(xs, ys, width, label=m.label, color=colors[j % len(colors)])
        axes[1].bar(xs, [min(p, 100) for p in ps], width, label=m.label, color=colors[j % len(colors)])
    if S["fio"]["mbps"]:
        axes[0].axhline(S["fio"]["mbps"], color="k", ls="--", lw=1, label="device ceiling (fio 4 MiB QD8)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("MB/s (median, log scale)")
    axes[0].legend(ncol=4, fontsize=8)
    axes[0].set_title(f"s3dlio-direct benchmark: {human(ctx.nfiles * ctx.file_size)}, {ctx.rounds} round(s)")
    axes[1].set_yscale("log")
    axes[1].set_ylim(0.01, 150)
    axes[1].axhline(1.0, color="k", ls=":", lw=1)
    axes[1].set_ylabel("page cache peak, % of data (log)")
    axes[1].set_xticks(range(len(pats)))
    axes[1].set_xticklabels([p.label for p in pats], rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def add_common_args(ap, out_default, size_default="2GiB", smoke_rounds=1):
    """The options (and environment variables) bench.py and bench/ab.py share."""
    env = os.environ.get
    ap.add_argument("--dir", default=env("BENCH_DIR", "/var/tmp/s3dlio-bench"))
    ap.add_argument("--size", type=parse_size, default=parse_size(env("BENCH_SIZE", size_default)))
    ap.add_argument("--files", type=int, default=int(env("BENCH_FILES", "16")))
    ap.add_argument("--rounds", type=int, default=int(env("BENCH_ROUNDS", "3")))
    ap.add_argument("--cell-secs", type=float, default=float(env("BENCH_CELL_SECS", "5")))
    ap.add_argument("--write-size", type=parse_size, default=parse_size(env("BENCH_WRITE_SIZE", "1GiB")))
    ap.add_argument("--out", default=env("BENCH_OUT", out_default))
    ap.add_argument("--raw", default=env("BENCH_RAW"), help="also write the raw results as JSON here")
    ap.add_argument("--python", default=env("BENCH_PYTHON"), help="interpreter of the Python rows (default: this one)")
    ap.add_argument("--keep", action="store_true", default=env("BENCH_KEEP", "") not in ("", "0"))
    ap.add_argument("--strict", action="store_true", default=env("BENCH_STRICT", "") not in ("", "0"))
    ap.add_argument("--smoke", action="store_true", help=f"a tiny run: 64 MiB, {smoke_rounds} round(s), 1 s cells")


def apply_smoke(a, rounds=1):
    if a.smoke:
        a.size, a.rounds, a.cell_secs, a.files = min(a.size, 64 * MiB), rounds, min(a.cell_secs, 1.0), 8


def snapshot_shim(ctx: Ctx, src: str, sub: str = "shim") -> str:
    """A private copy of a library under ctx.dir/sub: a rebuild during the run must not change
    what is measured. Returns the copy's path."""
    snap = os.path.join(ctx.dir, sub)
    os.makedirs(snap, exist_ok=True)
    dst = os.path.join(snap, os.path.basename(src))
    shutil.copy2(src, dst)
    return dst


def bench_dir_info(ctx: Ctx, prog="bench") -> str:
    """Sets ctx.dev; returns the filesystem type of ctx.dir (warns on tmpfs/ramfs)."""
    ctx.dev = block_device_of(ctx.dir)
    fs = subprocess.run(["stat", "-f", "-c", "%T", ctx.dir], capture_output=True, text=True).stdout.strip()
    if fs in ("tmpfs", "ramfs"):
        print(f"{prog}: WARNING: {ctx.dir} is on {fs}: there is no device to measure; use BENCH_DIR=", file=sys.stderr)
    return fs


def exit_status(S, who: str) -> int:
    """1 (after naming them) if any cell of the summary failed, else 0."""
    failed = [k for k, v in S.items() if isinstance(v, dict) and v.get("failed")]
    if failed:
        print(f"{who}: FAILED cells: {failed}", file=sys.stderr)
        return 1
    return 0


def main():
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap, os.path.join(REPO, "docs", "benchmarks.md"))
    ap.add_argument("--patterns", default=env("BENCH_PATTERNS", ""),
                    help="comma-separated row keys to run (default: every row), e.g. c64k,small,h5shuf")
    ap.add_argument("--modes", default=env("BENCH_MODES", DEFAULT_MODES))
    ap.add_argument("--shim", default=env("BENCH_SHIM", os.path.join(REPO, "target", "release", "libs3dlio_direct.so")))
    a = ap.parse_args()
    apply_smoke(a)
    compile_tools()
    ctx = Ctx(a)
    check_tools(ctx)
    os.makedirs(ctx.dir, exist_ok=True)
    ctx.shim_info = f"built {datetime.datetime.fromtimestamp(os.path.getmtime(ctx.shim)).strftime('%Y-%m-%d %H:%M')}"
    ctx.shim = snapshot_shim(ctx, ctx.shim)
    fs = bench_dir_info(ctx)
    print(f"bench: {human(ctx.size)} in {ctx.dir} (device {ctx.dev}, {fs}), {ctx.rounds} round(s), "
          f"modes {','.join(ctx.mode_keys)}", flush=True)
    facts = machine_facts(ctx)
    load0 = os.getloadavg()
    reserve_hugepages(ctx)
    if ctx.hugepages is not True:
        print(f"bench: NOTE: {ctx.hugepages}: the ceiling is measured with 4 KiB-page buffers instead",
              file=sys.stderr, flush=True)
    try:
        generate(ctx)
        results, extra, elapsed = run_all(ctx)
    finally:
        release_hugepages(ctx)
        if not ctx.keep:
            shutil.rmtree(ctx.dir, ignore_errors=True)
    load1 = os.getloadavg()
    facts.append(("load average (1 min) at start / end", f"{load0[0]:.2f} / {load1[0]:.2f} "
                  "(shared machine: other jobs ran during the benchmark)"))
    S = summarise(ctx, results, extra)
    out = os.path.abspath(a.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    chart_rel = None
    if "matplotlib" not in ctx.missing:
        png = os.path.splitext(out)[0] + ".png"
        chart(ctx, S, png)
        chart_rel = os.path.basename(png)
    else:
        print("bench: MISSING matplotlib: no chart drawn", file=sys.stderr)
    report = write_report(ctx, results, extra, S, facts, elapsed, chart_rel)
    # keep a hand-written analysis section of an earlier report at the same path
    if os.path.exists(out):
        old = open(out).read()
        if "<!-- analysis -->" in old and "<!-- /analysis -->" in old:
            keep = old[old.index("<!-- analysis -->"):old.index("<!-- /analysis -->") + len("<!-- /analysis -->")]
            report = report.replace("<!-- analysis -->", keep, 1)
    with open(out, "w") as fh:
        fh.write(report)
    raw = {"config": {"size": ctx.nfiles * ctx.file_size, "files": ctx.nfiles, "rounds": ctx.rounds,
                      "cell_secs": ctx.cell_secs, "modes": ctx.mode_keys},
           "cells": {f"{pk}/{mk}": rs for (pk, mk), rs in results.items()},
           "fio": extra["fio"], "fio1m": extra["fio1m"], "micro": extra["micro"], "missing": ctx.missing,
           "hugepages": ctx.hugepages}
    if a.raw:
        with open(a.raw, "w") as fh:
            json.dump(raw, fh, indent=1, default=str)
    for t, v, ok in targets(ctx, results, extra, S):
        print(f"bench: {ok:12s} {t}: {v}")
    print(f"bench: wrote {out}" + (f" and {chart_rel}" if chart_rel else "") + f" in {elapsed / 60:.1f} min",
          flush=True)
    return exit_status(S, "bench")


if __name__ == "__main__":
    sys.exit(main())
