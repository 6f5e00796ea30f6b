"""Crash consistency (issue #12, point 6): after a power cut that flushed the journal but not
the data, every byte inside the file's size is one the program wrote there (acknowledged or in
flight) or the file's earlier content there, never zeros or foreign bytes; the file may be
shorter than what was acknowledged, as without the library; with fsync, fdatasync, O_SYNC or
O_DSYNC everything acknowledged before them is there.

Each run gets a fresh ext4 on its own loop device with 4096-byte sectors (CrashFs). The
writer (c-harness/writer.c) writes the deterministic stream gen_byte(seed, offset) of
common.h in the patterns of CASES, under the library and plainly (the control). The test
calls ioctl(EXT4_IOC_SHUTDOWN, EXT4_GOING_FLAGS_LOGFLUSH) on the mounted filesystem, kills
the writer, unmounts, detaches the loop device, attaches the image again and mounts it (the
journal is replayed), then compares every byte of the file with the stream. Two cuts:

- running: when the writer has written past a seeded point, while it goes on. ext4 (with
  dioread_nolock, its default) journals a larger size when it submits the write-back of a
  file's end and marks the blocks written only when that I/O completes, so a cut while
  write-back is in flight leaves zeros inside the size, also without the library (the plain
  control shows it when the cut falls in an fsync). Here zeros are allowed outside what was
  acknowledged durable; foreign bytes never.
- paused: the writer stops after the call that passes the seeded point, the test waits until
  no page of the file is under write-back (cachestat), then cuts. Nothing is in flight, so
  every byte inside the size must be the program's: a zero there is a size made durable over
  bytes that were only cached. ext4's one exception, the rest of the last block after the
  size grew inside an already allocated block, is allowed (the plain control shows it).

Every failure message names the case, the seed, the data seed and the cut point; rerun one
case with `pytest 'tests/test_crash.py::test_crash[paused-odd-write-seed1-shim]'`, or more
seeds with S3DLIO_CRASH_SEEDS=1-20 (S3DLIO_CRASH_PLAIN_SEEDS for the control)."""

from __future__ import annotations

import ctypes
import fcntl
import os
import random
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    SHIM_ENV,
    bin_path,
    disk_tmp_root,
    fdinfo_lines,
    is_direct,
    need_root,
    sh,
    unavailable,
)

EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_LOGFLUSH = 1  # flush the journal, not the data: a power cut after a commit
MASK64 = (1 << 64) - 1
KERNEL_TAIL = 4096  # the filesystem's block size (mkfs -b 4096)


# --------------------------------------------------------------------------- the oracle


