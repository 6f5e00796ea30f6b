"""stdio streams on matched files fail as glibc's own file streams do (issue 13, item 3).

c-harness/stdioerr.c drives the error paths on purpose, on streams from fopen and from
fdopen(open()) (read-only "m" streams too, which glibc reads through a mapping and the
library leaves to glibc, counted as a fallback): reading a write-only stream and
writing a read-only one with data buffered the other way, end of file and the error flag,
ungetc around seeks, ftell/fseek/fgetpos/fsetpos after failed calls, fseek past the end and
negative, setvbuf after I/O, fflush of a read stream and fflush(NULL), "a"/"a+" positioning,
"r+"/"w+" switching direction without a seek, write-back failing in fflush and fclose
(descriptor closed under the stream: EBADF; RLIMIT_FSIZE: EFBIG; a full filesystem: ENOSPC,
in a run of its own), freopen, then a seeded
random sequence of the same calls. It prints every return value, errno, feof/ferror and
ftell, and the files' final bytes. A plain run and a run through the library must print the
same and leave the same files, and the kernel must show O_DIRECT on every stream's
descriptor (or the library's twin of it), with the statistics counting the streams as
served by the engine.
"""

import errno
import os

import pytest

from conftest import (
    NOBODY,
    _mount_fixture,
    _setup_strict,
    _text,
    assert_same_file,
    assert_same_files_and_opens,
    assert_same_run,
    bin_path,
    chown_tree,
    diff_text,
    fallback_total,
    fdinfo_lines,
    is_direct,
    load_stats,
    make_file,
    stats_summary,
    stats_total,
)


def run_stdioerr(run, fs, seed, n, user=None):
    st = fs.new_dir(f"stats-{seed}")
    dirs, res = {}, {}
    for side in ("plain", "shim"):
        d = fs.new_dir(f"{side}-{seed}")
        make_file(d / "data", 3000 + 997 * seed, seed=seed)
        if user:
            chown_tree(d)
            os.chmod(d, 0o755)
        dirs[side] = d
        shim = side == "shim"
        env = {"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")} if shim else None
        res[side] = run([bin_path("stdioerr"), seed, d / "data", n], shim=shim, paths=str(d) if shim else None,
                        env=env, user=user, timeout=180)
    plain, shimmed = res["plain"], res["shim"]
    what = f"stdioerr {seed} on {fs.kind}{' as nobody' if user else ''}"
    assert plain.returncode == 0, f"{what}: the plain run failed: {_text(plain.stderr)[-2000:]}"
    assert b"final A size=" in plain.stdout, f"{what}: the plain run printed no final lines"
    assert_same_run(plain, shimmed, what)
    _pl, sl = assert_same_files_and_opens(dirs, plain, shimmed, what)
    # read-only "m" streams are glibc's own (it reads them through a mapping); all others direct
    served = [(lab, fl) for lab, _fd, fl in sl if "(rm)" not in lab]
    mapped = [lab for lab, _fd, _fl in sl if "(rm)" in lab]
    buffered = [f"{lab} flags {fl:o}" for lab, fl in served if not is_direct(fl)]
    assert served and not buffered, (
        f"{what}: every stream on the matched files must have O_DIRECT from the kernel; buffered: {buffered[:8]} "
        f"({len(buffered)} of {len(served)})")
    assert not any(is_direct(fl) for lab, _fd, fl in sl if lab.startswith("fopen(rm)")), (
        f"{what}: a stream glibc maps itself cannot be direct")

    stats = load_stats(st)
    assert len(stats) == 1, f"{what}: one statistics file expected, found {sorted(stats)}"
    assert stats_total(stats, "streams_direct") >= len(served), (
        f"{what}: {len(served)} streams opened on matched paths must count as streams_direct\n{stats_summary(stats)}")
    freopens = _text(plain.stdout).count(" freopen(")
    fb = fallback_total(stats, "fdopen_stream")
    assert len(mapped) <= fb <= len(mapped) + freopens, (
        f"{what}: the {len(mapped)} read-only m streams (and freopen of them) and nothing else may be left to "
        f"glibc's buffered I/O, counted as fdopen_stream: {fb}\n{stats_summary(stats)}")
    assert stats_total(stats, "read_bytes") > 0 and stats_total(stats, "write_bytes") > 0, (
        f"{what}: the streams' reads and writes must be served by the engine\n{stats_summary(stats)}")
    return plain


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_stdio_errors_strict(run, strict_fs, seed):
    run_stdioerr(run, strict_fs, seed, 400)


@pytest.mark.parametrize("seed", [7, 8])
def test_stdio_errors_disk(run, disk, seed):
    run_stdioerr(run, disk, seed, 250)


def test_stdio_errors_as_nobody(run, strict_fs):
    run_stdioerr(run, strict_fs, 9, 400, user="nobody")
    for name in os.listdir(strict_fs.path / "stats-9"):
        assert os.stat(strict_fs.path / "stats-9" / name).st_uid == NOBODY


def test_stdioerr_is_deterministic(plain_run, strict_fs):
    """Two plain runs agree, so a difference through the library is the library's."""
    outs = []
    for i in range(2):
        d = strict_fs.new_dir(f"det-{i}")
        make_file(d / "data", 3000 + 997 * 3, seed=3)
        r = plain_run([bin_path("stdioerr"), 3, d / "data", 400], shim=False)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    assert outs[0] == outs[1], f"stdioerr is not deterministic:\n{diff_text(outs[0], outs[1])}"


@pytest.fixture
def full_strict_fs():
    """A 16 MiB ext4 on a 4096-sector loop device, with directories plain/ and shim/, then
    filled to the last block."""

    def setup(base, mnt, state):
        _setup_strict(base, mnt, state, size=16 << 20, name="ext4-full.img")
        for side in ("plain", "shim"):
            (mnt / side).mkdir()
        with open(mnt / "filler", "wb", buffering=0) as f:
            for chunk in (1 << 20, 4096):
                try:
                    while f.write(b"\0" * chunk):
                        pass
                except OSError as ex:
                    if ex.errno != errno.ENOSPC:
                        raise
        os.sync()

    yield from _mount_fixture("strict", setup, "a full 16 MiB ext4 on a 4096-sector loop device")


def test_stdio_errors_full_disk(run, full_strict_fs):
    """ENOSPC in fwrite, fflush, fflush(NULL) and fclose, where no write can land partly
    (new files, whole blocks past the end): the same returns, errno values and files."""
    fs = full_strict_fs
    res = {}
    for side in ("plain", "shim"):
        d = fs.path / side
        shim = side == "shim"
        res[side] = run([bin_path("stdioerr"), 1, d / "data", 0, "full"], shim=shim, paths=str(d) if shim else None,
                        timeout=120)
    plain, shimmed = res["plain"], res["shim"]
    assert plain.returncode == 0, _text(plain.stderr)[-2000:]
    assert b"errno=ENOSPC" in plain.stdout, f"the filesystem was not full:\n{_text(plain.stdout)}"
    assert_same_run(plain, shimmed, "stdioerr full")
    for name in ("data", "data.2"):
        assert_same_file(fs.path / "plain" / name, fs.path / "shim" / name, f"stdioerr full: {name}")
    sl = fdinfo_lines(shimmed.stderr)
    assert sl and all(is_direct(fl) for _lab, _fd, fl in sl), (
        f"stdioerr full: every stream must have O_DIRECT from the kernel: {[(lab, oct(fl)) for lab, _fd, fl in sl]}")
