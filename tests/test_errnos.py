"""Every errno the kernel would give (issue 13, item 2): c-harness/errnos.c drives the read
and write families (access modes, offsets and lengths past the limits, IOV_MAX, negative and
overflowing iovec lengths, every preadv2/pwritev2 flag), lseek whences, fcntl commands, and
the copy_file_range/sendfile/splice cases the kernel rejects (O_APPEND output, overlapping
ranges in one file, flags, access modes, pipes, negative and overflowing offsets and lengths);
RLIMIT_FSIZE with SIGXFSZ at its default and ignored; a thread unmapping the buffer during the
calls; a filesystem running full. Each is compared with a plain run."""

import functools

import pytest

from conftest import (
    _mount_fixture,
    _setup_strict,
    assert_same_run,
    bin_path,
    load_stats,
    stats_summary,
    stats_total,
)


def differential(run, mount, mode, timeout=300):
    dirs = {side: mount.new_dir(f"{mode}-{side}") for side in ("plain", "shim")}
    plain = run([bin_path("errnos"), dirs["plain"], mode], shim=False, timeout=timeout)
    assert plain.returncode == 0, plain.stderr.decode()[-2000:]
    st = mount.new_dir(f"{mode}-stats")
    shimmed = run([bin_path("errnos"), dirs["shim"], mode], shim=True, paths=str(dirs["shim"]),
                  env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")}, timeout=timeout)
    assert_same_run(plain, shimmed, f"errnos {mode} on {mount.kind}")
    return plain.stdout.decode(), load_stats(st)


@pytest.mark.parametrize("fs", ["strict_fs", "disk", "tmpfs", "ramfs"])
def test_calls_fail_as_the_kernels(run, request, fs):
    out, stats = differential(run, request.getfixturevalue(fs), "calls")
    # the cases the issue names are there and are errors, from the kernel and through the library
    for case, err in [("copy_file_range(in, &a, ap, NULL, 10000, 0)", "EBADF"),
                      ("copy_file_range(in, &a, out, &c, 10000, 1)", "EINVAL"),
                      ("readv(rd, many, 1025)", "EINVAL"),
                      ("preadv(rd, neg, 2, 0)", "EINVAL"),
                      ("preadv2 flags 0x80000000", "EOPNOTSUPP"),
                      ("pread(rd, b, 4096, -1)", "EINVAL")]:
        line = next(l for l in out.splitlines() if l.startswith(case))
        assert f"errno={err}" in line, line
    if fs == "ramfs":  # refuses O_DIRECT: every file falls back, the kernel answers everything
        assert stats_total(stats, "opens_fallback") > 0, stats_summary(stats)
    else:
        assert stats_total(stats, "read_calls") > 20 and stats_total(stats, "write_calls") > 20, stats_summary(stats)


@pytest.mark.parametrize("fs", ["strict_fs", "disk"])
def test_rlimit_fsize_signal_and_efbig_at_the_right_byte(run, request, fs):
    out, stats = differential(run, request.getfixturevalue(fs), "fsize")
    # both ways a write meets the limit: killed by SIGXFSZ (default), EFBIG (ignored)
    assert ": signal 25" in out and "errno=EFBIG" in out, out[-3000:]
    # and writes cut short at the limit
    assert any(l.split()[0].startswith("fs-") and "errno=-" in l for l in out.splitlines())
    assert stats_total(stats, "write_calls") > 50, stats_summary(stats)


@pytest.mark.parametrize("fs", ["strict_fs", "disk"])
def test_a_buffer_unmapped_during_the_call(run, request, fs):
    """The outcome varies with timing: no crash, and every result one the kernel gives (all of
    it, a count up to where the copy met the unmapped memory, or EFAULT). The kernel's
    buffered writes never change the file past their count; the library's direct write from
    the program's memory can, when the memory goes while the device reads it (the redo on the
    program's description then counts less than the failed direct write stored): a known
    difference, only for a program that unmaps a buffer it is writing from."""
    mount = request.getfixturevalue(fs)
    for shim in (False, True):
        d = mount.new_dir(f"unmap-{int(shim)}")
        r = run([bin_path("errnos"), d, "unmap"], shim=shim, paths=str(d))
        assert r.returncode == 0, f"shim={shim}: exit {r.returncode}\n{r.stderr.decode()[-3000:]}"
        lines = r.stdout.decode().splitlines()
        assert lines[0] == "unmap: every result one the kernel gives", f"shim={shim}: {r.stderr.decode()[-3000:]}"
        if not shim:
            assert lines[1] == "unmap: the files past the counts unchanged", r.stderr.decode()[-3000:]


@pytest.fixture
def small_strict_fs():
    """A 40 MiB strict ext4, to fill."""
    yield from _mount_fixture("small-strict", functools.partial(_setup_strict, size=40 << 20), "small ext4 on a 4096-sector loop device")


def test_a_full_filesystem(run, small_strict_fs):
    """ENOSPC reaches the program, and the size and bytes are what was acknowledged (the count
    at the moment the disk fills may differ: README, "What differs")."""
    outs = []
    for shim in (False, True):
        d = small_strict_fs.new_dir(f"full-{int(shim)}")
        r = run([bin_path("errnos"), d, "full"], shim=shim, paths=str(d))
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        outs.append(r)
        (d / "fill").unlink()
    assert_same_run(outs[0], outs[1], "a full filesystem")
    assert "errno=ENOSPC size matches acknowledged: yes" in outs[0].stdout.decode()
