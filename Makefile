# s3dlio-direct: build the preload library and the C harness, run the tests.
#   make build    the preload library and the s3dlio-direct command (the workspace's default
#                 members; target/release/s3dlio-direct finds the library beside itself), then the
#                 C harness
#   make install  the library to $(DESTDIR)$(PREFIX)/lib and the command to $(DESTDIR)$(PREFIX)/bin
#                 (PREFIX=/usr/local by default; the command looks for the library in ../lib). It
#                 installs what `make build` built and does not build itself, so
#                 `make build && sudo make install` works without cargo in root's PATH
#   make uninstall  removes those two files again (same PREFIX and DESTDIR)
#   make harness  every c-harness/*.c (and *.cpp) into c-harness/bin/, plus fortified
#                 (-D_FORTIFY_SOURCE=2, with and without _FILE_OFFSET_BITS=64) and static variants
#   make wheel    dist/s3dlio_direct-VERSION-py3-none-manylinux_2_17_ARCH.manylinux2014_ARCH.whl: the
#                 library and the command in the s3dlio_direct Python package, built by setuptools-rust
#                 with cargo-zigbuild against glibc $(WHEEL_GLIBC) (so they run on RHEL 8, Ubuntu 20.04 and
#                 older), retagged and checked by auditwheel. Its tools go into .venv-wheel (pip, from
#                 python/requirements-wheel.txt); Rust and cargo must be on PATH
#   make venv     .venv with tests/requirements.txt (re-made only when the requirements change)
#   make test     build + venv, cargo test --workspace --locked, then pytest tests/, then the
#                 differential, stream, real-program, concurrency and fsx tests again with read-ahead
#                 and write-behind off and with S3DLIO_DIRECT_MODE=dontcache
#   make lint     cargo fmt --check; cargo clippy --workspace --all-targets --locked -- -D warnings
#   make demo     build, then demo/demo.sh: a Python loader over generated data, plain and under the shim
#   make bench    build, install what the benchmark needs (bench/deps.sh: Debian packages, and
#                 bench/.venv with h5py and lmdb from PyPI), run bench/bench.py with it: every
#                 pattern in every mode, report to docs/benchmarks.md + .png (BENCH_SIZE=2GiB,
#                 BENCH_ROUNDS=3, BENCH_DIR=/var/tmp/s3dlio-bench, BENCH_MODES=..., BENCH_PATTERNS=...;
#                 see bench/bench.py). As root it reserves huge pages for the device ceiling's fio
#                 (vm.nr_hugepages) during the run and puts the old value back
#   make bench-smoke  the same at 64 MiB, 1 round, report to a temp file (never part of `make test`)
#   make bench-ab A=<rev|.so> B=<rev|worktree|.so>
#                 A/B of two builds of the preload library (bench/ab.py): every read and write
#                 pattern in shim mode, A and B back to back in each round, alternating A B, B A,
#                 ...; per pattern the median MB/s of A and B, the median and min-max of the
#                 per-round ratios B/A and a verdict (within noise / faster / slower); report to
#                 docs/benchmarks-ab.md. A git revision is built from a clean `git archive`
#                 export (cargo build --release --locked -p s3dlio-direct-preload), cached per
#                 commit in BENCH_AB_BUILD_DIR (/var/tmp/s3dlio-bench-ab); "worktree" builds this
#                 tree in place. Defaults A=HEAD B=worktree; env BENCH_AB_A/BENCH_AB_B work too.
#                 BENCH_SIZE (1GiB), BENCH_ROUNDS, BENCH_WRITE_SIZE, BENCH_OUT as for bench, and
#                 BENCH_AB_PATTERNS=c1m,cw4k to rerun some rows only
#   make clean

SHELL := /bin/bash
CARGO ?= cargo
CC ?= cc
CXX ?= c++
PYTHON ?= python3

