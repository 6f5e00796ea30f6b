# s3dlio-direct: build the preload library and the C harness, run the tests.
#   make build    the preload library (built alone, so the store feature and tokio stay out), then the C harness
#   make harness  every c-harness/*.c (and *.cpp) into c-harness/bin/, plus fortified
#                 (-D_FORTIFY_SOURCE=2, with and without _FILE_OFFSET_BITS=64) and static variants
#   make venv     .venv with tests/requirements.txt (re-made only when the requirements change)
#   make test     build + venv, cargo test --workspace --locked, then pytest tests/
#   make lint     cargo fmt --check; cargo clippy --workspace --all-targets --locked -- -D warnings
#   make demo     build, then demo/demo.sh: a Python loader over generated data, plain and under the shim
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

VENV := .venv
VENV_STAMP := $(VENV)/.requirements.stamp

.PHONY: all build harness venv test lint demo clean

all: build

build:
	$(CARGO) build --release --locked -p s3dlio-direct-preload
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

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

demo: build
	bash demo/demo.sh

clean:
	rm -rf $(BIN) $(VENV)
	$(CARGO) clean
