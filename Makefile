# kvtrace — plain Makefile.
#
#   make                 build lib, tools and tests into build/ and bin/
#   make test            install missing Debian packages (as root), build, run every test
#   make demo            the README's main job: replay the default sweep on traces/ref4_text.h5
#   make truth           proxy vs in-model truth on the sample model (docs/METHODS.md §10, §12)
#   make samples         regenerate the shipped traces (traces/sample*.h5, traces/ref4_*.h5, ref8_*.h5)
#   make bench           benchmarks (never part of make test; BENCH_QUICK=1, BENCH_LONG=0|only)
#   make deps            install kvtrace's Debian dependencies (idempotent)
#   make SAN=address,undefined test     sanitizer build (objects go to build-san/)
#   make OMP=0 test      build without OpenMP
#   make O=/tmp/x/ ...   put build/ and bin/ under another root (parallel builds)
#
# Programs: a file named cli_<prog>.c holds main() of bin/<prog>; every other .c of a
# folder is library code. Tests: tests/unit/test_*.c each become bin/tests/test_*.

CC      ?= gcc
PYTHON  ?= /usr/bin/python3
OMP     ?= 1
SAN     ?=
O       ?=

ifeq ($(SAN),)
BUILD   := $(O)build
else
BUILD   := $(O)build-san
endif
BIN     := $(O)bin

CSTD    := -std=c11 -D_GNU_SOURCE
WARN    := -Wall -Wextra -Wno-unused-parameter
OPT     ?= -O2 -g
HDF5_CFLAGS := $(shell pkg-config --cflags hdf5 2>/dev/null || echo -I/usr/include/hdf5/serial)
HDF5_LIBS   := $(shell pkg-config --libs hdf5 2>/dev/null || echo -L/usr/lib/x86_64-linux-gnu/hdf5/serial -lhdf5)
# GSL with OpenBLAS as its CBLAS, the way the GSL manual documents an optimised BLAS.
GSL_LIBS    := -lgsl -lopenblas

CFLAGS  := $(CSTD) $(OPT) $(WARN) $(HDF5_CFLAGS) $(EXTRA_CFLAGS)
# Layering: lib/ (libkvtrace) sees only its own headers, replay/ (libkvreplay, kvreplay) lib/
# and replay/, analysis/ (libkvanalysis, kvreport) lib/ and analysis/; kvreport links without
# libkvreplay. Tests, benchmarks and fuzz harnesses see everything.
INC_lib      := -Ilib
INC_replay   := -Ilib -Ireplay
INC_analysis := -Ilib -Ianalysis
INC_ALL      := -Ilib -Ireplay -Ianalysis
INC          := $(INC_ALL)
LDLIBS  := $(HDF5_LIBS) -lz $(GSL_LIBS) -lm

ifeq ($(OMP),1)
CFLAGS  += -fopenmp
LDFLAGS += -fopenmp
endif
ifneq ($(SAN),)
CFLAGS  += -fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=$(SAN)
endif

