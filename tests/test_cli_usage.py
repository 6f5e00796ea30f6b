"""The command line as a user meets it when something is wrong: every usage error of every
subcommand exits 125, a refusal never says what it would have used instead, a `--paths`
entry that matches nothing is named with its nearest existing parent, every warning about
a path names the path, and `probe` shows where a symlink leads and whether that name would
match."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import make_file
from test_cli import EXIT_OWN_FAILURE, PY, cli, cmd  # noqa: F401  (cli is a fixture)


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["--bogus"],
    ["probe"],
    ["probe", "--json"],
    ["probe", "--bogus", "/"],
    ["probe", "--paths", "/a[", "/"],
    ["probe", "--exclude", "/b[", "/"],
    ["stats"],
    ["stats", "--bogus"],
    ["stats", "--json", "--bogus", "f"],
    ["run"],
    ["run", "--paths"],
    ["run", "--paths", "/nonexistent-s3dlio"],
    ["run", "--bogus", "--", "true"],
    ["run", "--paths", "/nonexistent-s3dlio", "--min-size", "12Q", "--", "true"],
    ["run", "--paths", "/nonexistent-s3dlio", "--align", "3", "--", "true"],
    ["run", "--paths", "/nonexistent-s3dlio", "--log", "loud", "--", "true"],
    ["run", "--paths", "/nonexistent-s3dlio", "--only", "bin/cat", "--", "true"],
    ["run", "--paths", "rel[", "--", "true"],
])
def test_every_usage_error_exits_125(run, cli, args):
    r = cmd(run, cli, *args)
    assert r.returncode == EXIT_OWN_FAILURE, (args, r.returncode, r.stderr)
    assert r.stderr.strip(), args
    assert r.stdout == b"", (args, r.stdout)


def test_help_and_version_still_exit_0(run, cli):
    for args in (["--help"], ["--version"], ["help"], ["probe", "-h"], ["stats", "--help"], ["run", "--help"]):
        r = cmd(run, cli, *args)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stdout, args


def test_a_refusal_does_not_contradict_itself(run, cli):
    r = cmd(run, cli, "run", "--paths", "/nonexistent-s3dlio", "--min-size", "12Q", "--log", "loud", "--", "true")
    assert r.returncode == EXIT_OWN_FAILURE
    err = r.stderr.decode()
    assert "S3DLIO_DIRECT_MIN_SIZE='12Q' is not a size" in err and "S3DLIO_DIRECT_LOG='loud'" in err, err
    assert "fix --min-size and --log, then try again" in err, err
    for said in ("using", "skipped", "ignored"):
        assert said not in err, err
    # An unknown variable in the environment: named, and not "ignored" while refused.
    r = cmd(run, cli, "run", "--paths", "/nonexistent-s3dlio", "--", "true", env={"S3DLIO_DIRECT_PAHTS": "/x"})
    assert r.returncode == EXIT_OWN_FAILURE
    err = r.stderr.decode()
    assert "unknown variable S3DLIO_DIRECT_PAHTS" in err and "ignored" not in err, err


def test_paths_that_match_nothing_are_named_and_run_goes_on(run, cli, tmp_path):
    (tmp_path / "data").mkdir()
    make_file(tmp_path / "data" / "x.bin", 4096)
    missing = tmp_path / "dta" / "train"
    r = cmd(run, cli, "run", "--paths", missing, "--paths", f"{tmp_path}/data/*.npy", "--paths", tmp_path / "data",
            "--", PY, "-c", "print('ran')")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"ran\n"
    err = r.stderr.decode()
    assert (f"warning: --paths entry '{missing}' matches nothing that exists "
            f"(the nearest existing parent is {tmp_path})") in err, err
    assert (f"--paths entry '{tmp_path}/data/*.npy' matches nothing that exists "
            f"({tmp_path}/data exists, but nothing in it matches)") in err, err
    assert f"entry '{tmp_path / 'data'}'" not in err, err
    # From the environment, the variable is named instead of the option.
    r = cmd(run, cli, "run", "--", "true", env={"S3DLIO_DIRECT_PATHS": str(missing)})
    assert r.returncode == 0
    assert f"S3DLIO_DIRECT_PATHS entry '{missing}' matches nothing".encode() in r.stderr, r.stderr


def test_an_unwritable_statistics_file_is_named(run, disk, tmp_path):
    make_file(disk / "f", 8192)
    where = tmp_path / "no-such-dir" / "st-%p.json"
    # Python, not cat: coreutils close stderr in their own atexit handler, before the
    # library's runs.
    r = run([PY, "-c", f"open({str(disk / 'f')!r}, 'rb').read()"], paths=str(disk.path),
            env={"S3DLIO_DIRECT_STATS": where})
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert "cannot write the statistics file" in err, err
    line = next(x for x in err.splitlines() if "cannot write the statistics file" in x)
    assert f"{tmp_path}/no-such-dir/st-" in line and ".json" in line and "%p" not in line, line


def test_probe_through_a_symlink_shows_the_resolved_name(run, cli, disk, tmp_path):
    real = disk / "real"
    real.mkdir()
    make_file(real / "shard0", 8192)
    link = tmp_path / "data"
    os.symlink(real, link)
    r = cmd(run, cli, "probe", "--paths", real, link / "shard0")
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    assert "no entry of the paths matches" in text, text
    assert f"resolves to    {real / 'shard0'}" in text, text
    assert f"matches '{real}': direct under the library (for a program that opens it by this name)" in text, text
    (rep,) = json.loads(cmd(run, cli, "probe", "--json", "--paths", real, link / "shard0").stdout)
    assert rep["pattern"]["direct"] is False
    assert rep["resolved"]["path"] == str(real / "shard0")
    assert rep["resolved"]["pattern"]["direct"] is True and rep["resolved"]["pattern"]["entry"] == str(real)
    # Named by the link, matched by the link: the resolved name is still shown, and that it
    # would not match.
    (rep,) = json.loads(cmd(run, cli, "probe", "--json", "--paths", link, link / "shard0").stdout)
    assert rep["pattern"]["direct"] is True
    assert rep["resolved"]["pattern"]["direct"] is False
    # No symlink: nothing resolved.
    (rep,) = json.loads(cmd(run, cli, "probe", "--json", "--paths", real, real / "shard0").stdout)
    assert rep["resolved"] is None
    # A path under the link that does not exist yet resolves too.
    (rep,) = json.loads(cmd(run, cli, "probe", "--json", "--paths", real, link / "new" / "x").stdout)
    assert rep["resolved"]["path"] == str(real / "new" / "x"), rep


def test_probe_warns_about_the_environment_but_refuses_its_own_options(run, cli, tmp_path):
    r = cmd(run, cli, "probe", tmp_path, env={"S3DLIO_DIRECT_PATHS": "rel/x:" + str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert b"warning: S3DLIO_DIRECT_PATHS entry 'rel/x' is not absolute; skipped" in r.stderr, r.stderr
    r = cmd(run, cli, "probe", "--paths", "/a[", tmp_path)
    assert r.returncode == EXIT_OWN_FAILURE
    assert b"fix --paths and try again" in r.stderr and b"skipped" not in r.stderr, r.stderr
    assert r.stdout == b""


def test_readme_says_usage_errors_exit_125():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "usage error" in readme and "125" in readme
