"""fsx, xfstests' file-system exerciser with an oracle (issue #12, Tests), on the strict ext4
under the library. The crate `fsx` (crates.io; .ci/run installs it with `cargo install
--locked fsx`) replays the same sequence of operations for a seed and checks every read, mapped
read and the file's size against its own copy of what the file must hold. On: pread/pwrite,
mapped reads and writes (mmap, msync, munmap), truncates, close and reopen, msync
invalidation, fsync, fdatasync, posix_fallocate, hole punching, sendfile,
copy_file_range and posix_fadvise.

Two shapes: small operations in a small file (every call bounced or dropped behind), and
operations up to 2.5 MiB in an 8 MiB file (interiors that go direct next to heads and tails
through the page cache). `make test` runs this file again with read-ahead and write-behind off
and with S3DLIO_DIRECT_MODE=dontcache (MECHANISM_TESTS). A plain run of one seed per shape is
the control. A failure names the seed; fsx's log of the last operations is in the message and
the artifacts (the expected file image, `*.fsxgood`) are kept in the test's directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import SHIM_ENV, load_stats, stats_summary, stats_total, unavailable

OPS = {"small": 8000, "large": 1500}
SEEDS = [1, 2, 3]

WEIGHTS = """
[weights]
close_open = 2
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 4
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 1
sendfile = 2
posix_fadvise = 1
copy_file_range = 2
"""

CONFIGS = {
    # a 256 KiB file, operations up to 64 KiB at any offset
    "small": "flen = 262144\n[opsize]\nmax = 65536\nmin = 0\nalign = 1\n" + WEIGHTS,
    # an 8 MiB file, operations up to 2.5 MiB: beyond the 1 MiB write-behind size
    "large": "flen = 8388608\n[opsize]\nmax = 2621440\nmin = 0\nalign = 1\n" + WEIGHTS,
}


def fsx_binary() -> str:
    """fsx on PATH or in cargo's bin directory; unavailable (a failure under CI) otherwise."""
    cargo_bin = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "bin"
    found = shutil.which("fsx") or shutil.which("fsx", path=str(cargo_bin))
    if not found:
        unavailable("fsx is not installed: `cargo install --locked fsx` (.ci/run does it), and put ~/.cargo/bin on PATH")
    return found


def run_fsx(run, fs, shape: str, seed: int, shim: bool):
    fsx = fsx_binary()
    side = "shim" if shim else "plain"
    d = fs.new_dir(f"data-{side}-{shape}-{seed}")
    art = fs.new_dir(f"artifacts-{side}-{shape}-{seed}")  # outside the matched directory
    sd = fs.new_dir(f"stats-{side}-{shape}-{seed}")
    cfg = art / "fsx.toml"
    cfg.write_text(CONFIGS[shape])
    f = d / "fsx.bin"
    what = f"fsx {shape} seed {seed} ({side}{' ' + str(SHIM_ENV) if shim and SHIM_ENV else ''})"
    r = run([fsx, "-N", str(OPS[shape]), "-S", str(seed), "-f", cfg, "-P", art, f], shim=shim,
            paths=str(d) if shim else None, env={"S3DLIO_DIRECT_STATS": str(sd / "s-%p.json")} if shim else None,
            timeout=600)
    out = (r.stdout + r.stderr).decode(errors="replace")
    if r.returncode != 0 or "All operations completed A-OK!" not in out:
        log = ""
        for p in sorted(art.glob("*.fsxlog")):
            log += f"\n--- {p} (tail) ---\n" + p.read_text(errors="replace")[-4000:]
        raise AssertionError(f"{what}: fsx failed with status {r.returncode} (rerun: {fsx} -N {OPS[shape]} -S {seed} "
                             f"-f {cfg} FILE)\n{out[-6000:]}{log}\nartifacts in {art}")
    if shim:
        stats = load_stats(sd)
        summary = stats_summary(stats)
        assert stats_total(stats, "opens_matched") > 0, f"{what}: the library did not match fsx's file\n{summary}"
        assert stats_total(stats, "write_calls") > 0 and stats_total(stats, "read_calls") > 0, (
            f"{what}: the library served none of fsx's reads or writes\n{summary}")
        if SHIM_ENV.get("S3DLIO_DIRECT_MODE", "direct") == "direct":
            assert stats_total(stats, "opens_direct") > 0, f"{what}: fsx's file never went direct\n{summary}"
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", list(CONFIGS))
def test_fsx(run, strict_fs, shape, seed):
    run_fsx(run, strict_fs, shape, seed, shim=True)


@pytest.mark.parametrize("shape", list(CONFIGS))
def test_fsx_plain_control(run, strict_fs, shape):
    """fsx itself passes on this filesystem without the library (same seed as the first)."""
    run_fsx(run, strict_fs, shape, SEEDS[0], shim=False)
