"""Fixtures and helpers for the s3dlio-direct integration suite.

Every test compares a run through the shim with a plain run of the same program, or with
the kernel's own view (/proc/<pid>/fdinfo flags, fincore), never with the shim's word alone.

Fixtures
  shim        path of the .so that `make build` just built (S3DLIO_SHIM overrides); a test
              that needs it FAILS when it is missing or older than the sources.
  run         Runner: run(cmd, shim=True, env=None, paths=None, user=None, ...) in a cleaned
              environment (LD_PRELOAD and every S3DLIO_DIRECT_* inherited are dropped).
  strict_fs   ext4 on a loop device with 4096-byte logical sectors (rejects misalignment)
  ramfs       ramfs (rejects O_DIRECT)
  tmpfs       tmpfs (accepts any alignment)
  disk        a directory on the ordinary disk (512/512)
  strict_blockdev  a bare loop device with 4096-byte sectors and random content
Each filesystem fixture has its own mount point and is torn down fully. Without root (or if
setup fails) a test is SKIPPED loudly; under CI=true it FAILS instead.
"""

from __future__ import annotations

import difflib
import os
import re
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "c-harness" / "bin"
DEFAULT_SHIM = REPO / "target" / "release" / "libs3dlio_direct.so"
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")
O_DIRECT = 0o40000
O_SYNC = 0o4010000
O_DSYNC = 0o10000
NOBODY = 65534
DEFAULT_TIMEOUT = 120


# --------------------------------------------------------------------------- helpers


def bin_path(name: str) -> str:
    p = BIN / name
    if not p.exists():
        pytest.fail(f"c-harness program {p} is missing: run `make harness` (or `make test`)")
    return str(p)


def disk_tmp_root() -> str:
    """A directory on the ordinary disk: /tmp unless /tmp is tmpfs/ramfs."""
    for cand in (tempfile.gettempdir(), "/var/tmp", str(REPO)):
        try:
            out = subprocess.run(["stat", "-f", "-c", "%T", cand], capture_output=True, text=True, timeout=10)
        except Exception:
            continue
        if out.returncode == 0 and out.stdout.strip() not in ("tmpfs", "ramfs", "overlayfs", "fuseblk"):
            return cand
    return "/var/tmp"


def unavailable(msg: str):
    """Loud skip outside CI, failure under CI=true."""
    banner = f"SKIPPED: {msg}"
    if IN_CI:
        pytest.fail(f"{banner} -- CI=true, so this is a failure, not a skip")
    sys.stderr.write(f"\n*** {banner} ***\n")
    pytest.skip(banner)


def need_root(what: str):
    if os.geteuid() != 0:
        unavailable(f"needs root to {what}")


def sh(cmd, check=True, timeout=60, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({r.returncode}): {r.stderr.strip()}")
    return r


# Extra variables for every run under the shim, e.g. "S3DLIO_DIRECT_READAHEAD=0 S3DLIO_DIRECT_WRITE_BEHIND=0"
# to run the suite with the speed mechanisms off (`make test` does both).
SHIM_ENV = dict(kv.split("=", 1) for kv in os.environ.get("S3DLIO_TEST_SHIM_ENV", "").split())


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("S3DLIO_DIRECT_")}
    env["LC_ALL"] = "C"
    return env


FDINFO_RE = re.compile(r"^FDINFO (.*) fd=(\d+) flags:\s+([0-7]+)(?:\s+twin:\s+([0-7]+))?\s*$")


