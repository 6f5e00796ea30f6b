#!/usr/bin/env python3
"""bench/ab.py: A/B comparison of two builds of the preload library (`make bench-ab`).

Runs every read and write pattern of bench/bench.py in its "shim" mode with library A and
library B, paired and alternating per round (round 1: A then B, round 2: B then A, ...; each
pattern's two runs back to back, the data's page cache evicted before every read run as
`make bench` does), and writes a Markdown report (docs/benchmarks-ab.md): per pattern the
median MB/s of A and of B, the median of the per-round ratios B/A, their min–max, and a
verdict.

    make bench-ab A=bf3a090 B=worktree
    make bench-ab A=v0.1 B=HEAD BENCH_SIZE=1GiB BENCH_ROUNDS=5 BENCH_WRITE_SIZE=256MiB
    python3 bench/ab.py --a /tmp/old/libs3dlio_direct.so --b target/release/libs3dlio_direct.so
    python3 bench/ab.py --help

A side (--a/--b, env BENCH_AB_A/BENCH_AB_B, make A=/B=) is one of
  a path to a .so   used as it is (an existing file wins over a revision of the same name)
  worktree          this work tree, built in place: cargo build --release --locked -p s3dlio-direct-preload
  a git revision    built from a clean `git archive` export of that commit with
                    `cargo build --release --locked -p s3dlio-direct-preload` (works before and after
                    the crate split of be74df5); the library is cached per commit under
                    BENCH_AB_BUILD_DIR (/var/tmp/s3dlio-bench-ab/<commit>/), cargo's target dir is
                    shared there between revisions (dependencies are built once);
                    BENCH_AB_REBUILD=1 (--rebuild) ignores the cache
Defaults: A = HEAD, B = worktree (what your uncommitted changes do).

Verdict per pattern: "within noise" when the min–max of the per-round ratios includes 1.0 or
the median ratio is within ±BENCH_AB_NOISE (5%) of 1; otherwise "faster" or "slower" (B
against A). One round gives no spread and no verdict ("no spread (1 round)"): use 3 or more.

Everything else is bench/bench.py's (its environment variables and options apply: BENCH_DIR,
BENCH_SIZE (here 1GiB by default), BENCH_FILES, BENCH_ROUNDS, BENCH_CELL_SECS,
BENCH_WRITE_SIZE, BENCH_OUT (docs/benchmarks-ab.md), BENCH_RAW, BENCH_KEEP, BENCH_STRICT
(fail when numpy is missing instead of marking the numpy.load row missing); --smoke is 64 MiB,
2 rounds (both orders), 1 s cells). The
benchmark's own programs (bench/bin) are this work tree's for both sides: only the library
differs. Exit status 1 when a run failed (a verdict of "slower" is reported, not an error).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (bench/bench.py: patterns, runs, eviction, report pieces)
from bench import REPO, fmt, human, med, pct  # noqa: E402

LIB = "libs3dlio_direct.so"
BUILD_CMD = ["build", "--release", "--locked", "-p", "s3dlio-direct-preload"]
NOISE = 0.05


@dataclass
class Side:
    name: str  # "A" or "B"
    spec: str  # as given
    so: str  # the library measured (a private copy once the run starts)
    desc: str  # what it is, for the report


def git(*args, check=True) -> str:
    r = subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"bench-ab: git {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout.strip() if r.returncode == 0 else ""


def cargo(cwd, env_extra=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    cmd = [os.environ.get("CARGO", "cargo"), *BUILD_CMD]
    print(f"bench-ab:   ({cwd}) {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=cwd, env=env)
    if r.returncode != 0:
        sys.exit(f"bench-ab: building in {cwd} failed ({r.returncode})")
    return time.monotonic() - t0


def resolve(name: str, spec: str, build_dir: str, rebuild: bool) -> Side:
    """The library of one side: a path as it is, the work tree built in place, or a git
    revision built from a clean export (cached per commit)."""
    sha = "" if spec == "worktree" or os.path.isfile(spec) else \
        git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}", check=False)
    if spec != "worktree" and not sha:
        if not os.path.isfile(spec):
            sys.exit(f"bench-ab: {name}: {spec!r} is neither a file, nor 'worktree', nor a git revision of {REPO}")
        path = os.path.abspath(spec)
        mtime = datetime.datetime.fromtimestamp(os.path.getmtime(path)).strftime("%Y-%m-%d %H:%M")
        return Side(name, spec, path, f"the file `{spec}` (modified {mtime})")
    if spec == "worktree":
        print(f"bench-ab: {name} = the work tree {REPO}", flush=True)
        cargo(REPO)
        desc = git("describe", "--always", "--dirty", check=False) or "?"
        target = os.path.join(REPO, os.environ.get("CARGO_TARGET_DIR", "target"))
        return Side(name, spec, os.path.join(target, "release", LIB),
                    f"the work tree at `{desc}`, built in place with `cargo {' '.join(BUILD_CMD)}`")
    info = git("log", "-1", "--format=%cs %s", sha)
    subject = info if len(info) <= 90 else info[:87] + "..."
    cached = os.path.join(build_dir, sha, LIB)
    how = f"built from a clean `git archive` export with `cargo {' '.join(BUILD_CMD)}`"
    if os.path.isfile(cached) and not rebuild:
        print(f"bench-ab: {name} = {spec} ({sha[:12]}): cached build {cached}", flush=True)
        when = datetime.datetime.fromtimestamp(os.path.getmtime(cached)).strftime("%Y-%m-%d %H:%M")
        return Side(name, spec, cached, f"`{spec}` = {sha[:12]} ({subject}), {how} (cached build of {when})")
    print(f"bench-ab: {name} = {spec} ({sha[:12]}): exporting and building", flush=True)
    os.makedirs(build_dir, exist_ok=True)
    src = tempfile.mkdtemp(prefix=f"src-{sha[:12]}-", dir=build_dir)
    try:
        arch = subprocess.Popen(["git", "-C", REPO, "archive", "--format=tar", sha], stdout=subprocess.PIPE)
        tar = subprocess.run(["tar", "-x", "-C", src], stdin=arch.stdout)
        arch.stdout.close()
        if arch.wait() != 0 or tar.returncode != 0:
            sys.exit(f"bench-ab: exporting {sha} failed")
        target = os.path.join(build_dir, "target")
        secs = cargo(src, {"CARGO_TARGET_DIR": target})
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        shutil.copy2(os.path.join(target, "release", LIB), cached + ".tmp")
        os.replace(cached + ".tmp", cached)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    return Side(name, spec, cached, f"`{spec}` = {sha[:12]} ({subject}), {how} ({secs:.0f} s)")


def patterns(ctx):
    """The read and write rows that run in shim mode (a row whose tool is missing is left out)."""
    shim = bench.MODES["shim"]
    return [p for p in bench.PATTERNS if p.kind in ("read", "write") and not bench.cell_allowed(ctx, p, shim)]


def run_ab(ctx, sides, pats):
    """results[(pattern key, side name)] = [result per round]; sides alternate per round."""
    results = {}
    shim = bench.MODES["shim"]
    t0 = time.monotonic()
    for rnd in range(ctx.rounds):
        order = sides if rnd % 2 == 0 else sides[::-1]
        print(f"bench-ab: round {rnd + 1}/{ctx.rounds}, order {' '.join(s.name for s in order)} "
              f"({time.monotonic() - t0:.0f} s so far)", flush=True)
        for pat in pats:
            got = {}
            for side in order:
                r = bench.run_cell(ctx, pat, shim, shim=side.so)
                results.setdefault((pat.key, side.name), []).append(r)
                got[side.name] = r["mbps"] if r else None
            a, b = got.get("A"), got.get("B")
            ratio = f"B/A {b / a:.3f}" if a and b else "FAILED"
            print(f"bench-ab:   {pat.label:36s} A {fmt(a)}, B {fmt(b)} MB/s, {ratio}", flush=True)
    return results, time.monotonic() - t0


def verdict(ratios, noise=NOISE):
    if not ratios:
        return "–"
    if len(ratios) < 2:
        return "no spread (1 round)"
    m = med(ratios)
    if min(ratios) <= 1.0 <= max(ratios) or abs(m - 1.0) <= noise:
        return "within noise"
    return "faster" if m > 1.0 else "slower"


def rows(results, pats, noise=NOISE):
    """[(pattern, median A, median B, per-round ratios B/A, verdict)]"""
    out = []
    for pat in pats:
        ra, rb = results.get((pat.key, "A")), results.get((pat.key, "B"))
        rs = bench.paired_ratios(rb, ra)
        out.append((pat, med([r["mbps"] for r in ra or [] if r and r["ok"]]),
                    med([r["mbps"] for r in rb or [] if r and r["ok"]]), rs, verdict(rs, noise)))
    return out


def write_report(ctx, sides, pats, results, S, facts, elapsed, noise):
    L = ["# s3dlio-direct A/B benchmark\n"]
    which = ("every read and write pattern" if len(pats) == len(patterns(ctx))
             else "the read and write patterns below (a subset, `BENCH_AB_PATTERNS`)")
    L.append(f"Generated by `make bench-ab` (`bench/ab.py`) on {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}: "
             f"two builds of the preload library, A and B, on {which} of `make bench` "
             f"in its shim mode. {human(ctx.nfiles * ctx.file_size)} of data in {ctx.nfiles} `.npy` files of "
             f"{human(ctx.file_size)}, writes of up to {human(ctx.write_size)}, {ctx.rounds} round(s); in each "
             f"round every pattern runs with A and with B back to back, A first in odd rounds and B first in "
             f"even ones (drift cancels), the data evicted from the page cache before every read run; each "
             f"run capped at {ctx.cell_secs:g} s (a capped run reports what it moved in that time). "
             f"Run time {elapsed / 60:.1f} min.\n")
    L.append("| side | library |\n|---|---|")
    for s in sides:
        L.append(f"| {s.name} | {s.desc} |")
    L.append("")
    L.append("## Machine\n")
    L.append("| fact | value |\n|---|---|")
    for k, v in facts:
        L.append(f"| {k} | {v} |")
    L.append("")
    if ctx.missing:
        L.append("**Missing tools, their rows are left out:** " + "; ".join(ctx.missing.values()) + "\n")
    L.append("## Throughput, B against A\n")
    L.append(f"MB/s (10^6 bytes/s of the program's own I/O time, fsync included for writes): medians over the "
             f"rounds. B/A: the median of the per-round ratios of the paired runs, their min–max, and each "
             f"round's. Verdict: \"within noise\" when the min–max includes 1.0 or the median is within "
             f"±{noise * 100:g}% of 1, else B is \"faster\" or \"slower\" than A.\n")
    L.append("| pattern | A MB/s | B MB/s | B/A median | B/A min–max | B/A per round | verdict |")
    L.append("|---|---|---|---|---|---|---|")
    for pat, ma, mb, rs, v in rows(results, pats, noise):
        mm = f"{min(rs):.2f}–{max(rs):.2f}" if rs else "–"
        per = ", ".join(f"{r:.2f}" for r in rs) or "–"
        shown = f"**{v}**" if v in ("faster", "slower") else v
        L.append(f"| {pat.label} | {fmt(ma) if ma else 'FAILED'} | {fmt(mb) if mb else 'FAILED'} | "
                 f"{fmt(med(rs), '{:.3f}')} | {mm} | {per} | {shown} |")
    L.append("")
    L.append("## Details per side\n")
    L.append("MB/s median [min–max over rounds]; CPU: user+system seconds per GiB moved; device: bytes the "
             "process made the device move per byte asked; cache peak/end: page-cache residency of the data "
             "during/after the run in % of the bytes moved; RSS: peak resident set; direct opens and bounced "
             "bytes (% of bytes moved) from the library's own statistics.\n")
    L.append("| pattern | side | MB/s | CPU s/GiB | device/asked | cache peak | cache end | RSS MiB | shim |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for pat in pats:
        for s in sides:
            c = S.get((pat.key, s.name))
            if not c:
                continue
            if c.get("failed"):
                L.append(f"| {pat.label} | {s.name} | FAILED | | | | | | |")
                continue
            shim = (f"direct opens {fmt(c['opens_direct'])}, bounced {fmt(c['bounced_pct'])}%"
                    if c["opens_direct"] is not None else "no stats")
            if c["fallbacks"]:
                shim += "; fallbacks: " + ", ".join(c["fallbacks"])
            L.append(f"| {pat.label} | {s.name} | {c['mbps']:.0f} [{c['mbps_min']:.0f}–{c['mbps_max']:.0f}] | "
                     f"{fmt(c['cpu_per_gib'], '{:.2f}')} | {fmt(c['dev_ratio'], '{:.2f}')} | {pct(c['peak_pct'])} | "
                     f"{pct(c['end_pct'])} | {c['rss_mib']:.0f} | {shim} |")
    L.append("")
    L.append("Rerun: `make bench-ab A=<rev|.so> B=<rev|worktree|.so>` (`BENCH_SIZE=`, `BENCH_ROUNDS=`, "
             "`BENCH_WRITE_SIZE=`, `BENCH_DIR=`; see the header of `bench/ab.py`).\n")
    return "\n".join(L) + "\n"


def main():
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_common_args(ap, os.path.join(REPO, "docs", "benchmarks-ab.md"), size_default="1GiB", smoke_rounds=2)
    ap.add_argument("--a", default=env("BENCH_AB_A") or "HEAD", help="side A: a .so, 'worktree' or a git revision")
    ap.add_argument("--b", default=env("BENCH_AB_B") or "worktree", help="side B: a .so, 'worktree' or a git revision")
    ap.add_argument("--build-dir", default=env("BENCH_AB_BUILD_DIR", "/var/tmp/s3dlio-bench-ab"),
                    help="where revisions are exported, built and their libraries cached")
    ap.add_argument("--rebuild", action="store_true", default=env("BENCH_AB_REBUILD", "") not in ("", "0"))
    ap.add_argument("--noise", type=float, default=float(env("BENCH_AB_NOISE", str(NOISE))),
                    help="median ratio within 1 ± this is 'within noise' (default 0.05)")
    ap.add_argument("--patterns", default=env("BENCH_AB_PATTERNS", ""),
                    help="comma-separated pattern keys to run (default: every read and write row), "
                         "e.g. to rerun one row alone")
    a = ap.parse_args()
    bench.apply_smoke(a, rounds=2)  # two rounds: both orders, and a spread
    a.modes = "shim"
    keys = [k.strip() for k in a.patterns.split(",") if k.strip()]
    unknown = [k for k in keys if k not in {p.key for p in bench.PATTERNS}]
    if unknown:
        sys.exit(f"bench-ab: unknown pattern(s) {unknown} (known: {', '.join(p.key for p in bench.PATTERNS)})")
    build_dir = os.path.abspath(a.build_dir)
    sides = [resolve("A", a.a, build_dir, a.rebuild), resolve("B", a.b, build_dir, a.rebuild)]
    a.shim = sides[0].so
    bench.compile_tools()
    ctx = bench.Ctx(a)
    bench.check_tools(ctx, tools=("numpy",))
    pats = [p for p in patterns(ctx) if not keys or p.key in keys]
    os.makedirs(ctx.dir, exist_ok=True)
    for s in sides:
        s.so = bench.snapshot_shim(ctx, s.so, f"shim-{s.name}")
    fs = bench.bench_dir_info(ctx, "bench-ab")
    print(f"bench-ab: {human(ctx.size)} in {ctx.dir} (device {ctx.dev}, {fs}), {ctx.rounds} round(s), "
          f"{len(pats)} patterns; A = {a.a}, B = {a.b}", flush=True)
    facts = [f for f in bench.machine_facts(ctx) if f[0] != "shim"]
    load0 = os.getloadavg()
    try:
        bench.generate(ctx)
        results, elapsed = run_ab(ctx, sides, pats)
    finally:
        if not ctx.keep:
            shutil.rmtree(ctx.dir, ignore_errors=True)
    load1 = os.getloadavg()
    facts.append(("load average (1 min) at start / end", f"{load0[0]:.2f} / {load1[0]:.2f} "
                  "(shared machine: other jobs ran during the benchmark)"))
    S = bench.summarise(ctx, results, {"fio": [], "fio1m": [], "micro": []})
    out = os.path.abspath(a.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        fh.write(write_report(ctx, sides, pats, results, S, facts, elapsed, a.noise))
    if a.raw:
        raw = {"config": {"size": ctx.nfiles * ctx.file_size, "files": ctx.nfiles, "rounds": ctx.rounds,
                          "cell_secs": ctx.cell_secs, "write_size": ctx.write_size},
               "sides": {s.name: {"spec": s.spec, "desc": s.desc} for s in sides},
               "cells": {f"{pk}/{side}": rs for (pk, side), rs in results.items()},
               "rows": {pat.key: {"a_mbps": ma, "b_mbps": mb, "ratios": rs, "verdict": v}
                        for pat, ma, mb, rs, v in rows(results, pats, a.noise)},
               "missing": ctx.missing}
        with open(a.raw, "w") as fh:
            json.dump(raw, fh, indent=1, default=str)
    for pat, ma, mb, rs, v in rows(results, pats, a.noise):
        print(f"bench-ab: {pat.label:36s} A {fmt(ma)} B {fmt(mb)} MB/s, B/A {fmt(med(rs), '{:.3f}')} "
              f"[{fmt(min(rs) if rs else None, '{:.2f}')}–{fmt(max(rs) if rs else None, '{:.2f}')}] {v}")
    print(f"bench-ab: wrote {out} in {elapsed / 60:.1f} min", flush=True)
    return bench.exit_status(S, "bench-ab")


if __name__ == "__main__":
    sys.exit(main())
