# mms — top-level build. `make` builds the engine library, the mms-run CLI,
# the unit tests and the PostgreSQL extension (mms.so); `make install`
# installs the extension; `make test` runs every test; `make demo` runs the demo.
# The engine is plain C11 (no PostgreSQL headers); OpenBLAS does the GEMMs.
#
# PGXS is included at the end and owns CFLAGS, CC and the install/installcheck
# targets; the engine therefore keeps its own flags in ENGINE_CFLAGS.

OPT      ?= -O3
ENGINE_CFLAGS ?= $(OPT) -g
ENGINE_CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -fPIC -Isrc/engine
LDLIBS_BLAS = -lopenblas
LDLIBS   = -lm -lpthread
BUILD    ?= build

# Engine, split by what it needs: CORE has no BLAS (the registry links it
# into the preloaded library), MATH uses OpenBLAS (inference workers only).
ENGINE_CORE = mms_error gguf quant tok_vocab tok_normalize tokenizer tok_decode t5_meta gen_options
ENGINE_MATH = pool gemm_small qgemm qgemm_tile ops t5 gen_process generate scheduler
ENGINE_OBJS = $(patsubst %,$(BUILD)/engine/%.o,$(ENGINE_CORE) $(ENGINE_MATH))
ENGINE_HDRS = $(wildcard src/engine/*.h)

TEST_SRCS = $(wildcard test/test_*.c)
TEST_BINS = $(patsubst test/%.c,$(BUILD)/test/%,$(TEST_SRCS))

.PHONY: all engine test unit-test asan-test valgrind-test pg-test deps fuzz fuzz-sql soak demo bench

# First rule, so the default goal; PGXS adds mms.so to it.
all: engine

engine: $(BUILD)/libmmsengine.a $(BUILD)/mms-run $(BUILD)/mms-bench $(TEST_BINS)

$(BUILD)/engine/%.o: src/engine/%.c $(ENGINE_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ENGINE_CFLAGS) -c -o $@ $<

$(BUILD)/libmmsengine.a: $(ENGINE_OBJS)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/mms-run: src/engine/mms_run.c $(BUILD)/libmmsengine.a
	$(CC) $(ENGINE_CFLAGS) -o $@ $< $(BUILD)/libmmsengine.a $(LDLIBS_BLAS) $(LDLIBS)

$(BUILD)/mms-bench: bench/bench_engine.c $(BUILD)/libmmsengine.a
	$(CC) $(ENGINE_CFLAGS) -o $@ $< $(BUILD)/libmmsengine.a $(LDLIBS_BLAS) $(LDLIBS)

$(BUILD)/test/%: test/%.c test/test_util.h test/golden.h $(BUILD)/libmmsengine.a
	@mkdir -p $(dir $@)
	$(CC) $(ENGINE_CFLAGS) -Itest -o $@ $< $(BUILD)/libmmsengine.a -lcmocka $(LDLIBS_BLAS) $(LDLIBS)

# --- the extension (PGXS) ----------------------------------------------------

# mms.so = src/pg + the CORE engine objects, and nothing that links OpenBLAS:
# OpenBLAS starts threads when loaded, and this library may be preloaded into
# the postmaster. Engine objects come from build/ (compiled -O3 -fPIC above).
MODULE_big  = mms
PG_SRCS     = $(filter-out src/pg/worker.c src/pg/worker_%.c,$(wildcard src/pg/*.c))
PG_OBJS     = $(patsubst src/pg/%.c,build/pg/%.o,$(PG_SRCS))
OBJS        = $(PG_OBJS) $(patsubst %,build/engine/%.o,$(ENGINE_CORE))
PG_CPPFLAGS = -Isrc/engine
SHLIB_LINK  = -lm
EXTENSION   = mms
DATA        = sql/mms--0.1.0.sql sql/mms--0.2.0.sql sql/mms--0.1.0--0.2.0.sql \
              sql/mms--0.2.0--0.3.0.sql sql/mms--0.3.0--0.4.0.sql
PGFILEDESC  = "mms - T5 model registry and serving"

# sql/ holds the install and upgrade scripts (mms--*) and the regression tests
# (expected/ the results).
REGRESS      = $(filter-out mms--%,$(basename $(notdir $(wildcard sql/*.sql))))
REGRESS_OUT ?= build/regress
REGRESS_OPTS = --load-extension=mms --outputdir=$(REGRESS_OUT)
EXTRA_CLEAN  = build build-asan build-fuzz mms_worker$(DLSUFFIX)

# PGXS would also build LLVM bitcode for every object (for JIT inlining), and
# has no rule for engine objects outside the source tree; the extension gains
# nothing from inlining, so keep bitcode off.
override with_llvm = no

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

PG_HDRS = $(wildcard src/pg/*.h)

build/pg/%.o: src/pg/%.c $(PG_HDRS) $(ENGINE_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CPPFLAGS) -c -o $@ $<

# mms_worker.so: the inference workers' library = src/pg/worker*.c + the whole
# engine, linked with OpenBLAS. Only worker processes load it (as their
# bgw_library_name); the postmaster never does. The registry functions it calls
# (large-object reads, shared state) resolve against the preloaded mms.so;
# -Bsymbolic keeps its own engine copy bound to itself.
WORKER_OBJS = $(patsubst src/pg/%.c,build/pg/%.o,src/pg/worker.c $(wildcard src/pg/worker_*.c))

mms_worker$(DLSUFFIX): $(WORKER_OBJS) $(ENGINE_OBJS)
	$(CC) $(CFLAGS) $(LDFLAGS) -shared -Wl,-Bsymbolic -o $@ $^ $(LDLIBS_BLAS) -lm

all: mms_worker$(DLSUFFIX)

install: install-worker

install-worker: mms_worker$(DLSUFFIX) installdirs
	$(INSTALL_SHLIB) mms_worker$(DLSUFFIX) '$(DESTDIR)$(pkglibdir)/'

.PHONY: install-worker

# --- the HTTP gateway (src/gateway) --------------------------------------------

# mms-gateway: a libpq client with libmicrohttpd, no PostgreSQL server headers.
# openapi.json is compiled in as a byte array.
GW_DEPS_CFLAGS := $(shell pkg-config --cflags libmicrohttpd) -I$(shell $(PG_CONFIG) --includedir)
GW_LIBS   := $(shell pkg-config --libs libmicrohttpd) -L$(shell $(PG_CONFIG) --libdir) -lpq -lpthread
GW_CFLAGS  = $(OPT) -g -std=c11 -D_GNU_SOURCE -Wall -Wextra $(GW_DEPS_CFLAGS)
GW_SRCS   = $(wildcard src/gateway/*.c)
GW_OBJS   = $(patsubst src/gateway/%.c,$(BUILD)/gateway/%.o,$(GW_SRCS)) $(BUILD)/gateway/openapi_json.o

$(BUILD)/gateway/%.o: src/gateway/%.c src/gateway/gateway.h
	@mkdir -p $(dir $@)
	$(CC) $(GW_CFLAGS) -c -o $@ $<

$(BUILD)/gateway/openapi_json.c: src/gateway/openapi.json
	@mkdir -p $(dir $@)
	{ echo '#include <stddef.h>'; echo 'const unsigned char gw_openapi_json[] = {'; \
	  od -An -v -tx1 $< | sed 's/\([0-9a-f][0-9a-f]\)/0x\1,/g'; echo '0x00};'; \
	  echo 'const size_t gw_openapi_json_len = sizeof(gw_openapi_json) - 1;'; } >$@

$(BUILD)/gateway/openapi_json.o: $(BUILD)/gateway/openapi_json.c
	$(CC) $(GW_CFLAGS) -c -o $@ $<

$(BUILD)/mms-gateway: $(GW_OBJS)
	$(CC) $(GW_CFLAGS) -o $@ $^ $(GW_LIBS)

gateway: $(BUILD)/mms-gateway

all: gateway

install: install-gateway

install-gateway: $(BUILD)/mms-gateway
	$(MKDIR_P) '$(DESTDIR)$(bindir)'
	$(INSTALL_PROGRAM) $(BUILD)/mms-gateway '$(DESTDIR)$(bindir)/'

.PHONY: gateway install-gateway

# --- tests -----------------------------------------------------------------

deps:
	@tools/install-deps.sh

# Every test: unit tests, the same under ASan+UBSan, then the extension in a
# throwaway cluster.
test: deps
	$(MAKE) unit-test
	$(MAKE) asan-test
	$(MAKE) pg-test
	$(MAKE) deb-test

unit-test: engine
	@tools/run-tests.sh $(BUILD)

asan-test:
	$(MAKE) BUILD=build-asan OPT="-O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
		LDLIBS="-lm -lpthread -fsanitize=address,undefined" engine
	@ASAN_OPTIONS=detect_leaks=1 tools/run-tests.sh build-asan

valgrind-test: engine
	@VALGRIND=1 tools/run-tests.sh $(BUILD)

# Installs the extension (as root) and runs test/pg/run.sh: pg_regress and the
# scripted tests against a cluster it starts in a temporary directory.
pg-test: all
	$(MAKE) install
	@test/pg/run.sh

# --- fuzzing (clang libFuzzer + ASan/UBSan) ----------------------------------

FUZZ_FLAGS = -g -O1 -std=c11 -D_GNU_SOURCE -Isrc/engine -fsanitize=fuzzer,address,undefined
FUZZ_SRCS  = $(wildcard test/fuzz/fuzz_*.c)
FUZZ_BINS  = $(patsubst test/fuzz/%.c,build-fuzz/%,$(FUZZ_SRCS))
FUZZ_CORE  = $(patsubst %,src/engine/%.c,$(ENGINE_CORE))

build-fuzz/%: test/fuzz/%.c $(FUZZ_CORE) $(ENGINE_HDRS)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) -o $@ $< $(FUZZ_CORE) -lm

# The gateway's JSON lookup reads every client's body: its own target.
build-fuzz/fuzz_gateway_json: test/fuzz/fuzz_gateway_json.c src/gateway/json.c src/gateway/gateway.h
	@mkdir -p $(dir $@)
	clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -Isrc/gateway \
		$(shell pkg-config --cflags libmicrohttpd) -I$(shell $(PG_CONFIG) --includedir) \
		-o $@ $< src/gateway/json.c

fuzz: $(FUZZ_BINS)

# SQLsmith against a throwaway cluster with models registered and granted
# (FUZZ_SQL_SECONDS, default 1800); a short run is part of `make pg-test`.
FUZZ_SQL_SECONDS ?= 1800
fuzz-sql: deps all
	$(MAKE) install
	@test/sqlsmith/run.sh $(FUZZ_SQL_SECONDS)

# 16 sessions mixing every kind of call, cancels, timeouts, re-registration and
# worker terminations (SOAK_SECONDS, default 600); not part of `make test`.
SOAK_SECONDS ?= 600
soak: deps all
	$(MAKE) install
	@test/soak/run.sh $(SOAK_SECONDS)

# --- demo and benchmarks (scripts own the details) --------------------------

# Compiler lines go to a log; the demo says what it installs where.
demo: deps
	@mkdir -p $(BUILD)
	@echo "== building mms (compiler output in $(BUILD)/demo-build.log)"
	@$(MAKE) -s all >$(BUILD)/demo-build.log 2>&1 || { cat $(BUILD)/demo-build.log; exit 1; }
	@tools/demo.sh

bench: deps all
	@bench/run.sh

# --- Debian package (debian/, test/pkg/) ------------------------------------

# Builds the Debian package (debian/) from a snapshot of the tree, installs it
# (as root) and smoke-tests the installed extension in a throwaway cluster.
deb-test: deps
	@test/pkg/t_deb.sh

.PHONY: deb-test