def fdinfo_lines(stderr, own: bool = False) -> list[tuple[str, int, int]]:
    """Parse the c-harness "FDINFO <label> fd=<n> flags:\\t<octal>[ twin:\\t<octal>]" lines:
    [(label, fd, flags)]. The flags are the program's descriptor's, with O_DIRECT added when
    the library's private twin of the file has it (where the kernel shows its direct I/O);
    with `own`, the program's descriptor's alone."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    out = []
    for line in stderr.splitlines():
        m = FDINFO_RE.match(line)
        if m:
            flags = int(m.group(3), 8)
            if m.group(4) and not own:
                flags |= int(m.group(4), 8) & O_DIRECT
            out.append((m.group(1), int(m.group(2)), flags))
    return out


def fdinfo_of(stderr, label: str) -> int:
    """Flags of the first FDINFO line whose label is `label`."""
    for lab, _fd, fl in fdinfo_lines(stderr):
        if lab == label:
            return fl
    raise AssertionError(f"no FDINFO line for {label!r} in stderr:\n{_text(stderr)}")


def is_direct(flags: int) -> bool:
    return bool(flags & O_DIRECT)


# For Python programs the tests run: read_whole(path) reads a file in 1 MiB pieces and gives
# (the kernel's flags for its descriptor, bytes read); and the kernel's view of a descriptor as
# the c-harness prints it ("flags:\t<octal>", plus " twin:\t<octal>" for the library's
# private O_DIRECT twin of the file, where the kernel shows the library's direct I/O).
FDINFO_PY = r"""
import os
def _own_flags(fd):
    with open(f"/proc/self/fdinfo/{fd}") as fi:
        for line in fi:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
