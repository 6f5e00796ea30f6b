"""stdio streams and C++ filebufs through the shim (issue #3).

- c-harness/streamseq.c: seeded random sequences of fopen/fopen64/fdopen/freopen with every
  mode, fread/fwrite/fgets/fgetc/getc/ungetc/fputs/fprintf/fputc, fseek/fseeko/ftell/ftello/
  rewind, setvbuf with odd user buffers, fflush/feof/ferror/clearerr/fileno+fstat/fclose,
  and a fork in the middle where the child continues on the inherited streams. A plain run
  and a run through the shim must print the same (every return value and errno), leave the
  same files, and (strict filesystem) the kernel's fdinfo of fileno(f) must show O_DIRECT
  for streams opened with fopen/fopen64/fdopen, with the statistics counting them as
  `streams_direct`. On ramfs (no O_DIRECT) streams stay buffered, counted as `fdopen_stream`.
- c-harness/stdioloader.c: an fread/fwrite loader with odd chunk sizes, and numpy's
  fdopen(dup(fd)) pattern, which must leave the program's own descriptor direct.
- c-harness/filebuf.cpp: std::ifstream/std::ofstream/std::fstream with odd sizes (libstdc++
  opens with fopen and then uses read(2)/write(2) on fileno()).
"""

import os

import pytest

from conftest import (
    NOBODY,
    _text,
    assert_same_file,
    assert_same_files_and_opens,
    assert_same_run,
    bin_path,
    cached_bytes,
    chown_tree,
    diff_text,
    drop_cache,
    fallback_total,
    fdinfo_lines,
    is_direct,
    load_stats,
    make_file,
    stats_summary,
    stats_total,
)

N_STEPS = 250
STREAM_OPENS = ("fopen(", "fopen64(", "fdopen(")


def initial_files(d, seed):
    """Some seeds start without files, others with odd-sized ones."""
    if seed % 3 == 0:
        return
    make_file(d / "data", 4096 * (seed % 5) * 3 + 1000 * seed + 511, seed=seed)
    if seed % 2:
        make_file(d / "data.2", 70001 + seed, seed=seed + 1)


def without_fdinfo(stderr) -> str:
    return "\n".join(line for line in _text(stderr).splitlines() if not line.startswith("FDINFO "))


def run_both(run, fs, argv_of, setup, name, user=None, timeout=120):
    """Run argv_of(dir) plainly and through the shim (PATHS = the shim's dir) in fresh
    directories prepared by setup(dir). Returns (dirs, plain, shimmed, stats)."""
    st = fs.new_dir(f"stats-{name}")
    log = fs.path / f"shim-log-{name}.txt"
    dirs, res = {}, {}
    for side in ("plain", "shim"):
        d = fs.new_dir(f"{side}-{name}")
        setup(d)
        if user:
            chown_tree(d)
            os.chmod(d, 0o755)
        dirs[side] = d
        shim = side == "shim"
        env = {"S3DLIO_DIRECT_STATS": str(st / "s-%p.json"), "S3DLIO_DIRECT_LOG_FILE": str(log)} if shim else None
        res[side] = run(argv_of(d), shim=shim, paths=str(d) if shim else None, env=env, user=user, timeout=timeout)
    plain, shimmed = res["plain"], res["shim"]
    if log.exists():
        shimmed.stderr += b"\n[shim log file]\n" + log.read_bytes()[-1500:]
    return dirs, plain, shimmed, load_stats(st)


def check_stderr(plain, shimmed, what):
    a, b = without_fdinfo(plain.stderr), without_fdinfo(shimmed.stderr)
    # the shim's own log went to a file; anything else on stderr must be the program's
    b_cmp = b.split("\n[shim log file]\n")[0].rstrip("\n")
    assert b_cmp == a.rstrip("\n"), f"{what}: stderr (without FDINFO lines) differs\n{diff_text(a, b_cmp)}\n{b[-1500:]}"