def gen_bytes(seed: int, start: int, n: int) -> np.ndarray:
    """gen_byte(seed, start..start+n) of c-harness/common.h, as a numpy uint8 array."""
    if n <= 0:
        return np.zeros(0, dtype=np.uint8)
    w0, w1 = start // 8, (start + n + 7) // 8
    words = np.arange(w0, w1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = words * np.uint64(0x9E3779B97F4A7C15) + np.uint64((seed * 0xD1B54A32D192ED03 + 1) & MASK64)
        z = (z ^ (z >> np.uint64(31))) * np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(29)
    b = z.astype("<u8").view(np.uint8)
    off = start - w0 * 8
    return b[off:off + n]


# --------------------------------------------------------------------------- the filesystem


class CrashFs:
    """A fresh ext4 (4096-byte blocks) on its own loop device with 4096-byte logical sectors,
    that can be shut down like a power cut and mounted again from the same image."""

    def __init__(self, size: int = 768 << 20):
        self.base = Path(tempfile.mkdtemp(prefix="s3d-crash-", dir=disk_tmp_root()))
        os.chmod(self.base, 0o755)
        self.img = self.base / "crash.img"
        self.mnt = self.base / "mnt"
        self.mnt.mkdir()
        self.loop: str | None = None
        self.mounted = False
        with open(self.img, "wb") as f:
            f.truncate(size)
        self._attach()
        sh(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard", self.loop], timeout=120)
        self._mount()
        os.chmod(self.mnt, 0o1777)

    def _attach(self):
        self.loop = sh(["losetup", "--find", "--show", "--sector-size", "4096", str(self.img)]).stdout.strip()
        ss = sh(["blockdev", "--getss", self.loop]).stdout.strip()
        if ss != "4096":
            raise RuntimeError(f"{self.loop} has logical sector size {ss}, wanted 4096")

    def _mount(self):
        sh(["mount", "-t", "ext4", self.loop, str(self.mnt)])
        self.mounted = True

    def _umount(self):
        if not self.mounted:
            return
        for _ in range(40):
            r = subprocess.run(["umount", str(self.mnt)], capture_output=True, text=True)
            if r.returncode == 0 or "not mounted" in r.stderr:
                self.mounted = False
                return
            time.sleep(0.25)
        raise RuntimeError(f"umount {self.mnt}: {r.stderr.strip()}")

    def _detach(self):
        if self.loop is None:
            return
        for _ in range(40):
            r = subprocess.run(["losetup", "-d", self.loop], capture_output=True, text=True)
            if r.returncode == 0:
                self.loop = None
                return
            time.sleep(0.25)
        raise RuntimeError(f"losetup -d {self.loop}: {r.stderr.strip()}")

    def shutdown(self, flags: int = EXT4_GOING_FLAGS_LOGFLUSH):
        """ioctl(EXT4_IOC_SHUTDOWN, flags) on the mounted filesystem: from now on every call
        on it fails with EIO and nothing more reaches the device."""
        fd = os.open(self.mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", flags))
        finally:
            os.close(fd)

    def remount(self):
        """Unmount, detach the loop device (nothing of the old block device's cache survives),
        attach the image again and mount it: ext4 replays its journal, as after a reboot."""
        self._umount()
        self._detach()
        self._attach()
        self._mount()

    def close(self):
        try:
            self._umount()
        except RuntimeError:
            subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)
        try:
            self._detach()
        except RuntimeError:
            pass
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def crash_fs():
    need_root("create and shut down a loop-device ext4")
    try:
        fs = CrashFs()
    except Exception as ex:  # noqa: BLE001
        unavailable(f"could not set up the crash-test ext4 on a 4096-sector loop device: {ex}")
    try:
        yield fs
    finally:
        fs.close()


# --------------------------------------------------------------------------- the cases


MiB = 1 << 20


@dataclass(frozen=True)
class Case:
    chunks: str  # writer -c
    mode: str = "write"  # writer -m
    total: int = 64 * MiB
    extra: tuple = ()  # more writer options (-y N, -Y N, -O sync|dsync)
    overwrite: int = 0  # an existing, durable file of this size (other data) is overwritten in place (-n)
    env: dict = field(default_factory=dict)  # more library variables for the shim run


ODD = "1000,4097,1048579,4096,65536,1,8191"
SMALL = "1,7,100,513,4095,3,2048,999"
LARGE = "1048579,3145741,2097151,5000003,4097"

CASES = {
    "odd-write": Case(ODD),
    "small-write": Case(SMALL, total=8 * MiB),
    "large-misaligned-write": Case(LARGE),
    "odd-pwrite": Case(ODD, mode="pwrite"),
    "large-writev": Case(LARGE, mode="writev"),
    "overwrite-large": Case(LARGE, overwrite=40 * MiB + 12345),
    "overwrite-odd-pwrite": Case(ODD, mode="pwrite", overwrite=24 * MiB + 1),
    "odd-write-behind-off": Case(ODD, env={"S3DLIO_DIRECT_WRITE_BEHIND": "0"}),
    "small-write-behind-off": Case(SMALL, total=4 * MiB, env={"S3DLIO_DIRECT_WRITE_BEHIND": "0"}),
    "odd-dontcache": Case(ODD, env={"S3DLIO_DIRECT_MODE": "dontcache"}),
    "small-dontcache": Case(SMALL, total=4 * MiB, env={"S3DLIO_DIRECT_MODE": "dontcache"}),
    # acknowledged durable: everything below the last "SYNCED <n>" the test saw before the cut
    "odd-fsync": Case(ODD, extra=("-y", str(4 * MiB))),
    "large-fdatasync": Case(LARGE, extra=("-Y", str(6 * MiB))),
    "small-fsync": Case(SMALL, total=8 * MiB, extra=("-y", str(MiB // 2))),
    "overwrite-fsync": Case(ODD, mode="pwrite", overwrite=24 * MiB + 1, extra=("-y", str(3 * MiB))),
    "large-o-sync": Case(LARGE, total=48 * MiB, extra=("-O", "sync")),
    "odd-o-dsync": Case("65537,1048579,4097,300001", total=32 * MiB, extra=("-O", "dsync")),
}


def _seeds(var: str, default: tuple) -> tuple:
    """Seeds from the environment ("1-20" or "3,7"), for longer runs by hand."""
    v = os.environ.get(var, "").strip()
    if not v:
        return default
    if "-" in v:
        a, b = v.split("-", 1)
        return tuple(range(int(a), int(b) + 1))
    return tuple(int(x) for x in v.split(","))


SHIM_SEEDS = _seeds("S3DLIO_CRASH_SEEDS", (1, 2))
PLAIN_SEEDS = _seeds("S3DLIO_CRASH_PLAIN_SEEDS", (1,))
# the control: the plain run of every case whose library variables do not make it another case
PARAMS = [(c, s, "shim") for c in CASES for s in SHIM_SEEDS] + [
    (c, s, "plain") for c in CASES for s in PLAIN_SEEDS if not CASES[c].env]


class Lines:
    """Collects a pipe's lines in a thread: the last "SYNCED <n>" seen so far, and whether
    "PAUSED <n>" came."""

    def __init__(self, pipe):
        self.lines: list[str] = []
        self.last_synced = 0
        self.paused = threading.Event()
        self._lock = threading.Lock()
        self._t = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._t.start()

    def _pump(self, pipe):
        for raw in iter(pipe.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            with self._lock:
                self.lines.append(line)
                if line.startswith("SYNCED "):
                    self.last_synced = int(line.split()[1])
            if line.startswith("PAUSED "):
                self.paused.set()
        self.paused.set()  # end of output: nobody waits for a pause that cannot come

    def synced(self) -> int:
        with self._lock:
            return self.last_synced

    def text(self, tail=20) -> str:
        self._t.join(timeout=30)
        with self._lock:
            return "\n".join(self.lines[-tail:])


def _written(pid: int) -> int:
    """Bytes process pid has passed to write calls so far (/proc/PID/io wchar): the writer's
    progress in every mode (pwrite and an overwrite in place do not move the size)."""
    try:
        with open(f"/proc/{pid}/io") as fi:
            for line in fi:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


_libc = ctypes.CDLL(None, use_errno=True)
SYS_cachestat = 451  # x86-64 and the generic table alike


def writeback_pages(path: Path) -> tuple[int, int]:
    """cachestat(2) of the whole file: (pages dirty, pages under writeback)."""
    rng = (ctypes.c_uint64 * 2)(0, 0)
    cs = (ctypes.c_uint64 * 5)()
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syscall(ctypes.c_long(SYS_cachestat), ctypes.c_int(fd), rng, cs, ctypes.c_uint(0)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"cachestat: {os.strerror(e)}")
    finally:
        os.close(fd)
    return int(cs[1]), int(cs[2])


def _write_durable(path: Path, data: bytes):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _runs(idx: np.ndarray, limit=5) -> str:
    """The first few runs of consecutive offsets in idx, as text."""
    if idx.size == 0:
        return ""
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [idx.size - 1]])
    out = [f"[{int(idx[a])}, {int(idx[b]) + 1}) {int(idx[b]) + 1 - int(idx[a])} bytes" for a, b in zip(starts[:limit], ends[:limit])]
    return ", ".join(out) + (f" ... ({starts.size} runs)" if starts.size > limit else "")


def _describe(data: np.ndarray, new: np.ndarray, bad: np.ndarray, old: np.ndarray | None) -> str:
    first = int(bad[0])
    zeros = int(np.count_nonzero(data[bad] == 0))
    lo, hi = first, min(first + 16, data.size)
    msg = (f"{bad.size} bytes ({zeros} of them zero); first at {first}; runs (zero bytes the program also "
           f"wrote there split them): {_runs(bad)}\n"
           f"  file   [{lo}:{hi}] {data[lo:hi].tobytes().hex()}\n  wanted [{lo}:{hi}] {new[lo:hi].tobytes().hex()}")
    if old is not None and first < old.size:
        msg += f"\n  or old [{lo}:{hi}] {old[lo:min(hi, old.size)].tobytes().hex()}"
    return msg


def check_after_crash(what: str, data: np.ndarray, case: Case, dseed: int, old: np.ndarray | None, synced: int,
                      quiescent: bool, stdout_tail: str):
    """The oracle. Always: the size is at most what was written, at least what was acknowledged
    durable (and the durable earlier size); below what was acknowledged durable every byte is
    the program's; elsewhere every byte is the program's, or the earlier content inside the
    earlier size, or zero where ext4 may leave zeros (below). Never a foreign byte.

    Zeros: ext4 (dioread_nolock, its default) journals a larger size when it submits the
    write-back of the end of a file and marks the blocks written only when the I/O completes,
    so a cut while write-back is in flight leaves zeros inside the size: also without the
    library (the plain control, cut during an fsync, shows it). At a quiescent cut (`paused`:
    the writer stopped between two calls and no page of the file under write-back) nothing is
    in flight, so every byte inside the size must be the program's: a zero there is a size made
    durable over bytes that were only cached (issue #12's bug), save ext4's one exception, the
    rest of the last block after a size grown inside an already allocated block."""
    size = data.size
    assert size <= case.total, f"{what}: the file is {size} bytes after the crash, longer than the {case.total} written"
    if old is not None:
        assert size >= old.size, f"{what}: the file shrank to {size} bytes, below its durable earlier size {old.size}"
    assert size >= synced, f"{what}: the file is {size} bytes after the crash, shorter than the {synced} acknowledged durable"
    new = gen_bytes(dseed, 0, size)
    ok = data == new
    n_old = 0
    if old is not None:
        n_old = min(size, old.size)
        earlier = np.zeros(size, dtype=bool)
        earlier[synced:n_old] = old[synced:n_old] == data[synced:n_old]
        ok |= earlier
    bad = np.flatnonzero(~ok)
    durable = bad[bad < synced]
    if durable.size:
        raise AssertionError(f"{what}: after the crash bytes acknowledged durable (below {synced}) are not the "
                             f"program's:\n{_describe(data, new, durable, old)}\nwriter stdout: {stdout_tail}")
    in_old = bad[bad < n_old]
    if in_old.size:
        raise AssertionError(f"{what}: after the crash bytes inside the earlier size {n_old} are neither the earlier "
                             f"content nor the program's:\n{_describe(data, new, in_old, old)}\nwriter stdout: {stdout_tail}")
    foreign = bad[data[bad] != 0]
    if foreign.size:
        raise AssertionError(f"{what}: after the crash the file holds foreign bytes (neither the program's nor zero):\n"
                             f"{_describe(data, new, foreign, old)}\nwriter stdout: {stdout_tail}")
    if bad.size and bad[0] >= (size - 1) // KERNEL_TAIL * KERNEL_TAIL and not data[bad[0]:].any():
        print(f"{what}: {size - int(bad[0])} zero bytes ending the last block (ext4's own)")
        bad = bad[:0]
    if bad.size and quiescent:
        raise AssertionError(f"{what}: after a cut with nothing in flight the file ({size} bytes) holds zeros where the "
                             f"program wrote other bytes:\n{_describe(data, new, bad, old)}\nwriter stdout: {stdout_tail}")
    if bad.size:
        print(f"{what}: {bad.size} zero bytes inside the size where write-back was in flight at the cut: {_runs(bad, 3)}")
    return int(bad.size)


def crash_run(run, fs: CrashFs, name: str, seed: int, side: str, cut: str):
    """One writer, one cut. cut='running': when the writer has written past a seeded point,
    while it goes on; cut='paused': the writer stops after the call that passes that point,
    the test waits until no page of the file is under write-back, then cuts."""
    case = CASES[name]
    shim = side == "shim"
    rng = random.Random(f"{name}/{seed}")
    dseed = rng.randrange(1, 1 << 31)
    threshold = rng.randrange(case.total // 20, case.total * 7 // 10)
    env = {**case.env} if shim else None
    what = (f"crash case {name} seed {seed} ({side}, cut {cut}): data seed {dseed}, cut past {threshold} bytes, "
            f"writer -c {case.chunks} -m {case.mode} {' '.join(case.extra)}"
            f"{' env ' + str(case.env) if case.env and shim else ''}"
            f"{' ' + str(SHIM_ENV) if SHIM_ENV and shim else ''}")

    d = fs.mnt / "data"
    d.mkdir()
    f = d / "f"
    old = None
    if case.overwrite:
        old = gen_bytes(dseed ^ 0x5A5A5A5A, 0, case.overwrite)
        _write_durable(f, old.tobytes())
    argv = [bin_path("writer"), "-s", str(case.total), "-c", case.chunks, "-m", case.mode, "-S", str(dseed), "-F",
            *case.extra]
    if case.overwrite:
        argv.append("-n")
    if cut == "paused":
        argv += ["-p", str(threshold)]
    argv.append(f)
    p = run.popen(argv, shim=shim, paths=str(d) if shim else None, env=env,
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = Lines(p.stdout)
    err = Lines(p.stderr)
    in_flight = (0, 0)
    try:
        if cut == "paused":
            out.paused.wait(timeout=300)
            # nothing in flight: wait for the write-back the writer (or the library) started
            for _ in range(60000):
                in_flight = writeback_pages(f)
                if in_flight[1] == 0:
                    break
                time.sleep(0.001)
        else:
            while p.poll() is None and _written(p.pid) <= threshold:
                time.sleep(0.0005)
        finished = p.poll() is not None
        synced = out.synced()  # acknowledged durable before the cut
        at_cut = _written(p.pid)
        fs.shutdown(EXT4_GOING_FLAGS_LOGFLUSH)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=60)
    stdout_tail, stderr_tail = out.text(), err.text(50)
    what += (f"; written at the cut {at_cut}, acknowledged durable {synced}, "
             f"{'writer had finished (status ' + str(p.returncode) + ')' if finished else 'writer was running'}")
    if cut == "paused":
        what += f", pages dirty/under write-back at the cut {in_flight}"
        assert "PAUSED" in stdout_tail, f"{what}: the writer never paused\nstdout: {stdout_tail}\nstderr: {stderr_tail}"
        assert in_flight[1] == 0, f"{what}: write-back of the file never finished"
    if finished and p.returncode != 0:
        raise AssertionError(f"{what}: the writer failed before the cut\nstdout: {stdout_tail}\nstderr: {stderr_tail}")
    if shim and case.env.get("S3DLIO_DIRECT_MODE", SHIM_ENV.get("S3DLIO_DIRECT_MODE", "direct")) == "direct":
        flags = [fl for lab, _fd, fl in fdinfo_lines(stderr_tail) if lab == str(f)]
        assert flags and is_direct(flags[0]), (
            f"{what}: the writer's file was not direct under the library (no O_DIRECT twin in fdinfo)\n{stderr_tail}")

    fs.remount()
    data = np.frombuffer(f.read_bytes(), dtype=np.uint8) if f.exists() else np.zeros(0, np.uint8)
    zeros = check_after_crash(what, data, case, dseed, old, synced, cut == "paused", stdout_tail)
    print(f"{what}; after the crash {data.size} bytes, all of them the program's"
          f"{f' or zeros in flight ({zeros})' if zeros else ''}")


@pytest.mark.parametrize("name,seed,side", PARAMS, ids=[f"{c}-seed{s}-{side}" for c, s, side in PARAMS])
@pytest.mark.parametrize("cut", ["paused", "running"])
def test_crash(run, crash_fs, name, seed, side, cut):
    crash_run(run, crash_fs, name, seed, side, cut)


def test_oracle_matches_writer(run, crash_fs):
    """The numpy oracle is the writer's stream (a complete plain run, every mode), and the
    shutdown helper really cuts: a buffered file without fsync loses its unsynced tail."""
    d = crash_fs.mnt / "data"
    d.mkdir()
    for mode in ("write", "pwrite", "writev"):
        f = d / f"ok-{mode}"
        r = run([bin_path("writer"), "-s", "3000017", "-S", "77", "-m", mode, f], shim=False)
        assert r.returncode == 0, r.stdout + r.stderr
        data = np.frombuffer(f.read_bytes(), dtype=np.uint8)
        assert data.size == 3000017 and np.array_equal(data, gen_bytes(77, 0, 3000017)), f"oracle differs ({mode})"
    assert np.array_equal(gen_bytes(77, 1001, 999), gen_bytes(77, 0, 2000)[1001:]), "oracle not offset-consistent"
    g = d / "unsynced"
    r = run([bin_path("writer"), "-s", "3000017", "-S", "78", "-f", d / "synced"], shim=False)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run([bin_path("writer"), "-s", "3000017", "-S", "79", g], shim=False)
    assert r.returncode == 0, r.stdout + r.stderr
    crash_fs.shutdown()
    crash_fs.remount()
    assert (d / "synced").stat().st_size == 3000017, "an fsync'd file did not survive the shutdown"
    assert g.stat().st_size < 3000017, (
        "a buffered file written without fsync survived the shutdown whole: the cut does not cut "
        f"(size {g.stat().st_size})")