def _twin_of(fd):
    import os, resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    floor = soft - min(max(soft // 16, 1), 64)
    st = os.fstat(fd)
    for n in sorted(int(x) for x in os.listdir("/proc/self/fd")):
        if n == fd or n < floor:
            continue
        try:
            o = os.fstat(n)
            if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino) and _own_flags(n) & 0o40000:
                return n
        except OSError:
            pass
def fdinfo_text(fd):
    t = _twin_of(fd)
    own = f"flags:\t{_own_flags(fd):07o}"
    return own if t is None else f"{own} twin:\t{_own_flags(t):o}"
def kernel_direct(fd):
    return bool(_own_flags(fd) & 0o40000) or _twin_of(fd) is not None
def kernel_flags(fd):
    return _own_flags(fd) | (0o40000 if kernel_direct(fd) else 0)
def read_whole(path):
    fd = os.open(path, os.O_RDONLY)
    flags = kernel_flags(fd)
    n = 0
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            break
        n += len(b)
    os.close(fd)
    return flags, n
"""


def own_fdinfo_flags(pid: int, fd: int) -> int:
    """The kernel's flags of /proc/<pid>/fdinfo/<fd> (octal line 'flags:')."""
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError(f"no flags line in /proc/{pid}/fdinfo/{fd}")


def library_fd_floor(pid: int) -> int:
    """The lowest number the library's private descriptors may have in process pid: at or
    above its soft RLIMIT_NOFILE, or in the few numbers just below it (libfd.rs)."""
    soft = resource.prlimit(pid, resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return soft - min(max(soft // 16, 1), 64)


def direct_twin(pid: int, fd: int):
    """The library's private twin of the file fd is open on in process pid (with O_DIRECT:
    it carries the library's direct I/O), or None."""
    try:
        st = os.stat(f"/proc/{pid}/fd/{fd}")
        names = os.listdir(f"/proc/{pid}/fd")
        floor = library_fd_floor(pid)
    except (OSError, PermissionError):
        return None
    for n in names:
        if int(n) == fd or int(n) < floor:
            continue
        try:
            o = os.stat(f"/proc/{pid}/fd/{n}")
            if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino) and own_fdinfo_flags(pid, int(n)) & O_DIRECT:
                return int(n)
        except (OSError, AssertionError, ValueError):
            continue
    return None


def fdinfo_flags(pid: int, fd: int) -> int:
    """The kernel's flags of the program's descriptor fd of process pid, with O_DIRECT added
    when the library's private twin of the file has it: the kernel shows the library's direct
    I/O on the twin, never on the program's own description."""
    flags = own_fdinfo_flags(pid, fd)
    if not flags & O_DIRECT and direct_twin(pid, fd) is not None:
        flags |= O_DIRECT
    return flags


def fds_of(pid: int, path) -> list[int]:
    """Descriptors of process pid whose target is path."""
    path = os.path.realpath(str(path))
    out = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return out
    for n in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{n}") == path:
                out.append(int(n))
        except OSError:
            pass
    return out


def drop_cache(path):
    """Drop a file's pages from the page cache (fsync first so dirty pages can go)."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        try:
            os.fsync(fd)
        except OSError:
            pass
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_bytes(path) -> int:
    """Resident page-cache bytes of a file according to the kernel (fincore, mincore)."""
    r = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES", str(path)],
        capture_output=True, text=True, timeout=30,
    )
    if r.returncode != 0:
        raise AssertionError(f"fincore failed: {r.stderr}")
    return int(r.stdout.strip() or "0")


def fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def make_file(path, size: int, seed: int = 1) -> bytes:
    """Deterministic pseudo-random content (numpy-free: os.urandom would differ per call)."""
    import random

    rnd = random.Random(seed)
    data = rnd.randbytes(size)
    with open(path, "wb") as f:
        f.write(data)
    return data


def _text(b) -> str:
    if isinstance(b, bytes):
        return b.decode(errors="replace")
    return b or ""


def diff_text(a, b, name_a="plain", name_b="shim", limit=60) -> str:
    a_l = _text(a).splitlines()
    b_l = _text(b).splitlines()
    d = list(difflib.unified_diff(a_l, b_l, name_a, name_b, lineterm="", n=2))
    if len(d) > limit:
        d = d[:limit] + [f"... ({len(d) - limit} more diff lines)"]
    return "\n".join(d)


def assert_same_run(plain, shimmed, what="", compare_stderr=False):
    """Same exit status and stdout (and stderr if asked) as the plain run."""
    msg = f"{what}: " if what else ""
    if shimmed.stdout != plain.stdout:
        raise AssertionError(
            f"{msg}stdout differs from the plain run\n{diff_text(plain.stdout, shimmed.stdout)}\n"
            f"--- shim stderr (tail) ---\n{_text(shimmed.stderr)[-2000:]}"
        )
    assert shimmed.returncode == plain.returncode, (
        f"{msg}exit status {shimmed.returncode} != plain {plain.returncode}\n"
        f"shim stderr: {_text(shimmed.stderr)[-2000:]}"
    )
    if compare_stderr:
        assert shimmed.stderr == plain.stderr, f"{msg}stderr differs\n{diff_text(plain.stderr, shimmed.stderr)}"


def assert_same_file(a, b, what=""):
    da = Path(a).read_bytes()
    db = Path(b).read_bytes()
    if da != db:
        first = next((i for i in range(min(len(da), len(db))) if da[i] != db[i]), min(len(da), len(db)))
        raise AssertionError(
            f"{what}: {b} differs from {a}: sizes {len(db)} vs plain {len(da)}, first difference at byte {first}"
        )


def shim_warnings(stderr) -> list[str]:
    """stderr lines that are not the harness's own FDINFO/PID/READY lines."""
    out = []
    for line in _text(stderr).splitlines():
        if line.startswith(("FDINFO ", "PID ", "READY ", "REUSED ", "PARENT ", "CHILD ", "handler records")):
            continue
        out.append(line)
    return out


def chown_tree(path, uid=NOBODY, gid=NOBODY):
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for n in dirs + files:
            os.chown(os.path.join(root, n), uid, gid, follow_symlinks=False)


# --------------------------------------------------------------------------- shim + runner


@pytest.fixture(scope="session")
def shim() -> str:
    env = os.environ.get("S3DLIO_SHIM")
    p = Path(env) if env else DEFAULT_SHIM
    if not p.is_file():
        pytest.fail(f"the preload library {p} is missing: build it with `make build` (the tests never use a stale copy)")
    return str(p.resolve())


class Runner:
    """run(cmd, shim=True, env=None, paths=None, user=None, timeout=120, input=None, cwd=None)

    Starts from a cleaned environment (no inherited LD_PRELOAD or S3DLIO_DIRECT_*), in a
    session of its own (as a command typed at a terminal: the library prints what the user
    must fix once per session).
    shim=True sets LD_PRELOAD to the built library and S3DLIO_DIRECT_PATHS to `paths`
    (a string or a list joined with ':'; None leaves PATHS unset). `env` adds variables
    (a value of None removes one). user="nobody" runs it with setpriv as uid/gid 65534;
    the harness programs and the library are then run from a world-readable copy.
    """

    def __init__(self, shim_path: str, tmp_root: Path):
        self.shim = shim_path
        self._tmp_root = tmp_root
        self._nobody_dir: Path | None = None
        # Variables every shim run of a module gets unless the call sets them (a module that
        # tests one mode pins it; see `pin_shim_env`).
        self.default_env: dict[str, str] = {}

    def nobody_dir(self) -> Path:
        if self._nobody_dir is None:
            d = Path(tempfile.mkdtemp(prefix="s3d-nobody-bin-", dir=disk_tmp_root()))
            os.chmod(d, 0o755)
            for p in BIN.iterdir():
                if p.is_file():
                    shutil.copy2(p, d / p.name)
                    os.chmod(d / p.name, 0o755)
            shutil.copy2(self.shim, d / "libs3dlio_direct.so")
            os.chmod(d / "libs3dlio_direct.so", 0o755)
            self._nobody_dir = d
        return self._nobody_dir

    def cleanup(self):
        if self._nobody_dir is not None:
            shutil.rmtree(self._nobody_dir, ignore_errors=True)

    def env_for(self, shim=True, env=None, paths=None, user=None) -> dict:
        e = clean_env()
        if shim:
            e["LD_PRELOAD"] = str(self.nobody_dir() / "libs3dlio_direct.so") if user else self.shim
            if paths is not None:
                e["S3DLIO_DIRECT_PATHS"] = paths if isinstance(paths, str) else ":".join(map(str, paths))
            e.update(SHIM_ENV)
            e.update(self.default_env)
        for k, v in (env or {}).items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = str(v)
        return e

    def argv(self, cmd, user=None) -> list[str]:
        cmd = [str(c) for c in cmd]
        if user:
            if user not in ("nobody", NOBODY):
                raise ValueError("only user='nobody' is supported")
            if os.geteuid() != 0:
                unavailable("needs root to run a program as nobody")
            if cmd and cmd[0].startswith(str(BIN) + "/"):
                cmd[0] = str(self.nobody_dir() / os.path.basename(cmd[0]))
            cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"] + cmd
        return cmd

    def _prepare(self, cmd, shim, env, paths, user):
        e = self.env_for(shim, env, paths, user)
        argv = self.argv(cmd, user)
        if user:
            # only the target program gets the shim, not setpriv itself: move LD_PRELOAD and
            # S3DLIO_DIRECT_* behind setpriv with env(1)
            moved = [f"{k}={e.pop(k)}" for k in list(e) if k == "LD_PRELOAD" or k.startswith("S3DLIO_DIRECT_")]
            i = argv.index("--")
            argv = argv[: i + 1] + ["env", *moved] + argv[i + 1:]
        return argv, e

    def __call__(self, cmd, shim=True, env=None, paths=None, user=None, timeout=DEFAULT_TIMEOUT,
                 input=None, cwd=None, stdin=None):
        argv, e = self._prepare(cmd, shim, env, paths, user)
        try:
            return subprocess.run(argv, env=e, capture_output=True, timeout=timeout, input=input,
                                  cwd=cwd, stdin=stdin if input is None else None, start_new_session=True)
        except subprocess.TimeoutExpired as ex:
            raise AssertionError(
                f"{'shim' if shim else 'plain'} run timed out after {timeout}s (deadlock?): {' '.join(argv)}\n"
                f"stdout tail: {_text(ex.stdout)[-1500:]}\nstderr tail: {_text(ex.stderr)[-1500:]}"
            ) from None

    def popen(self, cmd, shim=True, env=None, paths=None, user=None, **kw):
        argv, e = self._prepare(cmd, shim, env, paths, user)
        kw.setdefault("start_new_session", True)
        return subprocess.Popen(argv, env=e, **kw)


@pytest.fixture(scope="session")
def _runner(shim):
    r = Runner(shim, Path(disk_tmp_root()))
    yield r
    r.cleanup()


@pytest.fixture
def run(_runner) -> Runner:
    return _runner


def pin_shim_env(runner: "Runner", values: dict):
    """For a module's autouse fixture: its shim runs get `values` unless a call sets them."""
    runner.default_env = dict(values)
    try:
        yield
    finally:
        runner.default_env = {}


@pytest.fixture(scope="session")
def plain_run():
    """A runner for plain runs only (no library needed)."""
    r = Runner("/nonexistent-shim.so", Path(disk_tmp_root()))
    yield r
    r.cleanup()


# --------------------------------------------------------------------------- filesystems


@dataclass
class Mount:
    path: Path
    kind: str
    device: str | None = None

    def __truediv__(self, other):
        return self.path / other

    def __str__(self):
        return str(self.path)

    def __fspath__(self):
        return str(self.path)

    def new_dir(self, name: str) -> Path:
        d = self.path / name
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o1777)
        return d


def _base_dir(prefix: str) -> Path:
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=disk_tmp_root()))
    os.chmod(base, 0o755)
    return base