HARNESS_DIR := c-harness
BIN := $(HARNESS_DIR)/bin
CFLAGS_H := -O2 -g -Wall -Wextra -D_GNU_SOURCE -pthread
CXXFLAGS_H := -O2 -g -Wall -Wextra -D_GNU_SOURCE -pthread
FORTIFY := -O2 -D_FORTIFY_SOURCE=2
# programs that matter for the fortified (__open_2, __read_chk, __pread_chk, __pread64_chk)
# and static (a program the shim cannot enter) variants
FORTIFIED := diffseq loader fdsem
STATIC := loader writer

C_SRCS := $(wildcard $(HARNESS_DIR)/*.c)
CXX_SRCS := $(wildcard $(HARNESS_DIR)/*.cpp)
C_BINS := $(patsubst $(HARNESS_DIR)/%.c,$(BIN)/%,$(C_SRCS))
CXX_BINS := $(patsubst $(HARNESS_DIR)/%.cpp,$(BIN)/%,$(CXX_SRCS))
FORT_BINS := $(FORTIFIED:%=$(BIN)/%_fortify) $(FORTIFIED:%=$(BIN)/%_fortify64)
STATIC_BINS := $(STATIC:%=$(BIN)/%_static)
HEADERS := $(wildcard $(HARNESS_DIR)/*.h)

PREFIX ?= /usr/local
DESTDIR ?=
LIB_SO := target/release/libs3dlio_direct.so
CLI_BIN := target/release/s3dlio-direct

# the tests that must stay green with every speed mechanism on (the default) and off; the
# tests of a mechanism itself (test_amplification, test_readahead: read-ahead's device bytes)
# assert what it does and run with it on only
MECHANISM_TESTS := tests/test_badbuf.py tests/test_errnos.py tests/test_differential.py tests/test_streams.py \
                   tests/test_stdio_errors.py tests/test_real_programs.py tests/test_concurrency.py tests/test_fsx.py

VENV := .venv
VENV_STAMP := $(VENV)/.requirements.stamp

WHEEL_VENV := .venv-wheel
WHEEL_STAMP := $(WHEEL_VENV)/.requirements.stamp
WHEEL_GLIBC ?= 2.17
ARCH := $(shell uname -m)
WHEEL_PLAT := manylinux_$(subst .,_,$(WHEEL_GLIBC))_$(ARCH)
VERSION := $(shell sed -n 's/^version = "\([^"]*\)".*/\1/p' pyproject.toml)

.PHONY: all build harness venv wheel test lint demo clean bench bench-smoke bench-ab bench-tools install uninstall

all: build

build:
	$(CARGO) build --release --locked
	$(MAKE) harness

harness: $(C_BINS) $(CXX_BINS) $(FORT_BINS) $(STATIC_BINS)

$(BIN):
	mkdir -p $@

$(BIN)/%: $(HARNESS_DIR)/%.c $(HEADERS) | $(BIN)
	$(CC) $(CFLAGS_H) -o $@ $<

$(BIN)/%: $(HARNESS_DIR)/%.cpp | $(BIN)
	$(CXX) $(CXXFLAGS_H) -o $@ $<

$(BIN)/%_fortify: $(HARNESS_DIR)/%.c $(HEADERS) | $(BIN)
	$(CC) $(CFLAGS_H) $(FORTIFY) -o $@ $<

$(BIN)/%_fortify64: $(HARNESS_DIR)/%.c $(HEADERS) | $(BIN)
	$(CC) $(CFLAGS_H) $(FORTIFY) -D_FILE_OFFSET_BITS=64 -o $@ $<

$(BIN)/%_static: $(HARNESS_DIR)/%.c $(HEADERS) | $(BIN)
	$(CC) $(CFLAGS_H) -static -o $@ $<

$(VENV_STAMP): tests/requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

venv: $(VENV_STAMP)

$(WHEEL_STAMP): python/requirements-wheel.txt
	test -x $(WHEEL_VENV)/bin/python || $(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/pip install --quiet --disable-pip-version-check -r python/requirements-wheel.txt
	touch $@

# setuptools' own build/ is removed first, so nothing of an earlier `pip install .` gets in.
# The zig build has its own directory, target/$(ARCH)-unknown-linux-gnu/, beside target/release.
wheel: $(WHEEL_STAMP)
	rm -rf build dist/s3dlio_direct-$(VERSION)-*.whl
	PATH="$(abspath $(WHEEL_VENV))/bin:$$PATH" CARGO=cargo-zigbuild \
	  CARGO_BUILD_TARGET=$(ARCH)-unknown-linux-gnu.$(WHEEL_GLIBC) CARGO_PROFILE_RELEASE_DEBUG=0 \
	  $(WHEEL_VENV)/bin/python -m build --wheel --no-isolation --outdir build/wheel .
	PATH="$(abspath $(WHEEL_VENV))/bin:$$PATH" auditwheel repair --plat $(WHEEL_PLAT) --wheel-dir dist build/wheel/s3dlio_direct-$(VERSION)-*.whl
	$(WHEEL_VENV)/bin/auditwheel show dist/s3dlio_direct-$(VERSION)-*.whl

test: build venv
	$(CARGO) test --workspace --locked
	$(VENV)/bin/python -m pytest -ra tests/
	@echo "== again with read-ahead and write-behind off, then with S3DLIO_DIRECT_MODE=dontcache =="
	S3DLIO_TEST_SHIM_ENV="S3DLIO_DIRECT_READAHEAD=0 S3DLIO_DIRECT_WRITE_BEHIND=0" \
	  $(VENV)/bin/python -m pytest -q -ra $(MECHANISM_TESTS)
	S3DLIO_TEST_SHIM_ENV="S3DLIO_DIRECT_MODE=dontcache" $(VENV)/bin/python -m pytest -q -ra $(MECHANISM_TESTS)

install:
	@for f in $(LIB_SO) $(CLI_BIN); do \
	  test -f $$f || { echo "make install: $$f is missing: run 'make build' first" >&2; exit 1; }; \
	done
	install -d "$(DESTDIR)$(PREFIX)/lib" "$(DESTDIR)$(PREFIX)/bin"
	install -m 0755 $(LIB_SO) "$(DESTDIR)$(PREFIX)/lib/libs3dlio_direct.so"
	install -m 0755 $(CLI_BIN) "$(DESTDIR)$(PREFIX)/bin/s3dlio-direct"

uninstall:
	rm -f "$(DESTDIR)$(PREFIX)/lib/libs3dlio_direct.so" "$(DESTDIR)$(PREFIX)/bin/s3dlio-direct"

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

demo: build
	bash demo/demo.sh

# Debian's interpreter when there is one: bench/deps.sh installs numpy and matplotlib for it with apt
BENCH_PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo $(PYTHON))
BENCH_BINS := $(patsubst bench/src/%.c,bench/bin/%,$(wildcard bench/src/*.c))

bench/bin:
	mkdir -p $@

bench/bin/%: bench/src/%.c | bench/bin
	$(CC) -O2 -Wall -Wextra -pthread -o $@ $<

bench-tools: $(BENCH_BINS)

bench: build bench-tools
	bash bench/deps.sh $(BENCH_PYTHON)
	BENCH_STRICT=1 bench/.venv/bin/python bench/bench.py

bench-smoke: build bench-tools
	bash bench/deps.sh $(BENCH_PYTHON)
	d=$$(mktemp -d) && BENCH_DIR=$$d/data bench/.venv/bin/python bench/bench.py --smoke --out $$d/benchmarks.md \
	  && echo "bench-smoke: report in $$d/benchmarks.md"

# A and B (or BENCH_AB_A, BENCH_AB_B): what bench/ab.py compares; it builds them itself
bench-ab: bench-tools
	bash bench/deps.sh $(BENCH_PYTHON)
	BENCH_STRICT=1 bench/.venv/bin/python bench/ab.py $(if $(A),--a '$(A)') $(if $(B),--b '$(B)')

clean:
	rm -rf $(BIN) $(VENV) $(WHEEL_VENV) bench/bin bench/.venv build dist python/*.egg-info
	$(CARGO) clean
