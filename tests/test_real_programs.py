"""Real programs on matched paths, with shell redirections into matched files: cat, cp, dd
(block sizes that are not a multiple of the sector, and iflag/oflag=direct left alone), tar c
and x, gzip, xz, zstd, sha256sum, sqlite3, python3 open()/read()/readinto()/write(), numpy,
libstdc++ streams. Each is compared with the plain run (stdout, stderr, status and every file
it leaves); the kernel's fdinfo proves O_DIRECT where a program keeps a descriptor open, and
the statistics of every process (S3DLIO_DIRECT_STATS) or the page cache prove that the reads
and writes were served direct (issue #3: stdio streams, fd 0/1 of dd, numpy's fdopen)."""

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import (
    FDINFO_PY,
    assert_same_file,
    assert_same_run,
    bin_path,
    cached_bytes,
    diff_text,
    drop_cache,
    fallback_total,
    fdinfo_flags,
    fdinfo_lines,
    fds_of,
    is_direct,
    load_stats,
    make_file,
    stats_summary,
    stats_total,
)


def seed_tree(d: Path):
    """A tree of odd-sized files (and an empty one, and a 4096 one)."""
    sizes = [0, 1, 511, 4095, 4096, 4097, 65537, 1_000_003, 3 * 1048576 + 5]
    (d / "tree" / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(sizes):
        sub = ["", "sub", "sub/deeper"][i % 3]
        make_file(d / "tree" / sub / f"file{i}.bin", s, seed=100 + i)
    make_file(d / "in", 1_000_003, seed=7)
    make_file(d / "big", 5 * 1048576 + 7, seed=8)
    make_file(d / "aligned", 1048576, seed=9)
    # fixed times, so that archives made in the plain and the shim copy are identical
    for root, dirs, files in os.walk(d / "tree", topdown=False):
        for n in files + dirs:
            os.utime(os.path.join(root, n), (1_600_000_000, 1_600_000_000))
    os.utime(d / "tree", (1_600_000_000, 1_600_000_000))


def tree_contents(d: Path) -> dict:
    out = {}
    for root, dirs, files in os.walk(d):
        dirs.sort()
        for n in sorted(files):
            p = Path(root) / n
            if p.is_symlink():
                out[str(p.relative_to(d))] = ("symlink", os.readlink(p))
            elif p.is_file():
                out[str(p.relative_to(d))] = p.read_bytes()
            else:
                out[str(p.relative_to(d))] = ("special",)
        for n in dirs:
            out[str((Path(root) / n).relative_to(d)) + "/"] = "dir"
    return out


def assert_same_tree(a: Path, b: Path, what: str):
    ta, tb = tree_contents(a), tree_contents(b)
    assert sorted(ta) == sorted(tb), f"{what}: different files\nplain: {sorted(ta)}\nshim:  {sorted(tb)}"
    for k in ta:
        if ta[k] != tb[k]:
            la = len(ta[k]) if isinstance(ta[k], bytes) else ta[k]
            lb = len(tb[k]) if isinstance(tb[k], bytes) else tb[k]
            raise AssertionError(f"{what}: {k} differs (plain {la} bytes, shim {lb} bytes)")


def sh_both(run, fs, script: str, setup=seed_tree, env=None, timeout=180):
    """Run `sh -c script` with $D = a fresh copy of the data, plainly and through the shim
    (PATHS = $D); compare status, stdout, stderr (with $D normalised) and all files in $D."""
    res = {}
    for side in ("plain", "shim"):
        d = fs.new_dir(side)
        if setup:
            setup(d)
        e = {"D": str(d), "BIN": str(Path(bin_path("loader")).parent), **(env or {})}
        if side == "shim":
            # the shim may log (at most one line per cause); keep that out of the compared stderr
            e.setdefault("S3DLIO_DIRECT_LOG_FILE", str(fs.path / "shim-log.txt"))
        r = run(["sh", "-c", script], shim=(side == "shim"), paths=str(d) if side == "shim" else None, env=e,
                timeout=timeout, cwd=str(d))
        r.stdout = r.stdout.replace(str(d).encode(), b"$D")
        r.stderr = r.stderr.replace(str(d).encode(), b"$D")
        res[side] = (d, r)
    (dp, p), (ds, s) = res["plain"], res["shim"]
    log = fs.path / "shim-log.txt"
    if log.exists():
        s.stderr += b"\n[shim log file]\n" + log.read_bytes()[-1500:]
        p.stderr += b"\n[shim log file]\n" + log.read_bytes()[-1500:]
    assert_same_run(p, s, script, compare_stderr=True)
    assert_same_tree(dp, ds, script)
    return p, s


def assert_direct(stats, what, reads=True, writes=False, streams=False):
    """The statistics of all the processes of a shim run prove direct I/O: matched opens made
    direct, and bytes read/written served by the engine (and streams, where asked)."""
    summary = stats_summary(stats)
    assert stats, f"{what}: no process wrote statistics (S3DLIO_DIRECT_STATS)"
    assert stats_total(stats, "opens_direct") > 0, f"{what}: no matched open was made direct\n{summary}"
    if reads:
        assert stats_total(stats, "read_bytes") > 0, f"{what}: no read was served direct by the engine\n{summary}"
    if writes:
        assert stats_total(stats, "write_bytes") > 0, f"{what}: no write was served direct by the engine\n{summary}"
    if streams:
        assert stats_total(stats, "streams_direct") > 0, (
            f"{what}: the program's stdio streams (fopen) on matched files were not served direct\n{summary}")


def sh_both_direct(run, fs, script, reads=True, writes=False, streams=False, env=None, **kw):
    """sh_both with per-process statistics for the shim run, then assert_direct."""
    st = fs.new_dir("stats")
    p, s = sh_both(run, fs, script, env={**(env or {}), "S3DLIO_DIRECT_STATS": str(st / "s-%p.json")}, **kw)
    stats = load_stats(st)
    assert_direct(stats, script, reads=reads, writes=writes, streams=streams)
    return p, s, stats


# ------------------------------------------------------------------------- coreutils


@pytest.mark.parametrize(
    "script",
    [
        "cat $D/in",
        "cat $D/in $D/big > $D/out",
        "cat $D/tree/file3.bin $D/in | sha256sum",
        "cp $D/in $D/in.copy && cp $D/big $D/big.copy && cp $D/tree/file0.bin $D/empty.copy",
        "cp -r $D/tree $D/tree2",
        "sha256sum $D/in $D/big $D/aligned $D/tree/*.bin $D/tree/sub/*.bin",
        "md5sum < $D/big",
        "head -c 100001 $D/big > $D/head && tail -c 77777 $D/big > $D/tail",
        "split -b 100003 $D/in $D/part. && cat $D/part.* > $D/joined && cmp $D/in $D/joined",
        "wc -c $D/in && wc -l $D/big",
    ],
    ids=["cat", "cat-redirect", "cat-pipe-sha", "cp", "cp-r", "sha256sum", "md5sum-stdin", "head-tail", "split-cat", "wc"],
)
def test_coreutils(run, strict_fs, script):
    # writes are direct where the program opens its output itself (not a shell redirection,
    # which the program inherits buffered); md5sum reads the shell's fd 0
    if "md5sum <" in script:
        sh_both(run, strict_fs, script)
        return
    sh_both_direct(run, strict_fs, script, reads=True, writes=script.startswith(("cp ", "split ")))


@pytest.mark.parametrize(
    "args",
    [
        "bs=1000",
        "bs=4097",
        "bs=1048577",
        "bs=4096",
        "bs=1000 skip=3 count=500",
        "bs=4097 seek=2 conv=notrunc",
        "bs=4097 iflag=direct",
        "bs=4096 iflag=direct",
        "bs=4096 oflag=direct",
        "bs=4097 oflag=direct",
        "bs=1000 iflag=direct oflag=direct",
        "bs=65536 iflag=direct oflag=direct",
    ],
)
def test_dd(run, strict_fs, args):
    # dd opens if= and of= and dup2()s them onto fd 0 and 1: the shim serves those direct
    # (where dd does not ask for O_DIRECT itself)
    script = (f"dd if=$D/in of=$D/out {args} status=none; echo status=$?; "
              f"dd if=$D/big of=$D/out2 {args} status=none; echo status=$?")
    st = strict_fs.new_dir("stats")
    sh_both(run, strict_fs, script, env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    if "iflag=direct" in args and "oflag=direct" in args:
        return  # dd asks for O_DIRECT itself on both ends: the shim leaves them alone
    wrote = (strict_fs.path / "plain" / "out").stat().st_size > 0  # iflag=direct bs=4097 reads nothing
    assert_direct(load_stats(st), f"dd {args}", reads="iflag=direct" not in args,
                  writes="oflag=direct" not in args and wrote)


@pytest.mark.parametrize("bs", ["1000", "4097", "1048577"])
def test_dd_odd_block_sizes_direct(run, strict_fs, bs):
    """dd's fd 0 and 1 (dup2 of its own opens): statistics and the page cache prove the
    reads and writes were direct (the kernel's fdinfo of fd 0/1 may not show it: the shim
    serves them through a private O_DIRECT twin)."""
    size = 8 * 1048576 + 4097
    res = {}
    for side in ("plain", "shim"):
        d = strict_fs.new_dir(side)
        st = strict_fs.new_dir(f"stats-{side}")
        make_file(d / "in", size, seed=11)
        drop_cache(d / "in")
        shim = side == "shim"
        r = run(["dd", f"if={d}/in", f"of={d}/out", f"bs={bs}", "status=none"], shim=shim,
                paths=str(d) if shim else None, env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")}, timeout=180)
        assert r.returncode == 0, r.stderr
        res[side] = (d, r, cached_bytes(d / "in"), cached_bytes(d / "out"), load_stats(st))
    (dp, p, pin, pout, _), (ds, s, sin, sout, stats) = res["plain"], res["shim"]
    assert_same_run(p, s, f"dd bs={bs}", compare_stderr=True)
    assert_same_file(dp / "out", ds / "out", f"dd bs={bs}")
    assert pin >= size * 0.9, f"the plain dd cached only {pin} bytes of its input: measurement broken?"
    summary = stats_summary(stats)
    assert stats_total(stats, "read_bytes") >= size and stats_total(stats, "write_bytes") >= size, (
        f"dd bs={bs} read and wrote {size} bytes on fd 0/1: the statistics must show them served direct\n{summary}")
    assert sin <= size // 100 and sout <= size // 100, (
        f"dd bs={bs} through the shim left {sin} bytes of its input and {sout} of its output cached (of {size})"
        f"\n{summary}")


def test_dd_into_existing_file_odd_seek(run, strict_fs):
    sh_both_direct(run, strict_fs, writes=True, script= "dd if=$D/in of=$D/big bs=999 seek=7 count=300 conv=notrunc status=none && "
                            "dd if=$D/big bs=1001 skip=5 status=none | sha256sum")


def test_tar_create_and_extract(run, strict_fs):
    sh_both_direct(run, strict_fs, writes=True, script=
            "cd $D && tar cf $D/a.tar tree && mkdir x && tar xf $D/a.tar -C x && tar tvf a.tar | wc -l && "
            "tar czf $D/a.tgz tree && mkdir y && tar xzf a.tgz -C y && diff -r tree x/tree && diff -r tree y/tree")


def test_tar_pipe(run, strict_fs):
    sh_both_direct(run, strict_fs, writes=True, script="cd $D && tar cf - tree | (mkdir z && cd z && tar xf -) && diff -r tree z/tree")


def test_gzip_round_trip(run, strict_fs):
    sh_both_direct(run, strict_fs, writes=True, script=
            "gzip -k -n $D/in && gzip -c -n $D/big > $D/big.gz && gzip -d -c $D/in.gz > $D/in.back && "
            "gunzip -k $D/big.gz -c > $D/big.back && cmp $D/in $D/in.back && cmp $D/big $D/big.back && "
            "sha256sum $D/in.gz $D/big.gz")


@pytest.mark.parametrize("tool", ["xz", "zstd"])
def test_xz_zstd_round_trip(run, strict_fs, tool):
    if not shutil.which(tool):
        pytest.fail(f"{tool} is not installed (.ci/run installs it)")
    q = "-q" if tool == "zstd" else ""
    # zstd reads and writes its files through stdio streams (fopen/fread/fwrite)
    sh_both_direct(run, strict_fs, writes=True, streams=tool == "zstd", script=f"{tool} {q} -k -T1 $D/in && {tool} {q} -d -c $D/in.{'xz' if tool == 'xz' else 'zst'} "
                            f"> $D/in.back && cmp $D/in $D/in.back")


# ------------------------------------------------------------------------- shell redirections


@pytest.mark.parametrize(
    "script",
    [
        "cat $D/in > $D/out",
        "cat $D/in > $D/out; cat $D/tree/file4.bin >> $D/out; printf 'abc' >> $D/out",
        "sha256sum < $D/big > $D/sum",
        "for i in 1 2 3 4 5; do echo line $i >> $D/log; done; cat $D/log",
        "exec 3>$D/fd3; echo first >&3; cat $D/in >&3; echo last >&3; exec 3>&-; sha256sum $D/fd3",
        "exec 3>$D/st; echo a >&3; $BIN/writer_static -i 3 -s 100003 -c 1000,4097 x; echo b >&3; exec 3>&-; "
        "sha256sum $D/st",
        "exec 4<$D/in; head -c 1001 <&4 > $D/h1; $BIN/loader_static -i 4 -b 4097 x; exec 4<&-",
        "( cat $D/in; cat $D/big ) > $D/sub.out",
        "cat $D/in | tee $D/t1 $D/t2 > $D/t3",
    ],
    ids=["redirect", "append", "stdin-redirect", "echo-append", "exec-fd3", "static-writer-on-shell-fd",
         "static-loader-on-shell-fd", "subshell", "tee"],
)
def test_shell_redirections(run, strict_fs, script):
    sh_both(run, strict_fs, script)


def test_sqlite3(run, strict_fs):
    if not shutil.which("sqlite3"):
        pytest.fail("sqlite3 is not installed (.ci/run installs it)")
    sql = (
        "create table t(id integer primary key, v blob); "
        "with recursive c(x) as (select 1 union all select x+1 from c where x<3000) "
        "insert into t select x, zeroblob(x % 977 + 1) from c; "
        "update t set v = zeroblob(1234) where id % 7 = 0; delete from t where id % 11 = 0; "
        "select count(*), sum(length(v)) from t; pragma integrity_check;"
    )
    sh_both_direct(run, strict_fs, writes=True, script=f"sqlite3 $D/db.sqlite '{sql}' && sqlite3 $D/db.sqlite 'select count(*) from t; vacuum;' "
                            f"&& sqlite3 $D/db.sqlite 'pragma journal_mode=wal; insert into t(v) values (zeroblob(5000)); "
                            f"select count(*) from t; pragma integrity_check;'",
            setup=None)


def _sqlite_100k_setup(d: Path):
    """ins.sql: a table, an index, then 100,000 INSERTs in 10 transactions, an UPDATE and a
    DELETE in an eleventh (deterministic: no random())."""
    lines = ["create table t(id integer primary key, name text, v real, b blob);", "create index tn on t(name);"]
    for tx in range(10):
        lines.append("begin;")
        for i in range(tx * 10000, (tx + 1) * 10000):
            lines.append(f"insert into t values({i}, 'name-{(i * 7919) % 100003}', {i}.25, zeroblob({i % 301}));")
        lines.append("commit;")
    lines.append("begin; update t set name = name || '-u' where id % 13 = 0; delete from t where id % 17 = 0; commit;")
    (d / "ins.sql").write_text("\n".join(lines) + "\n")


def test_sqlite3_100k_rows(run, strict_fs):
    """sqlite3 reads the SQL through a stdio stream (.read), writes the database and its
    journal with pread/pwrite: integrity_check, and .dump identical to the plain run."""
    if not shutil.which("sqlite3"):
        pytest.fail("sqlite3 is not installed (.ci/run installs it)")
    script = ('sqlite3 $D/db.sqlite ".read $D/ins.sql" && '
              "sqlite3 $D/db.sqlite 'pragma integrity_check; select count(*), sum(length(b)), sum(v) from t;' && "
              "sqlite3 $D/db.sqlite .dump > $D/dump.sql && sqlite3 $D/db.sqlite .dump | sha256sum && wc -l < $D/dump.sql")
    p, _s, stats = sh_both_direct(run, strict_fs, script, writes=True, streams=True, setup=_sqlite_100k_setup,
                                  timeout=300)
    assert b"ok\n" in p.stdout and b"94117|" in p.stdout, p.stdout  # 100000 - 5883 rows with id % 17 == 0
    db = (strict_fs.path / "shim" / "db.sqlite").stat().st_size
    assert stats_total(stats, "write_bytes") >= db, (
        f"the database ({db} bytes) was not written through the engine\n{stats_summary(stats)}")


# ------------------------------------------------------------------------- python

PY_SCRIPT = FDINFO_PY + textwrap.dedent(
    r"""
    import hashlib, os, sys
    D = sys.argv[1]
    def fdinfo(label, f):
        fd = f if isinstance(f, int) else f.fileno()
        sys.stderr.write(f"FDINFO {label} fd={fd} {fdinfo_text(fd)}\n")
    h = lambda b: hashlib.sha256(b).hexdigest()[:16]
    # write() in odd chunks, buffered and unbuffered
    data = bytes((i * 7 + 3) % 251 for i in range(3_000_017))
    with open(f"{D}/w1", "wb") as f:
        fdinfo("w1", f)
        for i in range(0, len(data), 100_003):
            f.write(data[i:i + 100_003])
    with open(f"{D}/w2", "wb", buffering=0) as f:
        fdinfo("w2", f)
        pos = 0
        for n in (1, 4095, 4097, 1000, 1 << 20, 12345):
            f.write(data[pos:pos + n]); pos += n
        print("tell", f.tell())
    with open(f"{D}/w2", "r+b", buffering=0) as f:
        f.seek(5000); f.write(b"X" * 3333); f.seek(0, 2); f.write(b"tail")
    # read()
    with open(f"{D}/w1", "rb") as f:
        fdinfo("r1", f)
        print("read all", h(f.read()))
    with open(f"{D}/w1", "rb", buffering=0) as f:
        parts = []
        while True:
            b = f.read(4097)
            if not b: break
            parts.append(b)
        print("read 4097", h(b"".join(parts)), len(parts))
        f.seek(123457); print("seek read", h(f.read(99999)), f.tell())
    # readinto()
    with open(f"{D}/w2", "rb", buffering=0) as f:
        fdinfo("r2", f)
        buf = bytearray(65537); mv = memoryview(buf); tot = 0; hh = hashlib.sha256()
        while True:
            n = f.readinto(buf)
            if not n: break
            hh.update(mv[:n]); tot += n
        print("readinto", hh.hexdigest()[:16], tot)
    with open(f"{D}/in", "rb") as f:
        b = bytearray(1000)
        print("readinto buffered", f.readinto(b), h(bytes(b)))
        f.seek(-10, 2); print("tail", f.read())
    # text mode, append
    with open(f"{D}/t.txt", "w") as f:
        for i in range(20000): f.write(f"line {i}\n")
    with open(f"{D}/t.txt", "a") as f:
        f.write("appended\n")
    with open(f"{D}/t.txt") as f:
        lines = f.readlines(); print("lines", len(lines), lines[-1].strip())
    # os-level
    fd = os.open(f"{D}/osf", os.O_RDWR | os.O_CREAT, 0o644)
    fdinfo("osf", fd)
    print(os.write(fd, data[:10001]), os.pwrite(fd, b"abc", 4095), os.pread(fd, 7, 4094))
    os.lseek(fd, 0, 0); print(h(os.read(fd, 20000)))
    print("preadv", os.preadv(fd, [bytearray(1000), bytearray(3001)], 17))
    os.close(fd)
    print("sizes", [os.path.getsize(f"{D}/{n}") for n in ("w1", "w2", "t.txt", "osf")])
    """
)


def test_python_open_read_readinto_write(run, strict_fs, tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(PY_SCRIPT)
    dirs = {}
    outs = {}
    for side in ("plain", "shim"):
        d = strict_fs.new_dir(side)
        make_file(d / "in", 1_000_003)
        dirs[side] = d
        outs[side] = run([sys.executable, script, d], shim=side == "shim", paths=str(d) if side == "shim" else None)
        assert outs[side].returncode == 0, outs[side].stderr
    assert_same_run(outs["plain"], outs["shim"], "python3 open/read/readinto/write")
    assert_same_tree(dirs["plain"], dirs["shim"], "python3")
    from conftest import fdinfo_lines

    got = {lab: fl for lab, _fd, fl in fdinfo_lines(outs["shim"].stderr)}
    for lab in ("w1", "w2", "r1", "r2", "osf"):
        assert is_direct(got[lab]), f"python's {lab} descriptor has no O_DIRECT from the kernel ({got[lab]:o})"


NUMPY_SCRIPT = FDINFO_PY + textwrap.dedent(
    r"""
    import hashlib, sys
    import numpy as np
    D = sys.argv[1]
    a = (np.arange(1_000_003, dtype=np.float64) * 1.5).reshape(-1)
    np.save(f"{D}/a.npy", a)                        # header then data at byte 128
    b = np.load(f"{D}/a.npy")                       # fromfile over fdopen(dup(fd))
    print("load", b.shape, hashlib.sha256(b.tobytes()).hexdigest()[:16], bool((a == b).all()))
    a[:77777].astype(np.int32).tofile(f"{D}/raw.bin")   # fwrite over fdopen
    c = np.fromfile(f"{D}/raw.bin", dtype=np.int32)
    print("fromfile", c.shape, int(c.sum()))
    def fdinfo(label, fd):
        sys.stderr.write(f"FDINFO {label} fd={fd} {fdinfo_text(fd)}\n")
    with open(f"{D}/raw.bin", "rb") as f:
        f.seek(4 * 1001)
        d = np.fromfile(f, dtype=np.int32, count=5000)   # fdopen(dup(fd)), fread, fclose
        fdinfo("fromfile-fileobj", f.fileno())
        print("fromfile(file object)", int(d.sum()), f.tell())
    with open(f"{D}/a.npy", "rb") as f:
        e = np.load(f)
        fdinfo("load-fileobj", f.fileno())
        print("load(file object)", int(e[12345]), f.tell())
    with open(f"{D}/raw2.bin", "wb") as f:
        f.write(b"odd header")
        a[:33333].tofile(f)                             # fdopen(dup(fd)), fwrite, fclose
        fdinfo("tofile-fileobj", f.fileno())
        f.write(b"trailer")
    print("raw2", hashlib.sha256(open(f"{D}/raw2.bin", "rb").read()).hexdigest()[:16])
    m = np.load(f"{D}/a.npy", mmap_mode="r")
    print("mmap", float(m[-1]))
    np.savez(f"{D}/z.npz", x=a[:1001], y=a[:4097])
    z = np.load(f"{D}/z.npz")
    print("npz", z["x"].sum(), z["y"].sum())
    """
)


def test_numpy(run, strict_fs, tmp_path):
    pytest.importorskip("numpy")
    script = tmp_path / "np_prog.py"
    script.write_text(NUMPY_SCRIPT)
    st = strict_fs.new_dir("stats")
    dirs, outs = {}, {}
    for side in ("plain", "shim"):
        d = strict_fs.new_dir(side)
        dirs[side] = d
        outs[side] = run([sys.executable, script, d], shim=side == "shim", paths=str(d) if side == "shim" else None,
                         env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert outs["plain"].returncode == 0, outs["plain"].stderr
    assert_same_run(outs["plain"], outs["shim"], "numpy save/load/fromfile/tofile")
    assert_same_tree(dirs["plain"], dirs["shim"], "numpy")
    # numpy's tofile/fromfile/load on a file object use fdopen(dup(fd)): the file object's
    # descriptor must stay direct, the streams must be served direct, nothing falls back
    got = {lab: fl for lab, _fd, fl in fdinfo_lines(outs["shim"].stderr)}
    for lab in ("fromfile-fileobj", "load-fileobj", "tofile-fileobj"):
        assert is_direct(got[lab]), f"numpy {lab}: the file object's descriptor lost O_DIRECT ({got[lab]:o})"
    stats = load_stats(st)
    assert_direct(stats, "numpy", reads=True, writes=True, streams=True)
    assert fallback_total(stats, "fdopen_stream") == 0, (
        f"numpy's fdopen(dup(fd)) on direct descriptors must not fall back\n{stats_summary(stats)}")


def test_python_shutil_copyfile_sendfile(run, strict_fs):
    code = ("import shutil,sys,hashlib; D=sys.argv[1]; shutil.copyfile(D+'/in', D+'/c1'); shutil.copy2(D+'/big', D+'/c2');"
            "print(hashlib.sha256(open(D+'/c1','rb').read()).hexdigest())")
    st = strict_fs.new_dir("stats")
    dirs, outs = {}, {}
    for side in ("plain", "shim"):
        d = strict_fs.new_dir(side)
        seed_tree(d)
        dirs[side] = d
        outs[side] = run([sys.executable, "-c", code, d], shim=side == "shim", paths=str(d) if side == "shim" else None,
                         env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert_same_run(outs["plain"], outs["shim"], "shutil.copyfile")
    assert_same_tree(dirs["plain"], dirs["shim"], "shutil.copyfile")
    stats = load_stats(st)
    assert_direct(stats, "shutil.copyfile/copy2 (sendfile)", reads=True, writes=True)
    copied = (dirs["shim"] / "in").stat().st_size + (dirs["shim"] / "big").stat().st_size
    assert stats_total(stats, "write_bytes") >= copied, (
        f"sendfile of {copied} bytes must be emulated with the engine's writes\n{stats_summary(stats)}")


# ------------------------------------------------------------------------- C, C++


LOADER_CASES = [(m, b) for b in ("1", "1000", "4096", "4097", "1048579")
                for m in ("read", "pread", "readv", "preadv", "aligned", "stdio")
                if not (b == "1" and m in ("readv", "preadv", "stdio"))]


@pytest.mark.parametrize("mode,bs", LOADER_CASES, ids=[f"{b}-{m}" for m, b in LOADER_CASES])
def test_loader_modes(run, strict_fs, mode, bs):
    small = bs == "1"  # one-byte reads: keep the files small
    sh_both(run, strict_fs, f"$BIN/loader -m {mode} -b {bs} $D/in $D/aligned $D/tree/file0.bin $D/tree/file2.bin",
            setup=lambda d: (make_file(d / "in", 20_007 if small else 300_007),
                             make_file(d / "aligned", 16_384 if small else 262_144),
                             (d / "tree").mkdir(), make_file(d / "tree" / "file0.bin", 0),
                             make_file(d / "tree" / "file2.bin", 511)))


@pytest.mark.parametrize("prog", ["loader_fortify", "loader_fortify64"])
@pytest.mark.parametrize("mode", ["sread", "spread"])
def test_fortified_loader(run, strict_fs, prog, mode):
    # __read_chk, __pread_chk / __pread64_chk, __open_2 / __open64_2
    sh_both(run, strict_fs, f"$BIN/{prog} -m {mode} -b 4097 -F $D/in 2>/dev/null; $BIN/{prog} -m {mode} -b 65536 $D/big")


@pytest.mark.parametrize("mode", ["write", "pwrite", "writev"])
@pytest.mark.parametrize("flags", ["", "-a -n", "-f", "-r -t"])
def test_writer_modes(run, strict_fs, mode, flags):
    sh_both(run, strict_fs, f"$BIN/writer -m {mode} {flags} $D/w && $BIN/writer -m {mode} {flags} -S 2 -o 1001 -n "
                            f"-c 4096,8192,1 $D/w && $BIN/writer -m {mode} -c 1,3,4095 -s 100001 $D/w3", setup=None)


def test_cxx_filebuf(run, strict_fs):
    # libstdc++ opens with fopen, then read(2)/write(2) on fileno()
    sh_both_direct(run, strict_fs, "$BIN/filebuf $D/in $D/out", writes=True, streams=True)


# ------------------------------------------------------------------------- kernel proof


def _wait_for_fd(pid, path, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        fds = fds_of(pid, path)
        if fds:
            return fds
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never opened {path}")


@pytest.mark.parametrize("prog", ["cat", "dd-bs4097", "python"])
def test_kernel_shows_o_direct_in_real_programs(run, strict_fs, prog):
    """The reader blocks on a full pipe while it holds the matched file: read its fdinfo."""
    d = strict_fs.new_dir("data")
    f = d / "big"
    make_file(f, 8 * 1048576 + 3)
    cmd = {
        "cat": ["cat", f],
        "dd-bs4097": ["dd", f"if={f}", "bs=4097", "status=none"],
        "python": [sys.executable, "-c", f"import sys,shutil; shutil.copyfileobj(open('{f}','rb'), sys.stdout.buffer, 1001)"],
    }[prog]
    for shim in (False, True):
        p = run.popen(cmd, shim=shim, paths=str(d) if shim else None, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            fds = _wait_for_fd(p.pid, f)
            time.sleep(0.2)  # let it fill the pipe and block
            flags = [fdinfo_flags(p.pid, fd) for fd in fds_of(p.pid, f)] or [fdinfo_flags(p.pid, fds[0])]
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == 0, err
        assert out == f.read_bytes()
        if shim:
            # (any: the shim may hold a helper descriptor of its own on the same file)
            assert any(is_direct(fl) for fl in flags), f"{prog} through the shim: kernel flags {[oct(x) for x in flags]}"
        else:
            assert not any(is_direct(fl) for fl in flags)


def test_writer_kernel_o_direct_while_writing(run, strict_fs):
    d = strict_fs.new_dir("data")
    f = d / "out"
    p = run.popen([bin_path("writer"), "-w", "-s", "3000001", f], shim=True, paths=str(d),
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = p.stderr.readline()
    assert line.startswith(b"READY"), line
    fds = fds_of(p.pid, f)
    flags = [fdinfo_flags(p.pid, fd) for fd in fds]
    out, err = p.communicate(input=b"x", timeout=60)
    assert p.returncode == 0, out + err
    assert any(is_direct(fl) for fl in flags), f"writer's descriptors: {[oct(x) for x in flags]}"
    q = strict_fs.new_dir("plain") / "out"
    r = run([bin_path("writer"), "-s", "3000001", q], shim=False)
    assert r.stdout == out and q.read_bytes() == f.read_bytes(), diff_text(r.stdout, out)