def _umount(mnt: Path):
    for _ in range(20):
        r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
        if r.returncode == 0 or "not mounted" in r.stderr:
            return
        time.sleep(0.25)
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _losetup_detach(dev: str):
    for _ in range(20):
        r = subprocess.run(["losetup", "-d", dev], capture_output=True, text=True)
        if r.returncode == 0:
            return
        time.sleep(0.25)


def _mount_fixture(kind: str, setup, what: str | None = None):
    what = what or kind
    need_root(f"create the {what} test filesystem")
    base = _base_dir(f"s3d-{kind}-")
    mnt = base / "mnt"
    mnt.mkdir()
    state: dict = {}
    try:
        setup(base, mnt, state)
        os.chmod(mnt, 0o1777)
    except Exception as ex:  # noqa: BLE001
        if state.get("mounted"):
            _umount(mnt)
        if state.get("loop"):
            _losetup_detach(state["loop"])
        shutil.rmtree(base, ignore_errors=True)
        unavailable(f"could not set up the {what} test filesystem: {ex}")
    try:
        yield Mount(mnt, kind, state.get("loop"))
    finally:
        if state.get("mounted"):
            _umount(mnt)
        if state.get("loop"):
            _losetup_detach(state["loop"])
        shutil.rmtree(base, ignore_errors=True)


