"""Configuration: which files (PATHS/EXCLUDE globs, prefixes, normalisation, openat), the
knobs (MIN_SIZE, SYNC, LOG, LOG_FILE), and malformed variables: exactly one clear warning
line naming the variable, nothing else changes (same stdout, same exit status, the rest of
the configuration still applies). Whether a file went direct is read from the kernel."""

import os
import re
from collections import Counter

import pytest

from conftest import (
    assert_same_run,
    bin_path,
    fdinfo_lines,
    fdinfo_of,
    is_direct,
    make_file,
    shim_warnings,
)


def probe(run, path, paths=None, how="r", env=None, cwd=None, shim=True):
    r = run([bin_path("fdsem"), "probe", path, how], shim=shim, paths=paths, env=env, cwd=cwd)
    assert r.returncode == 0, r.stderr
    lines = fdinfo_lines(r.stderr)
    assert lines, f"probe of {path} failed: {r.stdout!r} {r.stderr!r}"
    return r, lines[0][2]


def new_warnings(base, r):
    """Lines in r's stderr that the baseline run did not print (as a multiset)."""
    c = Counter(shim_warnings(r.stderr)) - Counter(shim_warnings(base.stderr))
    return list(c.elements())


# --------------------------------------------------------------------------- unset / empty


@pytest.mark.parametrize("paths", [None, "", ":", "::::"], ids=["unset", "empty", "colon", "colons"])
def test_paths_unset_or_empty_changes_nothing(run, strict_fs, paths):
    d = strict_fs.new_dir("data")
    make_file(d / "f", 300_001)
    argv = [bin_path("loader"), "-F", "-G", "-b", "1000", d / "f"]
    p = run(argv, shim=False)
    s = run(argv, shim=True, paths=paths)
    assert_same_run(p, s, f"PATHS={paths!r}", compare_stderr=True)
    assert not is_direct(fdinfo_of(s.stderr, str(d / "f")))


# --------------------------------------------------------------------------- matching

GLOB_CASES = [
    # pattern (relative to M), file (relative to M), direct?
    ("*.bin", "a.bin", True),
    ("*.bin", ".hidden.bin", True),
    ("*.bin", "sub/a.bin", False),
    ("*.bin", "a.binx", False),
    ("**/*.bin", "a.bin", True),
    ("**/*.bin", "sub/deep/a.bin", True),
    ("**/*.bin", "sub/a.dat", False),
    ("**", "sub/deep/a.dat", True),
    ("sub/**/a.dat", "sub/a.dat", True),
    ("?.dat", "x.dat", True),
    ("?.dat", "xy.dat", False),
    ("[ab]*", "apple", True),
    ("[ab]*", "cherry", False),
    ("[!ab]*", "cherry", True),
    ("lit\\*", "lit*", True),
    ("lit\\*", "litx", False),
    ("s*/a.bin", "sub/a.bin", True),
    ("s*/a.bin", "sub/deep/a.bin", False),
    ("data", "data/x", True),
    ("data", "data/deep/er/x", True),
    ("data", "database", False),
    ("data/", "data/x", True),
    ("data///", "data/x", True),
    ("single", "single", True),
    ("single", "singles", False),
]


@pytest.mark.parametrize("pattern,rel,expected", GLOB_CASES, ids=[f"{a}~{b}" for a, b, _ in GLOB_CASES])
def test_glob_and_prefix_matching(run, strict_fs, pattern, rel, expected):
    m = strict_fs.new_dir("m")
    f = m / rel
    f.parent.mkdir(parents=True, exist_ok=True)
    make_file(f, 10_000)
    p, pf = probe(run, f, shim=False)
    s, sf = probe(run, f, paths=f"{m}/{pattern}")
    assert_same_run(p, s, "probe")
    assert is_direct(sf) == expected, f"PATHS={m}/{pattern}: {f} direct={is_direct(sf)}, expected {expected}"
    assert shim_warnings(s.stderr) == []


