# mms — top-level build. `make` builds the engine library, the mms-run CLI and
# the unit tests; `make test` runs every test; `make demo` runs the demo.
# The engine is plain C11 (no PostgreSQL headers); OpenBLAS does the GEMMs.

CC       ?= gcc
OPT      ?= -O3
CFLAGS   ?= $(OPT) -g
CFLAGS   += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -fPIC -Isrc/engine
LDLIBS_BLAS = -lopenblas
LDLIBS   = -lm -lpthread
BUILD    ?= build

# Engine, split by what it needs: CORE has no BLAS (the registry links it
# into the preloaded library), MATH uses OpenBLAS (inference workers only).
ENGINE_CORE = mms_error gguf quant tokenizer t5_meta
ENGINE_MATH = ops t5 generate
ENGINE_OBJS = $(patsubst %,$(BUILD)/engine/%.o,$(ENGINE_CORE) $(ENGINE_MATH))
ENGINE_HDRS = $(wildcard src/engine/*.h)

TEST_SRCS = $(wildcard test/test_*.c)
TEST_BINS = $(patsubst test/%.c,$(BUILD)/test/%,$(TEST_SRCS))

.PHONY: all test unit-test asan-test valgrind-test deps clean fuzz demo bench

all: $(BUILD)/libmmsengine.a $(BUILD)/mms-run $(TEST_BINS)

$(BUILD)/engine/%.o: src/engine/%.c $(ENGINE_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/libmmsengine.a: $(ENGINE_OBJS)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/mms-run: src/engine/mms_run.c $(BUILD)/libmmsengine.a
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libmmsengine.a $(LDLIBS_BLAS) $(LDLIBS)

$(BUILD)/test/%: test/%.c test/test_util.h test/golden.h $(BUILD)/libmmsengine.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itest -o $@ $< $(BUILD)/libmmsengine.a -lcmocka $(LDLIBS_BLAS) $(LDLIBS)

# --- tests -----------------------------------------------------------------

deps:
	@tools/install-deps.sh

# Every test: unit tests, then the same under ASan+UBSan.
test: deps
	$(MAKE) unit-test
	$(MAKE) asan-test

unit-test: all
	@tools/run-tests.sh $(BUILD)

asan-test:
	$(MAKE) BUILD=build-asan OPT="-O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
		LDLIBS="-lm -lpthread -fsanitize=address,undefined" all
	@ASAN_OPTIONS=detect_leaks=1 tools/run-tests.sh build-asan

valgrind-test: all
	@VALGRIND=1 tools/run-tests.sh $(BUILD)

# --- fuzzing (clang libFuzzer + ASan/UBSan) ----------------------------------

FUZZ_FLAGS = -g -O1 -std=c11 -D_GNU_SOURCE -Isrc/engine -fsanitize=fuzzer,address,undefined
FUZZ_SRCS  = $(wildcard test/fuzz/fuzz_*.c)
FUZZ_BINS  = $(patsubst test/fuzz/%.c,build-fuzz/%,$(FUZZ_SRCS))
FUZZ_CORE  = $(patsubst %,src/engine/%.c,$(ENGINE_CORE))

build-fuzz/%: test/fuzz/%.c $(FUZZ_CORE) $(ENGINE_HDRS)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) -o $@ $< $(FUZZ_CORE) -lm

fuzz: $(FUZZ_BINS)

# --- demo and benchmarks (scripts own the details) --------------------------

demo: deps all
	@tools/demo.sh

bench: deps all
	@bench/run.sh

clean:
	rm -rf build build-asan build-fuzz