def run_streamseq(run, fs, seed, fork=False, user=None, n=N_STEPS, direct=True):
    name = f"{seed}{'-fork' if fork else ''}"
    argv = lambda d: [bin_path("streamseq"), seed, d / "data", n] + (["fork"] if fork else [])  # noqa: E731
    dirs, plain, shimmed, stats = run_both(run, fs, argv, lambda d: initial_files(d, seed), name, user=user)
    what = f"streamseq {seed}{' fork' if fork else ''} on {fs.kind}{' as nobody' if user else ''}"
    assert plain.returncode == 0, f"{what}: the plain run failed: {_text(plain.stderr)[-2000:]}"
    assert_same_run(plain, shimmed, what)
    check_stderr(plain, shimmed, what)
    # the files, and the kernel's view of fileno(f) after every open in the same order
    _pl, sl = assert_same_files_and_opens(dirs, plain, shimmed, what)
    served = [(lab, fl) for lab, _fd, fl in sl
              if lab.startswith(STREAM_OPENS) or (lab.startswith("child-") and "-freopen" not in lab)]
    opens = [lab for lab, _fl in served if not lab.startswith("child-")]
    freopens = sum(1 for lab, _fd, _fl in sl if lab.startswith("freopen"))
    assert opens, f"{what}: the sequence opened no stream (change the seed)"
    if direct:
        buffered = [f"{lab} flags {fl:o}" for lab, fl in served if not is_direct(fl)]
        assert not buffered, (
            f"{what}: fileno() of streams opened with fopen/fopen64/fdopen on a matched path must have "
            f"O_DIRECT from the kernel; buffered: {buffered[:8]} ({len(buffered)} of {len(served)})"
        )
    else:
        assert not any(is_direct(fl) for _lab, fl in served), f"{what}: O_DIRECT on {fs.kind}?"

    # statistics: one file per process
    procs = 2 if fork else 1
    assert len(stats) == procs, f"{what}: {procs} statistics file(s) expected, found {sorted(stats)}"
    sd, fb = stats_total(stats, "streams_direct"), fallback_total(stats, "fdopen_stream")
    if direct:
        assert sd >= len(opens), (
            f"{what}: {len(opens)} streams were opened on matched paths; the statistics must count them "
            f"as streams_direct (got {sd})\n{stats_summary(stats)}"
        )
        assert fb <= freopens, (
            f"{what}: only freopen may leave a stream buffered ({freopens} freopen calls), but fdopen_stream "
            f"fallbacks = {fb}\n{stats_summary(stats)}"
        )
        assert stats_total(stats, "read_bytes") > 0 and stats_total(stats, "write_bytes") > 0, (
            f"{what}: stream reads and writes must be served by the engine\n{stats_summary(stats)}"
        )
    else:
        assert sd == 0, f"{what}: streams_direct on {fs.kind} (no O_DIRECT)\n{stats_summary(stats)}"
        assert fb >= 1, (
            f"{what}: streams that stay buffered must be counted as the fallback fdopen_stream\n{stats_summary(stats)}"
        )
    return plain, shimmed, stats


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6, 7])
def test_streams_strict(run, strict_fs, seed):
    run_streamseq(run, strict_fs, seed)


def test_streams_strict_long(run, strict_fs):
    run_streamseq(run, strict_fs, 99, n=800)


# the ordinary disk is slow with small direct writes: shorter sequences
@pytest.mark.parametrize("seed", [31, 32])
def test_streams_disk(run, disk, seed):
    run_streamseq(run, disk, seed, n=150)


@pytest.mark.parametrize("seed", [21, 22])
def test_streams_tmpfs(run, tmpfs, seed):
    run_streamseq(run, tmpfs, seed)


@pytest.mark.parametrize("seed", [11, 12])
def test_streams_ramfs_fallback(run, ramfs, seed):
    # ramfs has no O_DIRECT: every stream stays buffered, output identical, fallback counted
    run_streamseq(run, ramfs, seed, direct=False)


@pytest.mark.parametrize("seed", [41, 42, 44])
def test_streams_fork_strict(run, strict_fs, seed):
    # odd seeds: the child ends with _exit, even ones with exit
    _p, s, stats = run_streamseq(run, strict_fs, seed, fork=True)
    assert b"child done" in s.stdout and b"parent: child status=0" in s.stdout


def test_streams_fork_disk(run, disk):
    run_streamseq(run, disk, 43, fork=True, n=150)


def test_streams_as_nobody(run, strict_fs):
    _p, _s, stats = run_streamseq(run, strict_fs, 51, user="nobody")
    st_dir = strict_fs.path / "stats-51"
    for name in stats:
        assert os.stat(st_dir / name).st_uid == NOBODY


# ------------------------------------------------------------------------- stdioloader


def _loader_setup(size):
    return lambda d: make_file(d / "in", size, seed=size)