def test_empty_entries_ignored(run, strict_fs):
    m = strict_fs.new_dir("m")
    (m / "data").mkdir()
    make_file(m / "data" / "x", 5000)
    _s, fl = probe(run, m / "data" / "x", paths=f"::{m}/data::")
    assert is_direct(fl)


def test_exclude_wins(run, strict_fs):
    m = strict_fs.new_dir("m")
    for sub in ("keep", "skip", "skipper"):
        (m / sub).mkdir()
        make_file(m / sub / "f.bin", 5000)
    env = {"S3DLIO_DIRECT_EXCLUDE": f"{m}/skip:{m}/**/*.tmp"}
    make_file(m / "keep" / "x.tmp", 5000)
    assert is_direct(probe(run, m / "keep" / "f.bin", paths=str(m), env=env)[1])
    assert not is_direct(probe(run, m / "skip" / "f.bin", paths=str(m), env=env)[1])
    assert is_direct(probe(run, m / "skipper" / "f.bin", paths=str(m), env=env)[1])
    assert not is_direct(probe(run, m / "keep" / "x.tmp", paths=str(m), env=env)[1])


@pytest.mark.parametrize(
    "spelling,cwd",
    [
        ("{m}/data/../data/x", None),
        ("{m}//data///x", None),
        ("{m}/data/./x", None),
        ("{m}/other/../data/x", None),
        ("../data/x", "{m}/other"),
        ("x", "{m}/data"),
        ("./data/x", "{m}"),
    ],
)
def test_path_normalisation(run, strict_fs, spelling, cwd):
    m = strict_fs.new_dir("m")
    (m / "data").mkdir()
    (m / "other").mkdir()
    make_file(m / "data" / "x", 5000)
    _s, fl = probe(run, spelling.format(m=m), paths=f"{m}/data", cwd=cwd.format(m=m) if cwd else None)
    assert is_direct(fl), f"{spelling} (cwd {cwd}) should match {m}/data after lexical normalisation"


def test_symlinked_spelling_is_not_resolved(run, strict_fs):
    """The path matched is the one the program spelled (lexically normalised), not a resolved one."""
    m = strict_fs.new_dir("m")
    (m / "data").mkdir()
    make_file(m / "data" / "x", 5000)
    os.symlink(m / "data", m / "link")
    assert not is_direct(probe(run, m / "link" / "x", paths=f"{m}/data")[1])
    assert is_direct(probe(run, m / "link" / "x", paths=f"{m}/link")[1])


def test_openat_uses_kernel_path_of_dirfd(run, strict_fs):
    m = strict_fs.new_dir("m")
    (m / "data").mkdir()
    make_file(m / "data" / "x", 5000)
    os.symlink(m / "data", m / "link")
    # dirfd opened through a symlink: the kernel reports .../data
    r = run([bin_path("fdsem"), "probeat", m / "link", "x"], paths=f"{m}/data")
    assert is_direct(fdinfo_of(r.stderr, "x")), r.stderr
    r = run([bin_path("fdsem"), "probeat", m / "data", "x"], paths=f"{m}/data/x")
    assert is_direct(fdinfo_of(r.stderr, "x")), r.stderr
    r = run([bin_path("fdsem"), "probeat", m, "data/../data/x"], paths=f"{m}/data")
    assert is_direct(fdinfo_of(r.stderr, "data/../data/x")), r.stderr
    r = run([bin_path("fdsem"), "probeat", m / "data", "x"], paths=f"{m}/other")
    assert not is_direct(fdinfo_of(r.stderr, "x"))