def _setup_strict(base: Path, mnt: Path, state: dict, size=256 << 20, features=(), name="ext4-4k.img"):
    """ext4 on a loop device with 4096-byte logical sectors; `features`: extra mkfs -O items."""
    img = base / name
    with open(img, "wb") as f:
        f.truncate(size)
    loop = sh(["losetup", "--find", "--show", "--sector-size", "4096", str(img)]).stdout.strip()
    state["loop"] = loop
    ss = sh(["blockdev", "--getss", loop]).stdout.strip()
    if ss != "4096":
        raise RuntimeError(f"{loop} has logical sector size {ss}, wanted 4096")
    opts = ["-O", ",".join(features)] if features else []
    sh(["mkfs.ext4", "-q", "-F", "-b", "4096", *opts, "-E", "nodiscard", loop], timeout=120)
    sh(["mount", loop, str(mnt)])
    state["mounted"] = True


def _setup_ramfs(base: Path, mnt: Path, state: dict):
    sh(["mount", "-t", "ramfs", "ramfs", str(mnt)])
    state["mounted"] = True


def _setup_tmpfs(base: Path, mnt: Path, state: dict):
    sh(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(mnt)])
    state["mounted"] = True


@pytest.fixture
def strict_fs():
    """ext4 on a loop device with 4096-byte logical sectors: rejects misaligned buffers,
    offsets and lengths for O_DIRECT."""
    yield from _mount_fixture("strict", _setup_strict, "ext4 on a 4096-sector loop device")