LOADER_CASES = {
    "default": [],
    "small-reads": ["-r", "1,3,4096,7", "-w", "4096,1,65537"],
    "unbuffered": ["-v", "N,0", "-r", "4097,65536", "-w", "1000003,17"],
    "odd-user-buffer-size": ["-v", "F,4097"],
    "line-buffered": ["-v", "L,100"],
}


@pytest.mark.parametrize("case", list(LOADER_CASES))
def test_stdioloader_copy_strict(run, strict_fs, case):
    # an unbuffered stream reads and writes through the shim one byte at a time where glibc's
    # own file streams would pass a large fread straight to read(2): keep that case small
    size = {"small-reads": 300_007, "unbuffered": 100_003}.get(case, 2_000_003)
    argv = lambda d: [bin_path("stdioloader"), *LOADER_CASES[case], d / "in", d / "out"]  # noqa: E731
    dirs, plain, shimmed, stats = run_both(run, strict_fs, argv, _loader_setup(size), case)
    assert plain.returncode == 0 and plain.stdout.rstrip().endswith(b"OK"), plain.stdout + plain.stderr
    assert_same_run(plain, shimmed, f"stdioloader {case}")
    assert_same_file(dirs["plain"] / "out", dirs["shim"] / "out", f"stdioloader {case}")
    fl = {lab: f for lab, _fd, f in fdinfo_lines(shimmed.stderr)}
    for lab in ("in", "out", "reread"):
        assert is_direct(fl[lab]), f"stdioloader {case}: fileno() of the '{lab}' stream has no O_DIRECT ({fl[lab]:o})"
    assert stats_total(stats, "streams_direct") >= 3, (
        f"stdioloader {case}: three fopen streams on matched paths, streams_direct must count them\n{stats_summary(stats)}"
    )
    assert stats_total(stats, "read_bytes") >= 2 * size and stats_total(stats, "write_bytes") >= size, (
        f"stdioloader {case}: the streams' reads ({2 * size} bytes) and writes ({size}) must be served by the "
        f"engine\n{stats_summary(stats)}"
    )
    assert fallback_total(stats, "fdopen_stream") == 0, stats_summary(stats)


def test_stdioloader_leaves_no_cache(run, strict_fs):
    """The kernel's page cache proves the stream I/O was direct."""
    size = 24 * 1048576 + 4097
    res = {}
    for side in ("plain", "shim"):
        d = strict_fs.new_dir(side)
        make_file(d / "in", size, seed=5)
        drop_cache(d / "in")
        shim = side == "shim"
        r = run([bin_path("stdioloader"), "-r", "65537,4097", "-w", "1048577,3", d / "in", d / "out"], shim=shim,
                paths=str(d) if shim else None, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        res[side] = (r, cached_bytes(d / "in"), cached_bytes(d / "out"))
    (p, pin, pout), (s, sin, sout) = res["plain"], res["shim"]
    assert_same_run(p, s, "stdioloader")
    assert pin >= size * 0.9 and pout >= size * 0.9, f"the plain run cached only {pin}/{pout} bytes: measurement broken?"
    assert sin <= size // 100 and sout <= size // 100, (
        f"fread/fwrite through the shim left {sin} bytes of the input and {sout} of the output in the page cache "
        f"(of {size}): the streams were not direct"
    )


