# Everything a fresh machine needs: `make demo` (set-up + the main job) and `make test` (set-up + tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
CHECKOV := .venv-checkov/bin/checkov
PERF_ANALYZER := $(TOOLS)/bin/perf_analyzer
CUDA_RUNTIME := $(VENV)/.cuda-runtime-stamp
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test venv tools lint proto bench bench-peers fuzz overload report clean

venv: $(STAMP)

# torch==2.13.0 is pinned in pyproject's `train` extra: a bare `torch` would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[train,serve,dev]" 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import torch, onnx, onnxruntime, grpc, safetensors; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

# System tools the tests use: promtool (Debian `prometheus`), Fashion-MNIST (Debian `dataset-fashion-mnist`),
# a headless browser for the latent explorer's tests (Debian `chromium` and `chromium-driver`),
# buf (npm `@bufbuild/buf`), checkov in its own venv (it pins old versions of common packages) and
# perf_analyzer (below) with its one system library, Debian `libb64-0d`.
tools: $(STAMP) $(BUF) $(CHECKOV) $(PERF_ANALYZER) $(CUDA_RUNTIME)
	@if ! command -v promtool >/dev/null || [ ! -d /usr/share/datasets/fashion-mnist ] || ! dpkg -s libb64-0d >/dev/null 2>&1 \
	    || ! dpkg -s chromium >/dev/null 2>&1 || ! dpkg -s chromium-driver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus dataset-fashion-mnist libb64-0d chromium chromium-driver >/dev/null; \
	  else echo "warning: install Debian packages prometheus, dataset-fashion-mnist, libb64-0d, chromium and chromium-driver (tests needing them will skip)"; fi; \
	fi

$(BUF):
	mkdir -p $(TOOLS)
	npm install --prefix $(TOOLS) --no-audit --no-fund --silent @bufbuild/buf@1.75.0

# NVIDIA perf_analyzer, the load tester for Triton and Open Inference Protocol servers. The real binary
# ships only inside the tritonclient 2.50.0 wheel: this takes that one file out of it (the wheel itself is
# never installed: it pins numpy<2 and protobuf<5). It loads libcudart.so.12 even without a GPU, which
# nvidia-cuda-runtime-cu12 provides: installed into .venv here rather than listed in the dev extra,
# since only this binary needs it (tests/plugins/perf_analyzer.py finds it there).
$(PERF_ANALYZER): | $(STAMP)
	mkdir -p $(TOOLS)/pa $(TOOLS)/bin
	$(BIN)/pip download -q --disable-pip-version-check --no-deps -d $(TOOLS)/pa tritonclient==2.50.0 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import glob, zipfile; wheel, = glob.glob('$(TOOLS)/pa/tritonclient-2.50.0-*.whl'); \
	  open('$@.tmp', 'wb').write(zipfile.ZipFile(wheel).read('tritonclient-2.50.0.data/data/bin/perf_analyzer'))"
	chmod 755 $@.tmp && mv $@.tmp $@
	rm -rf $(TOOLS)/pa

$(CUDA_RUNTIME): $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check nvidia-cuda-runtime-cu12==12.9.79 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import nvidia.cuda_runtime, pathlib; assert list(pathlib.Path(nvidia.cuda_runtime.__path__[0]).glob('lib/libcudart.so.12'))"
	touch $@

$(CHECKOV):
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install -q --disable-pip-version-check checkov==3.3.30 2>&1 | grep -v "^WARNING: Location" || true

test: tools
	PATH="$(CURDIR)/$(BIN):$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(BIN)/python -m pytest -q tests

# The whole pipeline on the embedded digits: train (or reuse runs/demo-vae, and the report's 2-D AE and VAE
# of digits 1 and 8), export (or reuse the version exported from the same weights), serve, request samples
# over aegen.v1 and the Open Inference Protocol (gRPC and HTTP), print a metrics summary and the latent
# explorer's address, screenshot it to demo-out/ (where `make tools` installed chromium), stop.
demo: venv
	$(BIN)/python -m training.demo
	$(BIN)/aegen-export runs/demo-vae --repository model-repository --name digits-vae --fp16 --if-changed --figures demo-out
	$(BIN)/aegen-export runs/demo-vae2-1-8 --repository model-repository --name digits18-vae2 --if-changed --quality-samples 0 --exporter torchscript
	$(BIN)/aegen-export runs/demo-ae2-1-8 --repository model-repository --name digits18-ae2 --if-changed --quality-samples 0 --exporter torchscript
	$(BIN)/python -m client.demo --repository model-repository --model digits-vae --out demo-out

# The AE-vs-VAE report in docs/report (about 20 minutes on one quiet CPU core; reuses matching checkpoints in runs/report).
report: venv
	OMP_NUM_THREADS=1 $(BIN)/aegen-report --out docs/report --runs runs/report --threads 1

proto: venv
	$(BIN)/python -m protos.generate

# Benchmarks, not tests: tables and PNGs under docs/benchmarks/ (see docs/benchmarks/README.md). ~15 min.
bench: venv
	$(BIN)/python -m bench.run_all $(BENCH_ARGS)

# aegen against Seldon MLServer 1.7.1 (docs/benchmarks/peers.md and its PNG; ~25 min on 2 cores). MLServer
# gets its own venv: it pins packages (pydantic, protobuf, ...) the project must not downgrade.
MLSERVER_VENV := .venv-mlserver
bench-peers: venv tools
	test -x $(MLSERVER_VENV)/bin/mlserver || ($(PYTHON) -m venv $(MLSERVER_VENV) && \
		$(MLSERVER_VENV)/bin/pip install -q mlserver==1.7.1 onnxruntime==1.32.0)
	$(BIN)/python -m bench.peers $(PEERS_ARGS)

# Robustness (docs/robustness.md): the long fuzz run, 100,000 inputs per protocol against a real server
# (docs/robustness-fuzz.md; ~40 min on 2 cores), and the 60 s overload at 2x and 5x capacity on both protocols
# (docs/robustness-overload.md and its RSS PNG; ~4 min). `make test` runs bounded versions of both.
fuzz: venv
	$(BIN)/python -m bench.fuzz $(FUZZ_ARGS)

overload: venv
	$(BIN)/python -m bench.overload $(OVERLOAD_ARGS)

lint: tools
	$(BIN)/ruff check training export server protos client tests bench
	cd protos && ../$(BUF) lint

clean:
	rm -rf $(VENV) .venv-checkov $(TOOLS) runs model-repository demo-out