def test_relative_entry_skipped_with_one_warning(run, strict_fs):
    m = strict_fs.new_dir("m")
    (m / "data").mkdir()
    (m / "rel" / "dir").mkdir(parents=True)
    make_file(m / "data" / "x", 5000)
    make_file(m / "rel" / "dir" / "y", 5000)
    base, _ = probe(run, m / "data" / "x", paths=f"{m}/data")
    s, fl = probe(run, m / "data" / "x", paths=f"rel/dir:{m}/data", cwd=str(m))
    assert is_direct(fl), "the valid entry must still apply"
    w = new_warnings(base, s)
    assert len(w) == 1 and ("S3DLIO_DIRECT_PATHS" in w[0] or "rel/dir" in w[0]), w
    s2, fl2 = probe(run, "rel/dir/y", paths=f"rel/dir:{m}/data", cwd=str(m))
    assert not is_direct(fl2), "a relative entry must be skipped"
    assert_same_run(base, s, "relative PATHS entry")


# --------------------------------------------------------------------------- malformed values

MALFORMED = [
    ("S3DLIO_DIRECT_ALIGN", "3"),
    ("S3DLIO_DIRECT_ALIGN", "abc"),
    ("S3DLIO_DIRECT_ALIGN", "-4096"),
    ("S3DLIO_DIRECT_ALIGN", "99999999999999999999999999"),
    ("S3DLIO_DIRECT_MIN_SIZE", "12Q"),
    ("S3DLIO_DIRECT_MIN_SIZE", "-1"),
    ("S3DLIO_DIRECT_MIN_SIZE", "K"),
    ("S3DLIO_DIRECT_POOL", "lots"),
    ("S3DLIO_DIRECT_POOL", "12XB"),
    ("S3DLIO_DIRECT_LOG", "loud"),
    ("S3DLIO_DIRECT_SYNC", "maybe"),
]


@pytest.mark.parametrize("var,value", MALFORMED, ids=[f"{a[14:]}={b[:10]}" for a, b in MALFORMED])
def test_malformed_variable_one_warning_nothing_else(run, strict_fs, var, value):
    d = strict_fs.new_dir("data")
    make_file(d / "f", 300_001)
    argv = [bin_path("loader"), "-F", "-G", "-b", "4097", d / "f", d / "f"]
    plain = run(argv, shim=False)
    base = run(argv, shim=True, paths=str(d))
    s = run(argv, shim=True, paths=str(d), env={var: value})
    assert_same_run(plain, s, f"{var}={value}")
    assert_same_run(base, s, f"{var}={value}")
    w = new_warnings(base, s)
    assert len(w) == 1, f"{var}={value!r}: expected exactly one warning line, got {w}"
    assert var in w[0], f"the warning must name {var}: {w[0]!r}"
    assert all(is_direct(fl) for _l, _f, fl in fdinfo_lines(s.stderr)), "the rest of the configuration must still apply"



def make_files(d, count, base_size):
    """`count` files f0.. in `d`, of sizes base_size, base_size+1, ...; returns their paths."""
    for i in range(count):
        make_file(d / f"f{i}", base_size + i)
    return [d / f"f{i}" for i in range(count)]

def test_malformed_warning_once_per_process_not_per_open(run, strict_fs):
    d = strict_fs.new_dir("data")
    names = make_files(d, 20, 10_000)
    base = run([bin_path("loader"), "-b", "1000", *names], paths=str(d))
    s = run([bin_path("loader"), "-b", "1000", *names], paths=str(d), env={"S3DLIO_DIRECT_ALIGN": "7"})
    assert_same_run(base, s)
    assert len(new_warnings(base, s)) == 1


# --------------------------------------------------------------------------- knobs


@pytest.mark.parametrize("value", ["8K", "8k", "8KiB", "8kib", "8192"])
def test_min_size(run, strict_fs, value):
    d = strict_fs.new_dir("data")
    make_file(d / "small", 8191)
    make_file(d / "exact", 8192)
    make_file(d / "big", 8193)
    env = {"S3DLIO_DIRECT_MIN_SIZE": value}
    assert not is_direct(probe(run, d / "small", paths=str(d), env=env)[1]), "below MIN_SIZE: buffered"
    assert is_direct(probe(run, d / "exact", paths=str(d), env=env)[1])
    assert is_direct(probe(run, d / "big", paths=str(d), env=env)[1])
    # opens for writing are never skipped
    assert is_direct(probe(run, d / "small", paths=str(d), env=env, how="rw")[1])
    assert is_direct(probe(run, d / "small", paths=str(d), env=env, how="a")[1])


