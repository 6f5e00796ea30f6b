"""The Python package as a user gets it: `make wheel` builds a manylinux wheel (auditwheel
says so), which installs with pip into a fresh venv under a path with spaces, with no Rust
on PATH; from there `s3dlio-direct run`, `python -m s3dlio_direct run` and
`s3dlio_direct.stats()` work against the strict ext4 filesystem, the kernel's fdinfo
showing O_DIRECT. Also: an installation prefix with a space (`make install`), and the
package's version, licenses and type marker."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import FDINFO_PY, O_DIRECT, REPO, make_file

PY = sys.executable
ARCH = os.uname().machine
# the glibc the Makefile builds against (WHEEL_GLIBC), as a platform tag
MANYLINUX = f"manylinux_2_17_{ARCH}"

# Reads each file with os.read, then prints the kernel's flags for it, what it read, and
# what the package says about the library from inside the process.
READER = FDINFO_PY + r"""
import json, os, sys
import s3dlio_direct
files = []
for path in sys.argv[1:]:
    flags, n = read_whole(path)
    files.append({"flags": flags, "bytes": n})
print(json.dumps({"files": files, "active": s3dlio_direct.active(), "stats": s3dlio_direct.stats(),
                  "preload": os.environ.get("LD_PRELOAD", ""), "library": str(s3dlio_direct.library_path())}))
"""


def no_make_env() -> dict:
    """The environment without the outer make's jobserver and level (under `make test`)."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


def path_without_rust() -> str:
    """PATH with every directory that holds cargo or rustc left out."""
    dirs = [d for d in os.environ.get("PATH", "/usr/bin:/bin").split(":") if d]
    keep = [d for d in dirs if not any(os.path.exists(os.path.join(d, t)) for t in ("cargo", "rustc"))]
    return ":".join(keep or ["/usr/bin", "/bin"])


@pytest.fixture(scope="module")
def built_wheel() -> tuple[Path, str]:
    """`make wheel`, once for this module: the wheel and what make printed."""
    r = subprocess.run(["make", "-C", str(REPO), "wheel"], capture_output=True, text=True, timeout=1800,
                       env=no_make_env())
    assert r.returncode == 0, f"make wheel failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    wheels = sorted((REPO / "dist").glob("s3dlio_direct-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], r.stdout + r.stderr


