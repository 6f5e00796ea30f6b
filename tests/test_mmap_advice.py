"""mmap, posix_fadvise, readahead, fallocate and posix_fallocate on direct descriptors
(issue #3, c-harness/mapadv.c).

- mmap of a direct descriptor works (served by the page cache; counted as `mmap_calls`),
  coherent with the shim's direct reads and writes in both directions;
- posix_fadvise(WILLNEED) and readahead(2) are swallowed (counted as `advice_swallowed`):
  the page cache of the file stays empty, where a plain run fills it; other advice,
  invalid arguments, fallocate and posix_fallocate give exactly the plain results;
- on ext4 without extents fallocate(2) says EOPNOTSUPP and glibc's posix_fallocate writes one
  zero byte per block with its own internal pread/pwrite, which the shim cannot see: it must
  still succeed on a direct descriptor, with the same file content.
Every mapadv run is compared line by line with a plain run."""

import time

import pytest

from conftest import (
    _text,
    assert_same_run,
    bin_path,
    cached_bytes,
    drop_cache,
    fdinfo_lines,
    is_direct,
    load_stats,
    make_file,
    stats_summary,
    stats_total,
)

# successful mmaps of the direct descriptor in `mapadv all`: whole RO, part RO, private RW,
# shared RW, after pwrite, final (the one at an unaligned offset fails with EINVAL)
MAPADV_MMAPS = 6
# WILLNEED (0,0) and (4097,100003), readahead (0,SIZE) and (4097,100003)
MAPADV_SWALLOWED = 4


def run_mapadv(run, fs, mode="all", setup=None):
    dp, ds, st = fs.new_dir("plain"), fs.new_dir("shim"), fs.new_dir("stats")
    if setup:
        setup(dp)
        setup(ds)
    plain = run([bin_path("mapadv"), mode, dp / "f"], shim=False)
    shimmed = run([bin_path("mapadv"), mode, ds / "f"], shim=True, paths=str(ds),
                  env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json"), "S3DLIO_DIRECT_LOG_FILE": str(fs.path / "shim.log")})
    assert plain.returncode == 0, plain.stderr
    assert_same_run(plain, shimmed, f"mapadv {mode} on {fs.kind}")
    assert (dp / "f").read_bytes() == (ds / "f").read_bytes(), f"mapadv {mode}: the files differ"
    return plain, shimmed, load_stats(st)


def test_mapadv_strict(run, strict_fs):
    plain, shimmed, stats = run_mapadv(run, strict_fs)
    out = _text(plain.stdout)
    assert "mmap equals pread = 0" not in out and "= 0\n" in out  # sanity of the plain run
    fl = {lab: f for lab, _fd, f in fdinfo_lines(shimmed.stderr)}
    assert is_direct(fl["main"]) and is_direct(fl["wronly"]), f"mapadv's descriptors are not direct: {fl}"
    assert stats_total(stats, "mmap_calls") >= MAPADV_MMAPS, (
        f"{MAPADV_MMAPS} mmaps of a direct descriptor must be counted as mmap_calls (served by the page cache, "
        f"not direct)\n{stats_summary(stats)}")
    assert stats_total(stats, "advice_swallowed") >= MAPADV_SWALLOWED, (
        f"posix_fadvise(WILLNEED) x2 and readahead x2 on a direct descriptor must be swallowed and counted as "
        f"advice_swallowed\n{stats_summary(stats)}")


@pytest.mark.parametrize("fsname", ["disk", "tmpfs", "ramfs"])
def test_mapadv_other_filesystems(run, request, fsname):
    run_mapadv(run, request.getfixturevalue(fsname))


def test_posix_fallocate_emulated_on_ext4_without_extents(run, ext4_noextent):
    plain, shimmed, stats = run_mapadv(run, ext4_noextent)
    out = _text(plain.stdout)
    # the fixture is what it claims: no fallocate(2), glibc's emulation succeeds
    assert "fallocate(0,SIZE,65543) = -1 EOPNOTSUPP" in out, out
    assert "posix_fallocate(end+100000,50001) = 0" in out and "posix_fallocate64(end-5000,70001) = 0" in out, out
    fl = {lab: f for lab, _fd, f in fdinfo_lines(shimmed.stderr)}
    assert is_direct(fl["main"]), (
        f"ext4 without extents takes O_DIRECT: the descriptor must be direct ({fl['main']:o})")
    assert stats_total(stats, "opens_direct") >= 2, stats_summary(stats)


SIZE = 16 * 1048576 + 4097


def _cached_after_willneed(run, f, shim, paths, stats_dir=None):
    drop_cache(f)
    before = cached_bytes(f)
    assert before <= SIZE // 100, f"could not drop the cache of {f}: {before} bytes stay"
    env = {"S3DLIO_DIRECT_STATS": str(stats_dir / "s-%p.json")} if stats_dir else None
    r = run([bin_path("mapadv"), "willneed", f], shim=shim, paths=paths, env=env)
    assert r.returncode == 0, r.stderr
    # WILLNEED reads ahead asynchronously: wait until the amount stops growing
    cached = cached_bytes(f)
    for _ in range(20):
        time.sleep(0.1)
        now = cached_bytes(f)
        if now == cached:
            break
        cached = now
    return r, cached


def test_willneed_leaves_cache_empty(run, strict_fs):
    d = strict_fs.new_dir("data")
    st = strict_fs.new_dir("stats")
    f = d / "big"
    make_file(f, SIZE)
    plain, plain_cached = _cached_after_willneed(run, f, False, None)
    shimmed, shim_cached = _cached_after_willneed(run, f, True, str(d), st)
    assert_same_run(plain, shimmed, "mapadv willneed")
    # (the kernel clamps one readahead request to the device's readahead window: a few MiB)
    assert plain_cached >= 1048576, f"WILLNEED + readahead cached only {plain_cached} of {SIZE} bytes plainly"
    fl = {lab: fl for lab, _fd, fl in fdinfo_lines(shimmed.stderr)}
    assert is_direct(fl["main"])
    stats = load_stats(st)
    assert shim_cached <= SIZE // 100, (
        f"posix_fadvise(WILLNEED)/readahead through the shim filled the page cache with {shim_cached} bytes of "
        f"{SIZE} (they must be swallowed on a direct descriptor)\n{stats_summary(stats)}")
    assert stats_total(stats, "advice_swallowed") >= 3, stats_summary(stats)