@pytest.mark.parametrize("fsname", ["strict_fs", "ramfs"])
def test_stdioloader_numpy_pattern(run, request, fsname):
    """numpy's tofile/fromfile: fdopen(dup(fd)), fseeko to the descriptor's offset (128,
    unaligned), fwrite/fread, ftello, fclose, lseek the original descriptor. The original
    descriptor must stay direct; the stream on its dup must be direct too."""
    fs = request.getfixturevalue(fsname)
    argv = lambda d: [bin_path("stdioloader"), "-m", "npy", "-r", "4097,1,65536", "-w", "1000,65537", d / "in", d / "out"]  # noqa: E731
    dirs, plain, shimmed, stats = run_both(run, fs, argv, _loader_setup(1_000_003), "npy")
    assert plain.returncode == 0 and plain.stdout.rstrip().endswith(b"OK"), plain.stdout + plain.stderr
    assert_same_run(plain, shimmed, "stdioloader -m npy")
    assert_same_file(dirs["plain"] / "out", dirs["shim"] / "out", "stdioloader -m npy")
    fl = {lab: f for lab, _fd, f in fdinfo_lines(shimmed.stderr)}
    labels = ("fd-open-w", "stream-w", "fd-after-fclose-w", "fd-open-r", "stream-r", "fd-after-fclose-r")
    if fsname == "ramfs":
        assert not any(is_direct(fl[lab]) for lab in labels)
        assert stats_total(stats, "streams_direct") == 0, stats_summary(stats)
        # the program's own opens already fell back (fs_no_odirect); streams on them may or
        # may not add fdopen_stream
        assert stats_total(stats, "opens_fallback") >= 2 and fallback_total(stats) >= 2, (
            f"the buffered opens on ramfs must be counted as fallbacks\n{stats_summary(stats)}")
        return
    buffered = [f"{lab}={fl[lab]:o}" for lab in labels if not is_direct(fl[lab])]
    assert not buffered, f"fdopen(dup(fd)) must leave the descriptor and the stream direct; buffered: {buffered}"
    assert fallback_total(stats, "fdopen_stream") == 0, (
        f"fdopen(dup(fd)) on a direct descriptor must not fall back\n{stats_summary(stats)}")
    assert stats_total(stats, "streams_direct") >= 2, stats_summary(stats)


# ------------------------------------------------------------------------- C++


@pytest.mark.parametrize("chunks", [("1,4095,65537", "4097,3,100003"), ("1000003", "1"), ("4096,8192", "4095,4097")],
                         ids=["odd", "big-read-1-byte-writes", "aligned-reads"])
def test_cxx_fstream_direct(run, strict_fs, chunks):
    small = chunks[1] == "1"
    size = 200_003 if small else 1_500_007
    argv = lambda d: [bin_path("filebuf"), d / "in", d / "out", *chunks]  # noqa: E731
    setup = lambda d: make_file(d / "in", size, seed=77)  # noqa: E731
    st = strict_fs.new_dir("stats")
    res, dirs = {}, {}
    for side in ("plain", "shim"):
        d = strict_fs.new_dir(side)
        setup(d)
        dirs[side] = d
        shim = side == "shim"
        env = {"HARNESS_FDINFO": "1"}
        if shim:
            env["S3DLIO_DIRECT_STATS"] = str(st / "s-%p.json")
        res[side] = run(argv(d), shim=shim, paths=str(d) if shim else None, env=env)
    plain, shimmed = res["plain"], res["shim"]
    assert plain.returncode == 0, plain.stderr
    assert_same_run(plain, shimmed, f"filebuf {chunks}")
    assert_same_file(dirs["plain"] / "out", dirs["shim"] / "out", "filebuf")
    lines = fdinfo_lines(shimmed.stderr)
    for lab in ("in", "out", "rw", "back"):
        fls = [fl for l2, _fd, fl in lines if l2 == lab]
        assert fls, f"no FDINFO line for the {lab} stream: {_text(shimmed.stderr)[-1000:]}"
        assert any(is_direct(fl) for fl in fls), (
            f"std::fstream '{lab}' (libstdc++ opens with fopen): no O_DIRECT from the kernel ({[oct(x) for x in fls]})")
    stats = load_stats(st)
    assert stats_total(stats, "streams_direct") >= 4, (
        f"four filebufs opened matched files with fopen: streams_direct must count them\n{stats_summary(stats)}")
    assert stats_total(stats, "read_bytes") >= size and stats_total(stats, "write_bytes") >= size, (
        f"the filebufs' read(2)/write(2) on fileno() must be served by the engine\n{stats_summary(stats)}")


# ------------------------------------------------------------------------- the harness itself


@pytest.mark.parametrize("fsname", ["strict_fs", "disk"])
def test_streamseq_is_deterministic(plain_run, request, fsname):
    """Two plain runs agree (also across a fork), so a difference under the shim is the shim's."""
    fs = request.getfixturevalue(fsname)
    for seed, extra in ((5, []), (44, ["fork"])):
        outs = []
        for i in range(2):
            d = fs.new_dir(f"det-{seed}-{i}")
            initial_files(d, seed)
            r = plain_run([bin_path("streamseq"), seed, d / "data", N_STEPS, *extra], shim=False)
            assert r.returncode == 0, r.stderr
            outs.append((r.stdout, (d / "data").read_bytes() if (d / "data").exists() else None))
        assert outs[0] == outs[1], f"streamseq {seed} {extra} is not deterministic:\n{diff_text(outs[0][0], outs[1][0])}"