@pytest.fixture(scope="module")
def venv(built_wheel, tmp_path_factory) -> Path:
    """A fresh venv under a path with spaces, the wheel installed into it with no Rust on
    PATH and no package index."""
    wheel, _ = built_wheel
    root = tmp_path_factory.mktemp("wheel") / "My Projects" / "ml env"
    root.parent.mkdir(parents=True)
    r = subprocess.run([PY, "-m", "venv", str(root)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    env = {"PATH": path_without_rust(), "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    assert shutil.which("cargo", path=env["PATH"]) is None
    r = subprocess.run([str(root / "bin" / "pip"), "install", "--no-index", "--no-deps", str(wheel)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return root


def venv_env(venv: Path) -> dict:
    """What a user's shell in the activated venv would have, without Rust: the venv's bin first."""
    return {"PATH": f"{venv / 'bin'}:{path_without_rust()}", "HOME": os.environ.get("HOME", "/root"),
            "LC_ALL": "C", "VIRTUAL_ENV": str(venv)}


def run_in(venv: Path, argv: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, timeout=300, env=venv_env(venv), **kw)


# --------------------------------------------------------------------------- the wheel


def test_auditwheel_reports_the_manylinux_tag(built_wheel):
    wheel, output = built_wheel
    name = wheel.name
    assert name.startswith(f"s3dlio_direct-{project_version()}-py3-none-"), name
    assert MANYLINUX in name, name
    tool = REPO / ".venv-wheel" / "bin" / "auditwheel"
    r = subprocess.run([str(tool), "show", str(wheel)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert f'is consistent with the following platform tag: "{MANYLINUX}"' in text, r.stdout
    # make wheel showed the same
    assert "is consistent with the following platform tag" in output


def test_the_wheel_carries_library_command_licenses_and_types(built_wheel):
    wheel, _ = built_wheel
    with zipfile.ZipFile(wheel) as z:
        infos = {i.filename: i for i in z.infolist()}
        wheel_meta = z.read(next(n for n in infos if n.endswith(".dist-info/WHEEL"))).decode()
        metadata = z.read(next(n for n in infos if n.endswith(".dist-info/METADATA"))).decode()
    for name in ("s3dlio_direct/__init__.py", "s3dlio_direct/__main__.py", "s3dlio_direct/py.typed",
                 "s3dlio_direct/libs3dlio_direct.so", "s3dlio_direct/s3dlio-direct"):
        assert name in infos, sorted(infos)
    for exe in ("s3dlio_direct/libs3dlio_direct.so", "s3dlio_direct/s3dlio-direct"):
        assert (infos[exe].external_attr >> 16) & 0o111, f"{exe} is not executable in the wheel"
    licenses = {Path(n).name for n in infos if ".dist-info/licenses/" in n}
    assert {"LICENSE-MIT", "LICENSE-APACHE"} <= licenses, sorted(infos)
    assert f"Tag: py3-none-{MANYLINUX}" in wheel_meta, wheel_meta
    assert "Root-Is-Purelib: false" in wheel_meta
    assert "License-Expression: MIT OR Apache-2.0" in metadata
    assert "s3dlio-direct = s3dlio_direct:main" in zipfile.ZipFile(wheel).read(
        next(n for n in infos if n.endswith("entry_points.txt"))).decode()


def toml_string(path: Path, section: str, key: str) -> str:
    """`key = "value"` in `[section]` of a TOML file (tomllib is Python 3.11+)."""
    text = path.read_text()
    body = text.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0]
    m = re.search(rf'^{key} = "([^"]*)"', body, re.M)
    assert m, f"{path}: no {key} in [{section}]"
    return m.group(1)


def project_version() -> str:
    return toml_string(REPO / "pyproject.toml", "project", "version")


def test_versions_and_licenses_agree():
    version = toml_string(REPO / "Cargo.toml", "workspace.package", "version")
    init = (REPO / "python" / "s3dlio_direct" / "__init__.py").read_text()
    assert re.search(rf'^__version__ = "{re.escape(version)}"$', init, re.M), "python/s3dlio_direct: __version__"
    assert project_version() == version
    assert toml_string(REPO / "Cargo.toml", "workspace.package", "license") == "MIT OR Apache-2.0"
    assert "Permission is hereby granted" in (REPO / "LICENSE-MIT").read_text()
    assert "Apache License" in (REPO / "LICENSE-APACHE").read_text()


# --------------------------------------------------------------------------- installed


def test_the_installed_command_runs_direct_from_a_path_with_spaces(venv, strict_fs, tmp_path):
    files = [strict_fs / "a.bin", strict_fs / "b.bin"]
    sizes = [len(make_file(files[0], 5 * 1048576 + 123, seed=3)), len(make_file(files[1], 1048576, seed=4))]
    assert shutil.which("s3dlio-direct", path=venv_env(venv)["PATH"]) == str(venv / "bin" / "s3dlio-direct")
    st = tmp_path / "st"
    r = run_in(venv, ["s3dlio-direct", "run", "--paths", strict_fs.path, "--stats", st, "--",
                      venv / "bin" / "python", "-c", READER, *files])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    out = json.loads(r.stdout)
    for f, size in zip(out["files"], sizes):
        assert f["flags"] & O_DIRECT, f"the kernel's fdinfo has no O_DIRECT: {oct(f['flags'])}"
        assert f["bytes"] == size
    # LD_PRELOAD cannot hold the venv's path: a link at a plain path leads to the package's library.
    assert " " not in out["preload"] and ":" not in out["preload"], out["preload"]
    assert " " in out["library"]
    assert os.path.realpath(out["preload"]) == os.path.realpath(out["library"])
    assert out["active"] is True
    assert out["stats"]["read_bytes"] == sum(sizes), out["stats"]
    assert out["stats"]["opens_direct"] == 2 and out["stats"]["pid"] > 0
    assert b"verdict   working: 2 of 2 matched opens went direct" in r.stderr, r.stderr
    (proc,) = [json.loads(p.read_text()) for p in st.glob("*.json")]
    assert proc["read_bytes"] == sum(sizes)


def test_python_m_s3dlio_direct_does_the_same(venv, strict_fs, tmp_path):
    f = strict_fs / "c.bin"
    size = len(make_file(f, 3 * 1048576 + 7, seed=5))
    r = run_in(venv, [venv / "bin" / "python", "-m", "s3dlio_direct", "run", "--paths", strict_fs.path,
                      "--stats", tmp_path / "st", "--", venv / "bin" / "python", "-c", READER, f])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    out = json.loads(r.stdout)
    assert out["files"][0]["flags"] & O_DIRECT and out["files"][0]["bytes"] == size
    assert out["stats"]["read_bytes"] == size and out["active"] is True
    assert b"working: 1 of 1 matched opens went direct" in r.stderr, r.stderr
    # The command's own statuses come through the Python entry points unchanged.
    r = run_in(venv, [venv / "bin" / "python", "-m", "s3dlio_direct", "probe"])
    assert r.returncode == 125, r
    r = run_in(venv, ["s3dlio-direct", "run", "--paths", strict_fs.path, "--", "sh", "-c", "exit 7"])
    assert r.returncode == 7, r


def test_the_python_api_without_the_library(venv):
    code = ("import json, s3dlio_direct as s; "
            "print(json.dumps([s.active(), s.stats(), str(s.library_path()), str(s.command_path()), s.__version__]))")
    r = run_in(venv, [venv / "bin" / "python", "-c", code])
    assert r.returncode == 0, r.stderr
    active, stats, lib, command, version = json.loads(r.stdout)
    assert active is False and stats is None
    assert Path(lib).is_file() and Path(lib).name == "libs3dlio_direct.so" and str(venv) in lib
    assert Path(command).is_file() and os.access(command, os.X_OK)
    assert version == project_version()


def test_stats_outside_run_with_ld_preload_by_hand(venv, strict_fs):
    """The library preloaded by hand (its own path has spaces, so through a plain link),
    paths not matching: active() is False, stats() still answers."""
    lib = next(venv.glob("lib/python*/site-packages/s3dlio_direct/libs3dlio_direct.so"))
    link = venv.parent.parent / "libs3dlio_direct.so"
    os.symlink(lib, link)
    assert " " not in str(link)
    env = venv_env(venv) | {"LD_PRELOAD": str(link), "S3DLIO_DIRECT_PATHS": str(strict_fs / "elsewhere")}
    code = "import json, s3dlio_direct as s; print(json.dumps([s.active(), s.stats()]))"
    r = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    active, stats = json.loads(r.stdout)
    assert active is True and stats["opens_matched"] == 0 and stats["schema"] == 1
    env["S3DLIO_DIRECT_PATHS"] = ""
    r = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, timeout=120, env=env)
    active, stats = json.loads(r.stdout)
    assert active is False and stats is not None


def test_pip_install_from_the_source_tree(tmp_path, disk):
    """`pip install .` with Rust on PATH, as a developer would (build isolation: pip fetches
    the build backend). It shares target/release with `make build`, so it rebuilds little."""
    venv = tmp_path / "src venv"
    r = subprocess.run([PY, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", str(REPO)],
                       capture_output=True, text=True, timeout=1200, env=no_make_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    f = disk / "f"
    size = len(make_file(f, 1048576 + 5))
    r = run_in(venv, ["s3dlio-direct", "run", "--paths", disk.path, "--", venv / "bin" / "python", "-c", READER, f])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["files"][0]["flags"] & O_DIRECT and out["stats"]["read_bytes"] == size


# --------------------------------------------------------------------------- make install


def test_make_install_under_a_prefix_with_a_space(run, disk, tmp_path):
    prefix = tmp_path / "My Projects" / "opt"
    r = subprocess.run(["make", "-C", str(REPO), f"PREFIX={prefix}", "install"], capture_output=True, text=True,
                       timeout=120, env=no_make_env())
    assert r.returncode == 0, r.stderr
    installed = prefix / "bin" / "s3dlio-direct"
    assert (prefix / "lib" / "libs3dlio_direct.so").is_file()
    data = make_file(disk / "f", 2 * 1048576 + 1)
    code = FDINFO_PY + r"""
import json, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
flags = kernel_flags(fd)
print(json.dumps({"flags": flags, "bytes": len(os.read(fd, 1 << 22)), "preload": os.environ["LD_PRELOAD"]}))
"""
    r = run([installed, "run", "--paths", disk.path, "--", PY, "-c", code, disk / "f"], shim=False)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["flags"] & O_DIRECT and out["bytes"] == len(data)
    assert " " not in out["preload"]
    assert os.path.realpath(out["preload"]) == str((prefix / "lib" / "libs3dlio_direct.so").resolve())
    r = subprocess.run(["make", "-C", str(REPO), f"PREFIX={prefix}", "uninstall"], capture_output=True, text=True,
                       timeout=120, env=no_make_env())
    assert r.returncode == 0 and not installed.exists(), r.stderr
