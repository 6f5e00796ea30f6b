"""Bad program memory is the kernel's business (issue 13, item 1): c-harness/badbuf.c hands
every read and write entry point the library serves NULL, read-only and PROT_NONE-bordered
buffers (aligned and not, so both the direct and the bounce paths run, and reads served from
read-ahead windows) and bad iovecs, and prints every result, errno, file position, what landed
in its memory and the files. Through the library the output is that of the plain run, on the
strict ext4 and on the ordinary disk, in every mechanism setting (the Makefile runs this file
again with read-ahead and write-behind off and with dontcache)."""

import pytest

from conftest import SHIM_ENV, assert_same_file, assert_same_run, bin_path, load_stats, stats_summary, stats_total


@pytest.mark.parametrize("fs,refused", [("strict_fs", False), ("disk", False), ("strict_fs", True)])
def test_bad_buffers_get_the_kernels_answers(run, request, fs, refused):
    """refused: a seccomp filter makes the kernel's copy calls fail (EPERM), as a sandbox may:
    the library leaves the calls to the kernel, mid-call too."""
    mount = request.getfixturevalue(fs)
    dirs = {side: mount.new_dir(side) for side in ("plain", "shim")}
    extra = ["seccomp"] if refused else []
    plain = run([bin_path("badbuf"), dirs["plain"], *extra], shim=False)
    assert plain.returncode == 0, plain.stderr.decode()[-2000:]
    st = mount.new_dir("stats")
    shimmed = run([bin_path("badbuf"), dirs["shim"], *extra], shim=True, paths=str(dirs["shim"]),
                  env={"S3DLIO_DIRECT_STATS": str(st / "s-%p.json")})
    assert shimmed.returncode != -11, "the program died of SIGSEGV through the library"
    assert_same_run(plain, shimmed, f"badbuf on {fs}")
    for name in ("data", "w", "c"):
        assert_same_file(dirs["plain"] / name, dirs["shim"] / name, f"{name} on {fs}")
    # the library served the calls itself (the comparison above is not plain against plain);
    # refused, it served the calls up to the first copy the kernel refused (with dontcache the
    # calls go through the program's own description and need no copy)
    stats = load_stats(st)
    calls = stats_total(stats, "read_calls") + stats_total(stats, "write_calls")
    if refused and SHIM_ENV.get("S3DLIO_DIRECT_MODE") == "dontcache":
        assert calls > 0, stats_summary(stats)
    elif refused:
        assert 0 < calls < 10, stats_summary(stats)
    else:
        assert stats_total(stats, "read_calls") > 1000 and stats_total(stats, "write_calls") > 100, stats_summary(stats)
