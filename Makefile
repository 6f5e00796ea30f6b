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
#   make venv     .venv with tests/requirements.txt (re-made only when the requirements change)
#   make test     build + venv, cargo test --workspace --locked, then pytest tests/, then the
#                 differential, stream, real-program and concurrency tests again with read-ahead
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

# the tests that must stay green with every speed mechanism on (the default) and off
MECHANISM_TESTS := tests/test_differential.py tests/test_streams.py tests/test_real_programs.py tests/test_concurrency.py

VENV := .venv
VENV_STAMP := $(VENV)/.requirements.stamp

.PHONY: all build harness venv test lint demo clean bench bench-smoke bench-tools install uninstall

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
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(LIB_SO) $(DESTDIR)$(PREFIX)/lib/libs3dlio_direct.so
	install -m 0755 $(CLI_BIN) $(DESTDIR)$(PREFIX)/bin/s3dlio-direct

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/lib/libs3dlio_direct.so $(DESTDIR)$(PREFIX)/bin/s3dlio-direct

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

clean:
	rm -rf $(BIN) $(VENV) bench/bin bench/.venv
	$(CARGO) clean
