"""Sanitizer-built programs under `s3dlio-direct run` (issue 13, item 5).

ASan aborts ("ASan runtime does not come first") when another object is loaded before its
runtime, so `run` puts the sanitizer runtimes in front of the library: the one CMD links (its
ELF DT_NEEDED, CMD found through PATH as exec finds it) and the ones the user preloads. A
program built with -fsanitize=address (and thread, undefined) under `run`, with and without a
user-preloaded runtime, exits as without the library, prints the same, its I/O went direct
(the kernel's fdinfo of the library's twin, and run's statistics), and ASan still catches a
read into a too-small buffer. Programs started further down (`run -- make check`) are
README's troubleshooting case: ASan aborts there unless ASAN_OPTIONS has
verify_asan_link_order=0, which both tests show."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, fdinfo_lines, is_direct, make_file, unavailable
from test_cli import cli, cmd  # noqa: F401  (cli is a fixture)

# Writes FILE from a misaligned heap buffer, reads it back at misaligned offsets, compares,
# prints what the kernel says of its descriptor (and of the library's twin); with "overflow",
# reads 200 bytes into a 100-byte buffer, which ASan must report.
PROG = r"""
#include "common.h"

int main(int argc, char **argv)
{
    if (argc > 2 && !strcmp(argv[2], "overflow")) {
        int fd = open(argv[1], O_RDONLY);
        char *small = malloc(100);
        ssize_t n = read(fd, small, 200);
        printf("read %zd\n", n);
        free(small);
        return 0;
    }
    if (argc > 2 && !strcmp(argv[2], "overflow-aligned")) {
        /* aligned memory, offset and length: the library would read it direct */
        int fd = open(argv[1], O_RDONLY);
        char *page = NULL;
        if (posix_memalign((void **)&page, 4096, 4096)) die("posix_memalign");
        ssize_t n = read(fd, page, 8192);
        printf("read %zd\n", n);
        free(page);
        return 0;
    }
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("open");
    size_t len = 300001;
    char *out = malloc(len + 1), *in = malloc(len + 1);
    for (size_t i = 0; i < len; i++) out[i + 1] = (char)(i * 7 + 3);
    for (size_t done = 0; done < len;) {
        size_t piece = len - done < 70001 ? len - done : 70001;
        if (write(fd, out + 1 + done, piece) != (ssize_t)piece) die("write");
        done += piece;
    }
    if (pread(fd, in + 1, len - 5, 5) != (ssize_t)(len - 5)) die("pread");
    printf("same %d\n", !memcmp(in + 1, out + 6, len - 5));
    print_fdinfo(argv[1], fd);
    free(out);
    free(in);
    close(fd);
    return 0;
}
"""

KINDS = ["address", "thread", "undefined"]


def runtime_of(exe: Path, kind: str) -> str:
    """The sanitizer runtime `exe` links, as ldd resolves it."""
    out = subprocess.run(["ldd", exe], capture_output=True, text=True, check=True).stdout
    stem = {"address": "libasan", "thread": "libtsan", "undefined": "libubsan"}[kind]
    for line in out.splitlines():
        if line.strip().startswith(stem + "."):
            return line.split("=>")[1].split()[0]
    pytest.fail(f"{exe} does not link {stem}: {out}")


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        unavailable("no C compiler")
    d = tmp_path_factory.mktemp("san")
    (d / "prog.c").write_text(PROG)
    built = {}
    for kind in KINDS:
        exe = d / f"prog_{kind}"
        r = subprocess.run([cc, "-O1", "-g", f"-fsanitize={kind}", "-D_GNU_SOURCE", "-pthread",
                            "-I", REPO / "c-harness", "-o", exe, d / "prog.c"], capture_output=True, text=True)
        if r.returncode != 0:
            unavailable(f"cannot build with -fsanitize={kind} (is its runtime installed? .ci/run installs it): {r.stderr}")
        built[kind] = exe
    return built


def direct_of(stderr) -> bool:
    lines = fdinfo_lines(stderr)
    assert lines, f"the program printed no fdinfo: {stderr!r}"
    return is_direct(lines[0][2])


def opens_direct(run, cli, st) -> int:
    r = cmd(run, cli, "stats", "--json", st)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["opens_direct"]


@pytest.mark.parametrize("preload", ["none", "path", "name"])
@pytest.mark.parametrize("kind", KINDS)
def test_sanitized_program_under_run(run, cli, strict_fs, tmp_path, programs, kind, preload):
    exe = programs[kind]
    d = strict_fs.new_dir("data")
    plain = run([exe, d / "plain"], shim=False)
    assert plain.returncode == 0, plain.stderr
    env = {}
    if preload != "none":
        lib = runtime_of(exe, kind)
        env["LD_PRELOAD"] = lib if preload == "path" else os.path.basename(lib)
    st = tmp_path / "st"
    r = cmd(run, cli, "run", "--paths", d, "--stats", st, "--", exe, d / "run", env=env)
    err = r.stderr.decode(errors="replace")
    assert "does not come first" not in err, err
    assert r.returncode == plain.returncode, err
    assert r.stdout == plain.stdout == b"same 1\n", err
    assert direct_of(r.stderr), f"-fsanitize={kind}: the file did not go direct: {err}"
    assert opens_direct(run, cli, st) >= 1
    assert (d / "run").read_bytes() == (d / "plain").read_bytes()


def test_program_found_through_path(run, cli, strict_fs, tmp_path, programs):
    """CMD given by name: its runtime is found in the file PATH gives, as exec finds it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shutil.copy2(programs["address"], bindir / "asanprog")
    d = strict_fs.new_dir("data")
    env = {"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    r = cmd(run, cli, "run", "--paths", d, "--", "asanprog", d / "f", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"same 1\n" and direct_of(r.stderr)


@pytest.mark.parametrize("how", ["overflow", "overflow-aligned"])
def test_asan_still_catches_a_bad_read(run, cli, strict_fs, programs, how):
    """With its runtime first, ASan checks every read, also one the library would serve
    straight into the program's buffer (aligned)."""
    d = strict_fs.new_dir("data")
    make_file(d / "f", 100_000)
    plain = run([programs["address"], d / "f", how], shim=False)
    r = cmd(run, cli, "run", "--paths", d, "--", programs["address"], d / "f", how)
    assert plain.returncode != 0 and r.returncode == plain.returncode, (plain.stderr, r.stderr)
    for p in (plain, r):
        assert b"heap-buffer-overflow" in p.stderr, p.stderr


def test_asan_program_further_down(run, cli, strict_fs, programs):
    """`run -- sh -c PROG`: the shell links no sanitizer, so `run` cannot put ASan's runtime
    first for PROG; ASan refuses, and README's remedy (verify_asan_link_order=0) works."""
    d = strict_fs.new_dir("data")
    line = f"{programs['address']} {d}/f"
    r = cmd(run, cli, "run", "--paths", d, "--", "sh", "-c", line)
    assert r.returncode != 0 and b"does not come first" in r.stderr, r.stderr
    r = cmd(run, cli, "run", "--paths", d, "--", "sh", "-c", line, env={"ASAN_OPTIONS": "verify_asan_link_order=0"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"same 1\n" and direct_of(r.stderr)