@pytest.fixture
def ramfs():
    yield from _mount_fixture("ramfs", _setup_ramfs)


@pytest.fixture
def tmpfs():
    yield from _mount_fixture("tmpfs", _setup_tmpfs)


@pytest.fixture
def disk():
    """A fresh directory on the ordinary disk (512-byte sectors)."""
    base = _base_dir("s3d-disk-")
    d = base / "mnt"
    d.mkdir()
    os.chmod(d, 0o1777)
    try:
        yield Mount(d, "disk")
    finally:
        shutil.rmtree(base, ignore_errors=True)


FS_KINDS = ["strict_fs", "ramfs", "tmpfs", "disk"]


@pytest.fixture(params=FS_KINDS)
def any_fs(request):
    """Each of the four filesystems in turn."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def strict_blockdev():
    """A bare 8 MiB loop device with 4096-byte sectors and seeded random content."""
    need_root("create a 4096-sector loop device")
    base = _base_dir("s3d-blk-")
    img = base / "blk.img"
    data = make_file(img, 8 << 20, seed=4242)
    loop = None
    try:
        loop = sh(["losetup", "--find", "--show", "--sector-size", "4096", str(img)]).stdout.strip()
    except Exception as ex:  # noqa: BLE001
        shutil.rmtree(base, ignore_errors=True)
        unavailable(f"needs root to create a 4096-sector loop device ({ex})")
    try:
        yield loop, data
    finally:
        _losetup_detach(loop)
        shutil.rmtree(base, ignore_errors=True)


def pytest_report_header(config):
    return [
        f"s3dlio shim: {os.environ.get('S3DLIO_SHIM') or DEFAULT_SHIM}",
        f"root: {os.geteuid() == 0}, CI: {IN_CI}, disk tmp: {disk_tmp_root()}",
    ]


# --------------------------------------------------------------------------- known failures

_KNOWN_FILE = Path(__file__).parent / "known_failures.txt"
_KNOWN = {
    line.strip()
    for line in (_KNOWN_FILE.read_text().splitlines() if _KNOWN_FILE.exists() else [])
    if line.strip() and not line.startswith("#")
}


def pytest_collection_modifyitems(config, items):
    """Marks the tests listed in known_failures.txt as non-strict xfail (see that file)."""
    for item in items:
        if item.nodeid in _KNOWN:
            item.add_marker(pytest.mark.xfail(reason="known failure, listed in tests/known_failures.txt", strict=False))


# --------------------------------------------------------------------------- streams and processes (#3)


def is_stats_file(name: str) -> bool:
    """A per-process statistics (JSON) file: not the index (.jsonl, .index), a counters
    file (.live) nor a files log (.files) the library keeps beside them."""
    return not name.endswith((".jsonl", ".index", ".live", ".files"))


def stats_files(d) -> list[str]:
    """The names of the statistics (JSON) files in directory d, sorted."""
    return sorted(n for n in os.listdir(d) if is_stats_file(n))


def load_index(d) -> list[dict]:
    """Every line of every index in directory d, parsed."""
    import json

    out = []
    for name in sorted(os.listdir(d)):
        if name.endswith((".jsonl", ".index")):
            with open(os.path.join(d, name)) as f:
                out.extend(json.loads(line) for line in f if line.strip())
    return out


def load_stats(d, killed_writers=False) -> dict:
    """Every statistics file in directory d, {file name: parsed JSON}. A leftover temporary
    file (the writer renames into place) or a file that is not JSON fails the test, unless
    `killed_writers`: processes the run killed (a pool's terminate) may have died while they
    wrote one, and their temporary files are skipped."""
    import json

    out = {}
    for name in stats_files(d):
        if killed_writers and re.search(r"\.tmp\d+(\.\d+)?$", name):
            continue
        p = os.path.join(d, name)
        try:
            with open(p) as f:
                out[name] = json.load(f)
        except ValueError as ex:
            raise AssertionError(f"statistics file {p} is not JSON ({ex}): {Path(p).read_text()[:500]!r}") from None
    return out


def stats_total(objs, key: str) -> int:
    """Sum of an integer counter over statistics objects (a missing key counts 0)."""
    objs = objs.values() if isinstance(objs, dict) else objs
    return sum(int(o.get(key, 0) or 0) for o in objs)


def fallback_total(objs, reason: str | None = None) -> int:
    """Sum of one fallback reason (or of all of them) over statistics objects."""
    objs = objs.values() if isinstance(objs, dict) else objs
    tot = 0
    for o in objs:
        fb = o.get("fallbacks") or {}
        tot += sum(fb.values()) if reason is None else int(fb.get(reason, 0))
    return tot


def stats_summary(objs) -> str:
    """A short text of the non-zero counters per statistics file, for assertion messages."""
    objs = objs if isinstance(objs, dict) else dict(enumerate(objs))
    lines = []
    for name, o in objs.items():
        nz = {k: v for k, v in o.items() if isinstance(v, int) and not isinstance(v, bool) and v and k not in ("pid", "schema", "starttime")}
        fb = {k: v for k, v in (o.get("fallbacks") or {}).items() if v}
        lines.append(f"{name} ({o.get('program')}): {nz} fallbacks={fb}")
    return "\n".join(lines) or "(no statistics files)"


def _setup_ext4_noextent(base: Path, mnt: Path, state: dict):
    """ext4 without extents (indirect blocks) on a 4096-sector loop device: O_DIRECT works,
    fallocate(2) says EOPNOTSUPP, so glibc's posix_fallocate emulates it. A 64-bit ext4
    needs extents: both are switched off."""
    _setup_strict(base, mnt, state, size=128 << 20, features=("^extent", "^64bit"), name="ext4-noextent.img")


@pytest.fixture
def ext4_noextent():
    """ext4 made with -O ^extent on a loop device with 4096-byte logical sectors:
    rejects misaligned O_DIRECT like strict_fs, and has no fallocate(2) (EOPNOTSUPP)."""
    yield from _mount_fixture("noextent", _setup_ext4_noextent, "ext4 without extents on a 4096-sector loop device")


def assert_same_files_and_opens(dirs, plain, shimmed, what, names=("data", "data.2")):
    """The files `names` each run left in its directory (`dirs["plain"]`, `dirs["shim"]`), byte
    for byte, and the opens the program reported on stderr (fdinfo lines of fileno(f)), in the
    same order in both runs and never O_DIRECT in the plain one. Returns the two runs' fdinfo
    lines."""
    for name in names:
        p, s = dirs["plain"] / name, dirs["shim"] / name
        assert p.exists() == s.exists(), f"{what}: {name} exists in one run only"
        if p.exists():
            assert_same_file(p, s, f"{what}: {name}")
    pl, sl = fdinfo_lines(plain.stderr), fdinfo_lines(shimmed.stderr)
    assert [lab for lab, _fd, _fl in pl] == [lab for lab, _fd, _fl in sl], (
        f"{what}: different opens\n{diff_text(plain.stderr, shimmed.stderr)}")
    assert not any(is_direct(fl) for _lab, _fd, fl in pl), f"{what}: O_DIRECT in the plain run"
    return pl, sl