@pytest.mark.parametrize("value,size,expected", [("1M", 1048575, False), ("1mib", 1048576, True), ("1G", 5_000_000, False),
                                                  ("2g", 1, False), ("0", 1, True)])
def test_min_size_suffixes(run, strict_fs, value, size, expected):
    d = strict_fs.new_dir("data")
    make_file(d / "f", size)
    s, fl = probe(run, d / "f", paths=str(d), env={"S3DLIO_DIRECT_MIN_SIZE": value})
    assert is_direct(fl) == expected
    assert shim_warnings(s.stderr) == []


@pytest.mark.parametrize("value,on", [("1", True), ("true", True), ("yes", True), ("on", True), ("TRUE", True),
                                      ("0", False), ("false", False), ("no", False), ("off", False)])
def test_sync_values(run, strict_fs, value, on):
    d = strict_fs.new_dir("data")
    make_file(d / "f", 10_000)
    p, pfl = probe(run, d / "f", how="rw", shim=False)
    s, fl = probe(run, d / "f", paths=str(d), env={"S3DLIO_DIRECT_SYNC": value}, how="rw")
    assert_same_run(p, s, f"SYNC={value}")  # F_GETFL is the program's own
    assert is_direct(fl)
    # O_SYNC goes on the private twin that carries the direct I/O, never on the program's
    # own description
    twin = re.search(r" twin:\s+([0-7]+)", s.stderr.decode())
    assert twin, s.stderr
    assert (int(twin.group(1), 8) & 0o4010000 == 0o4010000) == on, f"SYNC={value}: twin flags {twin.group(1)}"
    assert fdinfo_lines(s.stderr, own=True)[0][2] == fdinfo_lines(p.stderr, own=True)[0][2]
    assert shim_warnings(s.stderr) == []


def test_log_file_receives_the_warning(run, strict_fs):
    m = strict_fs.new_dir("m")
    logd = strict_fs.new_dir("log")
    make_file(m / "x", 5000)
    s, fl = probe(run, m / "x", paths=f"relative:{m}", env={"S3DLIO_DIRECT_LOG_FILE": str(logd / "shim.log")})
    assert is_direct(fl)
    assert shim_warnings(s.stderr) == [], "with LOG_FILE, nothing goes to stderr"
    lines = (logd / "shim.log").read_text().splitlines()
    assert len(lines) == 1 and ("S3DLIO_DIRECT_PATHS" in lines[0] or "relative" in lines[0]), lines


def test_log_at_most_one_line_per_cause(run, ramfs):
    """Many fallbacks of the same kind: at most one line per distinct cause."""
    d = ramfs.new_dir("data")
    names = make_files(d, 30, 5000)
    for level in ("warn",):
        s = run([bin_path("loader"), "-b", "1000", *names], paths=str(d), env={"S3DLIO_DIRECT_LOG": level})
        w = shim_warnings(s.stderr)
        assert len(w) == len(set(w)), f"LOG={level}: repeated lines {w[:10]}"
        assert len(w) < 30, f"LOG={level}: {len(w)} lines for 30 fallbacks of one cause"


def test_config_as_nobody(run, strict_fs):
    d = strict_fs.new_dir("data")
    make_file(d / "f", 300_001)
    os.chmod(d / "f", 0o644)
    argv = [bin_path("loader"), "-F", "-b", "1000", d / "f"]
    p = run(argv, shim=False, user="nobody")
    s = run(argv, shim=True, paths=f"{d}:relative", user="nobody")
    assert_same_run(p, s, "as nobody")
    assert is_direct(fdinfo_of(s.stderr, str(d / "f")))
    assert len(shim_warnings(s.stderr)) == 1
