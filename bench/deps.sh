#!/usr/bin/env bash
# bench/deps.sh PYTHON: make sure what `make bench` needs is there.
# Needs: a C compiler, fio, nocache (Debian package), fincore (util-linux), and PYTHON with
# numpy and matplotlib. As root with apt-get, installs what is missing (fio nocache
# python3-numpy python3-matplotlib gcc util-linux); otherwise prints exactly what is missing
# and exits 1. Then makes bench/.venv, a virtual environment of PYTHON that sees its packages
# (--system-site-packages), with h5py and lmdb from PyPI (Debian's interpreter refuses pip
# installs): the benchmark runs with bench/.venv/bin/python.
set -euo pipefail
PY="${1:-python3}"
missing_pkgs=""
command -v cc >/dev/null 2>&1 || missing_pkgs="$missing_pkgs gcc libc6-dev"
command -v fio >/dev/null 2>&1 || missing_pkgs="$missing_pkgs fio"
command -v nocache >/dev/null 2>&1 || missing_pkgs="$missing_pkgs nocache"
command -v fincore >/dev/null 2>&1 || missing_pkgs="$missing_pkgs util-linux"
"$PY" -c 'import numpy' >/dev/null 2>&1 || missing_pkgs="$missing_pkgs python3-numpy"
"$PY" -c 'import matplotlib' >/dev/null 2>&1 || missing_pkgs="$missing_pkgs python3-matplotlib"
# (nothing missing: straight on to the virtual environment, which a fresh clone lacks)
if [ -n "$missing_pkgs" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench: installing$missing_pkgs"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends $missing_pkgs >/dev/null 2>&1 || {
        apt-get update -qq && apt-get install -y -q --no-install-recommends $missing_pkgs >/dev/null
    }
fi
still=""
command -v cc >/dev/null 2>&1 || still="$still a C compiler (cc; Debian: gcc)"
command -v fio >/dev/null 2>&1 || still="$still fio"
command -v nocache >/dev/null 2>&1 || still="$still nocache"
command -v fincore >/dev/null 2>&1 || still="$still fincore(util-linux)"
"$PY" -c 'import numpy' >/dev/null 2>&1 || still="$still numpy-for-$PY"
"$PY" -c 'import matplotlib' >/dev/null 2>&1 || still="$still matplotlib-for-$PY"
if [ -n "$still" ]; then
    echo "bench: missing:$still" >&2
    echo "bench: on Debian as root: apt-get install fio nocache python3-numpy python3-matplotlib util-linux gcc" >&2
    echo "bench: (numpy/matplotlib must be importable by $PY; pass PYTHON=/usr/bin/python3 to use Debian's)" >&2
    exit 1
fi
VENV="$(cd "$(dirname "$0")" && pwd)/.venv"
if ! "$VENV/bin/python" -c 'import h5py, lmdb, numpy, matplotlib, safetensors' >/dev/null 2>&1; then
    test -x "$VENV/bin/python" || "$PY" -m venv --system-site-packages "$VENV" || {
        echo "bench: cannot make a virtual environment with $PY (Debian: apt-get install python3-venv)" >&2
        exit 1
    }
    echo "bench: installing h5py, lmdb and safetensors from PyPI into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check h5py lmdb safetensors || {
        echo "bench: pip could not install h5py, lmdb and safetensors into $VENV" >&2
        exit 1
    }
fi