LIB_SRC     := $(wildcard lib/*.c)
REPLAY_SRC  := $(filter-out replay/cli_%.c,$(wildcard replay/*.c replay/strategies/*.c))
ANALYSIS_SRC:= $(filter-out analysis/cli_%.c,$(wildcard analysis/*.c))
CLI_SRC     := $(filter-out %_mpi.c,$(wildcard replay/cli_*.c analysis/cli_*.c))
MPI_SRC     := $(wildcard replay/cli_*_mpi.c)
TEST_SRC    := $(wildcard tests/unit/test_*.c)
FUZZ_SRC    := $(wildcard fuzz/fuzz_*.c)
FUZZ_NAMES  := $(patsubst fuzz/fuzz_%.c,%,$(FUZZ_SRC))

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))
LIBKV       := $(BUILD)/libkvtrace.a
LIBREPLAY   := $(BUILD)/libkvreplay.a
LIBANALYSIS := $(BUILD)/libkvanalysis.a
PROGS       := $(patsubst cli_%,$(BIN)/%,$(basename $(notdir $(CLI_SRC))))
TESTS       := $(patsubst tests/unit/%.c,$(BIN)/tests/%,$(TEST_SRC))
REGRESS     := $(patsubst %,$(BIN)/fuzz/regress_%,$(FUZZ_NAMES))
MPICC       := $(shell command -v mpicc 2>/dev/null)
ifneq ($(MPICC),)
ifneq ($(MPI_SRC),)
MPI_PROGS   := $(patsubst cli_%_mpi,$(BIN)/%-mpi,$(basename $(notdir $(MPI_SRC))))
endif
endif

# Debian packages: build/run, capture and Python-side tests.
DEB_PKGS := gcc make pkg-config libhdf5-dev hdf5-tools zlib1g-dev libgsl-dev libopenblas-dev \
            gnuplot-nox openmpi-bin libopenmpi-dev python3-torch python3-h5py python3-numpy \
            python3-scipy bible-kjv

.PHONY: all test demo samples models truth bench deps deps-check clean install probe fuzz fuzz-bins
# Keep objects make would treat as intermediate (they are reused by every program).
.SECONDARY:
all: probe $(PROGS) $(MPI_PROGS) $(TESTS) $(REGRESS)

probe:
	@printf '%s\n' "kvtrace build: CC=$(CC) OMP=$(OMP) SAN=$(if $(SAN),$(SAN),none) -> $(BUILD)/ $(BIN)/"
	@if [ "$(OMP)" = 1 ]; then echo "  OpenMP: on (-fopenmp)"; else echo "  OpenMP: off (OMP=0)"; fi
	@if [ -n "$(MPICC)" ]; then echo "  Open MPI: found ($(MPICC)), building kvreplay-mpi"; \
	 else echo "  Open MPI: not found, kvreplay-mpi not built"; fi

$(BUILD)/lib/%.o: INC := $(INC_lib)
$(BUILD)/replay/%.o: INC := $(INC_replay)
$(BUILD)/analysis/%.o: INC := $(INC_analysis)
$(BUILD)/%.o: %.c $(wildcard lib/*.h replay/*.h replay/strategies/*.h analysis/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(INC) -c $< -o $@

$(LIBKV): $(call obj,$(LIB_SRC))
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
$(LIBREPLAY): $(call obj,$(REPLAY_SRC))
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
$(LIBANALYSIS): $(call obj,$(ANALYSIS_SRC))
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

ALL_LIBS := $(LIBANALYSIS) $(LIBREPLAY) $(LIBKV)

$(BIN)/%: $(BUILD)/replay/cli_%.o $(LIBREPLAY) $(LIBKV)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIBREPLAY) $(LIBKV) $(LDLIBS)
$(BIN)/%: $(BUILD)/analysis/cli_%.o $(LIBANALYSIS) $(LIBKV)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIBANALYSIS) $(LIBKV) $(LDLIBS)
$(BIN)/tests/%: $(BUILD)/tests/unit/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(ALL_LIBS) $(LDLIBS)
# fuzz/fuzz_<name>.c + fuzz/driver.c: replays fuzz/regress/<name>/ without libFuzzer
$(BIN)/fuzz/regress_%: $(BUILD)/fuzz/fuzz_%.o $(BUILD)/fuzz/driver.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/fuzz/driver.o $(ALL_LIBS) $(LDLIBS)
$(BIN)/%-mpi: replay/cli_%_mpi.c $(ALL_LIBS)
	@mkdir -p $(dir $@)
	OMPI_CC=$(CC) $(MPICC) $(CFLAGS) $(INC_replay) $(LDFLAGS) -o $@ $< $(LIBREPLAY) $(LIBKV) $(LDLIBS)

# Installs what is missing when root; otherwise names the command to run. Idempotent.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "deps: all Debian packages present"; exit 0; fi; \
	echo "deps: missing:$$missing"; \
	if [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null && echo "deps: installed:$$missing"; \
	else echo "deps: run as root: apt-get install$$missing"; exit 1; fi

test: deps
	$(MAKE) --no-print-directory all
	@BIN=$(BIN) BUILD=$(BUILD) PYTHON=$(PYTHON) SAN="$(SAN)" KV_OMP=$(OMP) sh tests/run.sh

# The README's main job: the default sweep on a shipped trace of the 4-layer reference model
# (1024 tokens of held-out text; the last 256 tokens evaluated), then the report.
# DEMO_TRACE=traces/sample.h5 runs it on the older 256-token sample (its default split).
DEMO_OUT ?= demo-out
DEMO_TRACE ?= traces/ref4_text.h5
DEMO_SWEEP ?= sweeps/default.sweep
DEMO_RUN_OPTS ?= $(if $(filter traces/ref4_text.h5 traces/ref8_text.h5,$(DEMO_TRACE)),--decode 256)
demo: deps
	@$(MAKE) --no-print-directory all
	@if [ -d $(DEMO_OUT) ]; then rm -rf $(DEMO_OUT).prev && mv $(DEMO_OUT) $(DEMO_OUT).prev && \
	  echo "demo: previous output kept as $(DEMO_OUT).prev"; fi
	@mkdir -p $(DEMO_OUT)
	$(BIN)/kvreplay check $(DEMO_TRACE) > $(DEMO_OUT)/check.txt
	$(BIN)/kvreplay run $(DEMO_TRACE) --sweep $(DEMO_SWEEP) -o $(DEMO_OUT)/results $(DEMO_RUN_OPTS)
	$(BIN)/kvreport $(DEMO_OUT)/results --trace $(DEMO_TRACE) -o $(DEMO_OUT)/report
	@echo "demo: report written to $(DEMO_OUT)/report/report.md (figures in $(DEMO_OUT)/report/figures/)"

# make models: the reference models (capture/models/train_models.sh: 4 and 8 layers, one
# recipe, resumable; hours on two cores), installed as capture/models/ref<L>.pt with their
# training logs and structure reports. MODELS_LAYERS chooses; MODELS_WORK, MODELS_THREADS.
MODELS_LAYERS ?= 4 8
models: deps
	PYTHON=$(PYTHON) sh capture/models/train_models.sh $(MODELS_LAYERS)

# make samples: every shipped trace, captured single-threaded (capture/make_samples.py;
# SOURCE_DATE_EPOCH pins `created`, then a re-run writes the same bytes on one machine):
# traces/sample.h5 and sample_qa.h5 from capture/ref_model.pt, then for each reference model
# SAMPLES_MODELS present as $(SAMPLES_MODEL_DIR)/<name>.pt (a missing one is skipped, with one
# line) <name>_text.h5 (held-out text, SAMPLES_TEXT_SEQS x SAMPLES_TEXT_TOKENS) and
# <name>_needles.h5 (make_needles.py: one sequence per length x depth), each followed by one
# shorter sequence that calibrating strategies take (kvreplay run --calib). SAMPLES_LARGE=1 also
# writes larger sets, for the needle heat map, into $(SAMPLES_LARGE_OUT)/ (not committed).
# SAMPLES_BASE=0 leaves sample*.h5 alone; SAMPLES_OPTS is passed to every make_samples.py run.
SAMPLES_OUT       ?= traces
SAMPLES_MODEL_DIR ?= capture/models
SAMPLES_MODELS    ?= ref4 ref8
SAMPLES_BASE      ?= 1
SAMPLES_TEXT_SEQS ?= 1
SAMPLES_TEXT_TOKENS ?= 1024
SAMPLES_NEEDLE_LENGTHS ?= 256,1024
SAMPLES_NEEDLE_DEPTHS  ?= 0.1,0.9
# the last, shorter sequence of each trace, which calibrating strategies take (0: none; empty:
# make_samples.py's default, 256 tokens of text, a needle of the shortest length)
SAMPLES_TEXT_CALIB ?=
SAMPLES_NEEDLE_CALIB ?=
SAMPLES_LARGE     ?= 0
SAMPLES_LARGE_OUT ?= samples-large
SAMPLES_LARGE_TEXT_SEQS ?= 8
SAMPLES_LARGE_LENGTHS ?= 256,512,768,1024
SAMPLES_LARGE_DEPTHS  ?= 0,0.1,0.3,0.5,0.7,0.9,1
SAMPLES_OPTS      ?=
samples: deps
	@if [ "$(SAMPLES_BASE)" = 1 ]; then set -x; \
	  $(PYTHON) capture/make_samples.py --out $(SAMPLES_OUT) $(SAMPLES_OPTS); fi
	@set -e; mkdir -p $(SAMPLES_OUT); \
	if [ "$(SAMPLES_LARGE)" = 1 ]; then mkdir -p $(SAMPLES_LARGE_OUT); fi; \
	for m in $(SAMPLES_MODELS); do \
	  ck=$(SAMPLES_MODEL_DIR)/$$m.pt; \
	  if [ ! -f "$$ck" ]; then echo "samples: $$ck not present: $${m}_text.h5 and $${m}_needles.h5 skipped"; continue; fi; \
	  t0=$$(date +%s); \
	  $(PYTHON) capture/make_samples.py --model $$ck --kind plain --tokens $(SAMPLES_TEXT_TOKENS) \
	    --sequences $(SAMPLES_TEXT_SEQS) $(if $(SAMPLES_TEXT_CALIB),--calib-length $(SAMPLES_TEXT_CALIB)) \
	    -o $(SAMPLES_OUT)/$${m}_text.h5 $(SAMPLES_OPTS); \
	  $(PYTHON) capture/make_samples.py --model $$ck --kind needles --lengths $(SAMPLES_NEEDLE_LENGTHS) \
	    --depths $(SAMPLES_NEEDLE_DEPTHS) $(if $(SAMPLES_NEEDLE_CALIB),--calib-length $(SAMPLES_NEEDLE_CALIB)) \
	    -o $(SAMPLES_OUT)/$${m}_needles.h5 $(SAMPLES_OPTS); \
	  if [ "$(SAMPLES_LARGE)" = 1 ]; then \
	    $(PYTHON) capture/make_samples.py --model $$ck --kind plain --tokens $(SAMPLES_TEXT_TOKENS) \
	      --sequences $(SAMPLES_LARGE_TEXT_SEQS) -o $(SAMPLES_LARGE_OUT)/$${m}_text.h5 $(SAMPLES_OPTS); \
	    $(PYTHON) capture/make_samples.py --model $$ck --kind needles --lengths $(SAMPLES_LARGE_LENGTHS) \
	      --depths $(SAMPLES_LARGE_DEPTHS) -o $(SAMPLES_LARGE_OUT)/$${m}_needles.h5 $(SAMPLES_OPTS); \
	  fi; \
	  echo "samples: $$m took $$(( $$(date +%s) - t0 )) s"; \
	done

# Ground truth (docs/METHODS.md §12): the truth sweep replayed with per-layer read-outs and exported,
# the sample model re-run with every exported cache state, proxy vs truth in the report.
# Your own model: make truth TRUTH_TRACE=traces/x.h5 TRUTH_MODEL=<as kvcapture --model>
#   TRUTH_RUN_OPTS="--decode 256" (options of kvreplay run) TRUTH_VAL_OPTS="--device cuda".
TRUTH_OUT   ?= truth-out
TRUTH_SWEEP ?= sweeps/truth.sweep
TRUTH_MODEL ?= ref:capture/ref_model.pt
TRUTH_TRACE ?= traces/sample.h5
TRUTH_RUN_OPTS ?=
TRUTH_VAL_OPTS ?=
truth: deps
	@$(MAKE) --no-print-directory all
	@rm -rf $(TRUTH_OUT) && mkdir -p $(TRUTH_OUT) && date +%s > $(TRUTH_OUT)/.start
	$(BIN)/kvreplay run $(TRUTH_TRACE) --sweep $(TRUTH_SWEEP) --per-layer-readout -o $(TRUTH_OUT)/results \
	  --export $(TRUTH_OUT)/export.h5 $(TRUTH_RUN_OPTS)
	$(PYTHON) capture/kvcapture.py validate --model $(TRUTH_MODEL) --trace $(TRUTH_TRACE) \
	  --export $(TRUTH_OUT)/export.h5 -o $(TRUTH_OUT)/truth.h5 $(TRUTH_VAL_OPTS)
	$(BIN)/kvreport $(TRUTH_OUT)/results --truth $(TRUTH_OUT)/truth.h5 -o $(TRUTH_OUT)/report
	@echo "truth: proxy vs truth in $(TRUTH_OUT)/report/report.md (tables/truth.csv);" \
	  "replay, re-run and report took $$(( $$(date +%s) - $$(cat $(TRUTH_OUT)/.start) )) s"
	@rm -f $(TRUTH_OUT)/.start

# make bench: benchmark programs from bench/*.c (each its own main) into $(BIN)/bench/,
# then bench/run.sh (tables on stdout, CSV in bench/out/). Never part of make test.
BENCH_SRC   := $(wildcard bench/*.c)
BENCH_PROGS := $(patsubst bench/%.c,$(BIN)/bench/%,$(BENCH_SRC))
$(BIN)/bench/%: bench/%.c $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(INC_ALL) $(LDFLAGS) -o $@ $< $(ALL_LIBS) $(LDLIBS)
bench: probe $(PROGS) $(BENCH_PROGS)
	BIN=$(abspath $(BIN)) PYTHON=$(PYTHON) sh bench/run.sh

# make fuzz: every fuzz/fuzz_<name>.c built with clang-14 and -fsanitize=fuzzer,address,
# undefined (objects and programs under $(FUZZ_O); libhdf5, zlib and GSL are not
# instrumented), then run for FUZZ_RUNS executions on fuzz/corpus/<name> (seeded by
# fuzz/seeds_<name>.py when it exists, plus the regression inputs fuzz/regress/<name>/),
# in libFuzzer's fork mode (FUZZ_JOBS workers) so that a crash does not end the run; then fuzz/triage.sh
# replays each artifact (fuzz/artifacts/<name>/) and fails on any that is a finding.
# Log: fuzz/artifacts/<name>/log.txt. Never part of make test (tests/sh/test_fuzz_regress.sh
# replays fuzz/regress/ there).
FUZZ_CC    ?= clang-14
FUZZ_O     ?= fuzz-build/
FUZZ_RUNS  ?= 1000000
FUZZ_JOBS  ?= 1
FUZZ_OPTS  ?= -timeout=5 -rss_limit_mb=4096 -malloc_limit_mb=100000000
# FUZZ_LIBS_<name>: the libraries a harness links (default all three; replay/attn.c does
# not build with clang, so a harness that needs libkvreplay needs that fixed first).
FUZZ_LIBS_trace := $(LIBKV)
# Harnesses built by this Makefile with clang (those whose libraries clang builds); the
# others (sweep, results: they need replay/ code without replay/attn.c) by fuzz/build.sh.
FUZZ_MK    := trace
fuzz-bins: $(patsubst %,$(BIN)/fuzz/fuzz_%,$(FUZZ_MK))
.SECONDEXPANSION:
$(BIN)/fuzz/fuzz_%: $(BUILD)/fuzz/fuzz_%.o $$(or $$(FUZZ_LIBS_$$*),$$(ALL_LIBS))
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -fsanitize=fuzzer -o $@ $< $(or $(FUZZ_LIBS_$*),$(ALL_LIBS)) $(LDLIBS)
fuzz:
	$(MAKE) --no-print-directory CC=$(FUZZ_CC) O=$(FUZZ_O) SAN=address,undefined OMP=0 \
	  EXTRA_CFLAGS=-fsanitize=fuzzer-no-link fuzz-bins
	FUZZ_CC=$(FUZZ_CC) sh fuzz/build.sh $(FUZZ_O)bin/fuzz
	@set -e; for n in $(FUZZ_NAMES); do \
	  mkdir -p fuzz/corpus/$$n fuzz/artifacts/$$n fuzz/regress/$$n; \
	  if [ -f fuzz/seeds_$$n.py ]; then $(PYTHON) fuzz/seeds_$$n.py fuzz/corpus/$$n; fi; \
	  echo "fuzz: $$n, $(FUZZ_RUNS) runs (log: fuzz/artifacts/$$n/log.txt)"; \
	  nice -n 10 $(FUZZ_O)bin/fuzz/fuzz_$$n -fork=$(FUZZ_JOBS) -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
	    -runs=$(FUZZ_RUNS) $(FUZZ_OPTS) -artifact_prefix=fuzz/artifacts/$$n/ \
	    fuzz/corpus/$$n fuzz/regress/$$n > fuzz/artifacts/$$n/log.txt 2>&1 || true; \
	  grep -E '^#[0-9]+:' fuzz/artifacts/$$n/log.txt | tail -n 1; \
	  sh fuzz/triage.sh $(FUZZ_O)bin/fuzz/fuzz_$$n fuzz/artifacts/$$n $(FUZZ_OPTS); \
	done

clean:
	rm -rf build build-san bin out report demo-out demo-out.prev fuzz-build samples-large

# make install PREFIX=/usr/local (DESTDIR= for staging): the programs and libkvtrace; under
# PREFIX/share/kvtrace the gnuplot templates (kvreport finds them beside its bin/), the sweeps
# (kvreplay run --sweep sweeps/default.sweep finds them from any directory) and the capture
# modules with the reference model; PREFIX/bin/kvcapture runs capture/kvcapture.py with
# $(PYTHON); the docs under PREFIX/share/doc/kvtrace in the repository's layout (links work).
PREFIX  ?= /usr/local
DATADIR := $(DESTDIR)$(PREFIX)/share/kvtrace
DOCDIR  := $(DESTDIR)$(PREFIX)/share/doc/kvtrace
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include
	install -m 755 $(PROGS) $(MPI_PROGS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(LIBKV) $(DESTDIR)$(PREFIX)/lib/
	install -m 644 lib/kvtrace.h $(DESTDIR)$(PREFIX)/include/
	install -d $(DATADIR)/plots $(DATADIR)/sweeps $(DATADIR)/capture
	install -m 644 plots/*.gp $(DATADIR)/plots/
	install -m 644 sweeps/*.sweep sweeps/*.ratios sweeps/README.md $(DATADIR)/sweeps/
	install -m 644 capture/*.py capture/ref_model.pt $(DATADIR)/capture/
	sed 's|@PYTHON@|$(PYTHON)|' capture/kvcapture.in > $(DESTDIR)$(PREFIX)/bin/kvcapture.tmp
	chmod 755 $(DESTDIR)$(PREFIX)/bin/kvcapture.tmp && mv $(DESTDIR)$(PREFIX)/bin/kvcapture.tmp $(DESTDIR)$(PREFIX)/bin/kvcapture
	install -d $(DOCDIR)/docs $(DOCDIR)/replay $(DOCDIR)/traces $(DOCDIR)/sweeps
	install -m 644 README.md CHANGELOG.md $(DOCDIR)/
	install -m 644 docs/*.md $(DOCDIR)/docs/
	install -m 644 replay/RESULTS.md $(DOCDIR)/replay/
	install -m 644 traces/SCHEMA.md traces/EXPORT.md $(DOCDIR)/traces/
	install -m 644 sweeps/README.md $(DOCDIR)/sweeps/
	@echo "install: programs in $(DESTDIR)$(PREFIX)/bin, data in $(DATADIR), docs in $(DOCDIR)"
