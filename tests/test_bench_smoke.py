"""Smoke test of the benchmark (`make bench`, bench/bench.py): a tiny run (64 MiB, 1 round,
1 s cells) of every pattern in every mode, to a temporary report. It checks that every cell
ran and produced numbers, that the shim really managed the data files in the shim cells
(its statistics), that the report has its tables, and that the generated data is removed.
It checks no performance target: those are for the full `make bench` run.

Tools the benchmark uses besides the repository's own (fio, nocache, matplotlib) may be
absent: their cells are then reported as missing, and this test says so loudly on stderr and
as a warning; it never skips a cell silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from conftest import REPO, disk_tmp_root

BENCH = REPO / "bench" / "bench.py"


def test_bench_smoke(shim, tmp_path):
    data_dir = Path(tempfile.mkdtemp(prefix="s3d-bench-smoke-", dir=disk_tmp_root())) / "bench"
    out = tmp_path / "benchmarks.md"
    raw = tmp_path / "raw.json"
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith(("S3DLIO_DIRECT_", "BENCH_"))}
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--dir", str(data_dir), "--out", str(out), "--raw", str(raw),
         "--shim", shim],
        capture_output=True, text=True, timeout=180, env=env, cwd=str(REPO),
    )
    took = time.monotonic() - t0
    log = f"--- stdout ---\n{r.stdout[-6000:]}\n--- stderr ---\n{r.stderr[-4000:]}"
    assert r.returncode == 0, f"bench.py --smoke failed ({r.returncode})\n{log}"
    assert not data_dir.exists(), f"the generated data in {data_dir} was not removed"
    os.rmdir(data_dir.parent)
    sys.stderr.write(f"\nbench smoke run took {took:.1f} s\n")

    res = json.loads(raw.read_text())
    missing = res["missing"]
    if missing:
        msg = "bench smoke: NOT EXERCISED (tool missing): " + "; ".join(missing.values())
        sys.stderr.write(f"\n*** {msg} ***\n")
        warnings.warn(msg)

    cells = res["cells"]
    # every pattern ran buffered cold and under the shim, with numbers
    bench_src = BENCH.read_text()
    keys = ["c4k", "c64k", "c1m", "c1ma", "rand64k", "rand4k", "stride", "hdrjump", "chunks", "small", "pyread",
            "pyinto", "npy", "fread", "t8", "cw1m", "cw4k", "cw1000", "pyw1m", "pyw4k", "pyw1000"]
    keys += [k for k, module in (("h5shuf", "h5py"), ("h5seq", "h5py"), ("lmdb", "lmdb")) if module not in missing]
    for key in keys:
        assert f'Pattern("{key}"' in bench_src
        for mode in ("cold", "shim"):
            runs = cells.get(f"{key}/{mode}")
            assert runs, f"cell {key}/{mode} did not run\n{log}"
            for run in runs:
                assert run["ok"], f"cell {key}/{mode} failed: {run}"
                assert run["bytes"] > 0 and run["secs"] > 0, f"cell {key}/{mode}: no bytes moved: {run}"
                assert run["maxrss"] > 0 and run["cpu"] >= 0
    # warm and native direct ran where they apply
    for key in ("c4k", "c1ma", "rand64k", "pyinto"):
        assert cells.get(f"{key}/warm") and cells[f"{key}/warm"][0]["ok"]
        assert cells.get(f"{key}/direct") and cells[f"{key}/direct"][0]["ok"]
    assert "cw1000/direct" not in cells, "a 1000-byte write cannot be native O_DIRECT"
    if "nocache" not in missing:
        assert cells["c64k/nocache"][0]["ok"]
    if "fio" not in missing:
        assert res["fio"] and res["fio"][0]["ok"] and res["fio"][0]["bytes"] > 0
        assert res["fio1m"] and res["fio1m"][0]["ok"]
    # the ceiling ran from huge pages, or the report says why not (not root, or the kernel
    # could not find the memory: then the ceiling is fio's with 4 KiB pages, said so)
    assert res["hugepages"] is True or (isinstance(res["hugepages"], str) and res["hugepages"]), res["hugepages"]
    if res["hugepages"] is not True:
        assert "The ceiling is not the disk's own" in out.read_text(), "the report hides that huge pages were missing"
    # every read row has its device bytes, cold and under the shim
    for key in keys:
        if key.startswith(("cw", "pyw")):
            continue
        for mode in ("cold", "shim"):
            assert cells[f"{key}/{mode}"][0]["dev_read"] is not None, f"{key}/{mode}: no device bytes"

    # the shim cells really went through the shim: it opened the data files direct
    for key in ("c4k", "c1ma", "pyinto", "cw1m", "cw4k", "pyw1000"):
        st = cells[f"{key}/shim"][0].get("shim_stats")
        assert st, f"no shim statistics for {key}/shim"
        assert st.get("opens_direct", 0) >= 1, f"{key}/shim: the shim opened nothing direct: {st}"
    # and the buffered runs did not (no statistics without the shim)
    assert not cells["c4k/cold"][0].get("shim_stats")
    # a buffered cold read leaves the data cached; the mincore sampler sees it
    cold = cells["c1ma/cold"][0]
    assert cold["end_res"] > cold["bytes"] // 2, f"buffered read left no cache? {cold}"
    assert cells["c1ma/direct"][0]["end_res"] < cold["end_res"]

    # the micro-benchmark ran in pairs
    assert res["micro"] and all(a and b for a, b in res["micro"])

    rep = out.read_text()
    for head in ("## Machine", "## Throughput", "## Targets (issue 5)", "## Details per cell", "shim / cold",
                 "shim / native", "shim / ceiling", "device/asked cold → shim", "## Read amplification (issue 14)",
                 "**device ceiling**", "kernel", "filesystem", "device", "cores"):
        assert head in rep, f"report lacks {head!r}"
    assert "FAILED" not in rep, rep
    png = out.with_suffix(".png")
    if "matplotlib" in missing:
        assert not png.exists()
    else:
        assert png.exists() and png.stat().st_size > 10_000


AB = REPO / "bench" / "ab.py"


def test_bench_ab_smoke(shim, tmp_path):
    """The A/B mode (`make bench-ab`, bench/ab.py) at smoke size (64 MiB, 2 rounds, 1 s cells)
    with two library paths (the built library and a copy of it): every read and write row ran
    with A and with B in each round, the order alternated, the report has its table and states
    both sides. No verdict is checked: the two sides are the same library."""
    data_dir = Path(tempfile.mkdtemp(prefix="s3d-bench-ab-smoke-", dir=disk_tmp_root())) / "bench"
    other = tmp_path / "copy" / "libs3dlio_direct.so"
    other.parent.mkdir()
    other.write_bytes(Path(shim).read_bytes())
    out = tmp_path / "benchmarks-ab.md"
    raw = tmp_path / "raw-ab.json"
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith(("S3DLIO_DIRECT_", "BENCH_"))}
    r = subprocess.run(
        [sys.executable, str(AB), "--smoke", "--dir", str(data_dir), "--out", str(out),
         "--raw", str(raw), "--a", shim, "--b", str(other)],
        capture_output=True, text=True, timeout=180, env=env, cwd=str(REPO),
    )
    log = f"--- stdout ---\n{r.stdout[-6000:]}\n--- stderr ---\n{r.stderr[-4000:]}"
    assert r.returncode == 0, f"ab.py --smoke failed ({r.returncode})\n{log}"
    assert not data_dir.exists(), f"the generated data in {data_dir} was not removed"
    os.rmdir(data_dir.parent)
    assert "round 1/2, order A B" in r.stdout and "round 2/2, order B A" in r.stdout, log

    res = json.loads(raw.read_text())
    if res["missing"]:
        msg = "bench ab smoke: NOT EXERCISED (tool missing): " + "; ".join(res["missing"].values())
        sys.stderr.write(f"\n*** {msg} ***\n")
        warnings.warn(msg)
    cells = res["cells"]
    keys = ["c4k", "c64k", "c1m", "c1ma", "rand64k", "pyread", "pyinto", "fread", "t8",
            "cw1m", "cw4k", "cw1000", "pyw1m", "pyw4k", "pyw1000"]
    if "numpy" not in res["missing"]:
        keys.append("npy")
    for key in keys:
        for side in ("A", "B"):
            runs = cells.get(f"{key}/{side}")
            assert runs and len(runs) == 2, f"cell {key}/{side} did not run twice\n{log}"
            for run in runs:
                assert run["ok"] and run["bytes"] > 0, f"cell {key}/{side} failed: {run}"
                st = run.get("shim_stats") or {}
                assert st.get("opens_direct", 0) >= 1, f"{key}/{side}: the library opened nothing direct: {st}"
        row = res["rows"][key]
        assert len(row["ratios"]) == 2 and all(x > 0 for x in row["ratios"]), row
        assert row["verdict"] in ("within noise", "faster", "slower"), row
    assert set(res["sides"]) == {"A", "B"} and shim in res["sides"]["A"]["desc"]

    rep = out.read_text()
    for head in ("# s3dlio-direct A/B benchmark", "## Machine", "## Throughput, B against A", "## Details per side",
                 "| A MB/s | B MB/s | B/A median | B/A min–max |", "kernel", "filesystem", "device", "cores",
                 str(other)):
        assert head in rep, f"report lacks {head!r}"
    assert "FAILED" not in rep, rep
