"""README's recipes, run: Open MPI's mpirun with 4 ranks, both with the variables exported
by `-x` and with each rank wrapped in `s3dlio-direct run`, and a multiprocessing pool of
each start method (fork, spawn, forkserver) under `run`. Each checks that every rank or
worker went direct (the kernel's fdinfo for its file), that the statistics files add up to
the bytes read, and that `s3dlio-direct stats` (or `run`'s verdict) merges them."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import FDINFO_PY, O_DIRECT, make_file, unavailable
from test_cli import PY, cli, cmd, stats_json  # noqa: F401  (cli is a fixture)

RANKS = 4

# One rank: reads the shard of its rank (Open MPI's OMPI_COMM_WORLD_RANK; no MPI_Init, so
# no mpi4py is needed) and prints what the kernel says of the descriptor.
RANK = FDINFO_PY + r"""
import json, os, sys
rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
path = sys.argv[1 + rank]
flags, n = read_whole(path)
print(json.dumps({"rank": rank, "pid": os.getpid(), "flags": flags, "bytes": n}), flush=True)
"""

# A pool of the given start method reads every shard; each worker reports its pid, the
# kernel's flags for its descriptor and the bytes. Ended with close() and join(), so every
# worker exits normally.
POOL = FDINFO_PY + r"""
import json, multiprocessing as mp, os, sys

def read_all(path):
    flags, n = read_whole(path)
    return {"pid": os.getpid(), "flags": flags, "bytes": n}

if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    pool = ctx.Pool(3)
    got = pool.map(read_all, sys.argv[2:], chunksize=1)
    pool.close()
    pool.join()
    print(json.dumps(got))
"""


@pytest.fixture(scope="module")
def mpirun() -> list[str]:
    exe = shutil.which("mpirun")
    if exe is None:
        unavailable("mpirun is not installed (Debian's openmpi-bin; .ci/run installs it)")
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return [exe, *root, "--oversubscribe", "-np", str(RANKS)]


def shards(d: Path) -> tuple[list[Path], list[int]]:
    files = [d / f"shard{i}" for i in range(RANKS)]
    sizes = [len(make_file(p, (i + 1) * 1048576 + 333 * i, seed=10 + i)) for i, p in enumerate(files)]
    return files, sizes


def rank_lines(stdout: bytes) -> list[dict]:
    # mpirun forwards the ranks' output in pieces: two ranks' lines can end up on one line
    out = [json.loads(m) for m in re.findall(r"\{[^{}]*\}", stdout.decode())]
    return sorted(out, key=lambda r: r["rank"])


def check_ranks(ranks: list[dict], sizes: list[int]):
    assert [r["rank"] for r in ranks] == list(range(RANKS)), ranks
    for r in ranks:
        assert r["flags"] & O_DIRECT, f"rank {r['rank']}: the kernel's fdinfo has no O_DIRECT: {oct(r['flags'])}"
        assert r["bytes"] == sizes[r["rank"]], r


def per_process(d: Path) -> dict[int, dict]:
    return {p["pid"]: p for p in (json.loads(f.read_text()) for f in d.glob("*.json"))}


def test_mpirun_with_the_variables_exported(run, cli, mpirun, disk, tmp_path):
    """mpirun -x LD_PRELOAD -x S3DLIO_DIRECT_PATHS -x S3DLIO_DIRECT_STATS: the variables are
    mpirun's own and exported to every rank (mpirun and its daemon load the library too,
    and open no matched file)."""
    files, sizes = shards(disk)
    st = tmp_path / "st"
    st.mkdir()
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    env = {"S3DLIO_DIRECT_PATHS": disk.path, "S3DLIO_DIRECT_STATS": f"{st}/%h-%p.json"}
    argv = [*mpirun, "-x", "LD_PRELOAD", "-x", "S3DLIO_DIRECT_PATHS", "-x", "S3DLIO_DIRECT_STATS",
            PY, script, *files]
    r = run(argv, env=env, timeout=180)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    ranks = rank_lines(r.stdout)
    check_ranks(ranks, sizes)
    procs = per_process(st)
    for rk in ranks:
        p = procs.get(rk["pid"])
        assert p is not None, f"rank {rk['rank']} (pid {rk['pid']}) wrote no statistics: {sorted(procs)}"
        assert p["opens_direct"] == p["opens_matched"] == 1 and p["read_bytes"] == sizes[rk["rank"]], p
    merged = stats_json(run, cli, st)
    assert merged["processes"] == len(procs) >= RANKS
    assert set(merged["pids"]) >= {rk["pid"] for rk in ranks}
    assert merged["opens_direct"] == merged["opens_matched"] == RANKS
    assert merged["read_bytes"] == sum(sizes)


def test_mpirun_wrapping_each_rank_in_run(run, cli, mpirun, disk, tmp_path):
    """README's recommended form: mpirun ... s3dlio-direct run --paths ... --stats DIR --
    python train.py. Every rank's `run` gives its own verdict; `stats DIR` merges them all."""
    files, sizes = shards(disk)
    st = tmp_path / "st"
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    argv = [*mpirun, cli, "run", "--paths", disk.path, "--stats", st, "--", PY, script, *files]
    r = run(argv, shim=False, timeout=180)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    ranks = rank_lines(r.stdout)
    check_ranks(ranks, sizes)
    assert r.stderr.count(b"verdict   working: 1 of 1 matched opens went direct") == RANKS, r.stderr
    procs = per_process(st)
    assert set(procs) == {rk["pid"] for rk in ranks}, procs
    merged = stats_json(run, cli, st)
    assert merged["processes"] == RANKS
    assert merged["opens_direct"] == merged["opens_matched"] == RANKS
    assert merged["read_bytes"] == sum(sizes)
    table = cmd(run, cli, "stats", st).stdout.decode()
    assert f"TOTAL {RANKS} processes" in " ".join(table.split()), table


@pytest.mark.parametrize("start", ["fork", "spawn", "forkserver"])
def test_a_pool_of_each_start_method_under_run(run, cli, disk, tmp_path, start):
    files = [disk / f"part{i}" for i in range(6)]
    sizes = [len(make_file(p, (i + 1) * 400_009, seed=i)) for i, p in enumerate(files)]
    script = tmp_path / "pool.py"
    script.write_text(POOL)
    st = tmp_path / "st"
    r = cmd(run, cli, "run", "--paths", disk.path, "--stats", st, "--", PY, script, start, *files, timeout=180)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    got = json.loads(r.stdout)
    for g, size in zip(got, sizes):
        assert g["flags"] & O_DIRECT, f"{start} worker {g['pid']}: no O_DIRECT in fdinfo: {oct(g['flags'])}"
        assert g["bytes"] == size
    procs = per_process(st)
    workers = {g["pid"] for g in got}
    assert workers <= set(procs), (workers, sorted(procs))
    assert sum(procs[w]["read_bytes"] for w in workers) == sum(sizes)
    assert sum(p["read_bytes"] for p in procs.values()) == sum(sizes)
    n = len(files)
    assert f"verdict   working: {n} of {n} matched opens went direct".encode() in r.stderr, r.stderr
    noun = "process" if len(procs) == 1 else "processes"
    assert f"s3dlio-direct: {len(procs)} {noun} with statistics".encode() in r.stderr, r.stderr
    merged = stats_json(run, cli, st)
    assert merged["opens_direct"] == merged["opens_matched"] == n
    assert merged["read_bytes"] == sum(sizes)
