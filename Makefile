# The two quick-start commands, `make bench` and `make test`, install what they need first.
PYTHON ?= python3
# torch 2.14.1 as served here is a CUDA 13.0 build: with it the CUDA kernels are compiled even on
# a machine without a GPU (they run where one is present). TORCH=torch==2.13.0 gives a CPU build.
TORCH ?= torch==2.14.1
TEST_DEPS = numpy pytest torchvision==0.29.1
# Only for the benchmark's plot (without it the benchmark runs and says it skipped the plot).
BENCH_DEPS = matplotlib
# The table goes to the terminal; rows and metadata to build/bench.json, the plot next to it.
BENCH_ARGS ?= --json build/bench.json

.PHONY: deps build test bench cmake

deps:
	$(PYTHON) -m pip install -q "$(TORCH)" $(TEST_DEPS)

build: deps
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .

test: build
	$(PYTHON) -m pytest tests -q

bench: build
	$(PYTHON) -m pip install -q $(BENCH_DEPS)
	$(PYTHON) -m fused_norm.benchmark $(BENCH_ARGS)

# The same sources as a LibTorch library (CMakeLists.txt), for C++ users, and its smoke test.
cmake: deps
	cmake -S . -B build/cmake -G Ninja \
	  -DCMAKE_PREFIX_PATH="$$($(PYTHON) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	cmake --build build/cmake -j
	ctest --test-dir build/cmake --output-on-failure
