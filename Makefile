# Everything a fresh machine needs: `make demo` (set-up + the main job) and `make test` (set-up + tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
CHECKOV := .venv-checkov/bin/checkov
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test venv tools lint proto bench report clean

venv: $(STAMP)

# torch==2.13.0 is pinned in pyproject's `train` extra: a bare `torch` would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[train,serve,dev]" 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import torch, onnx, onnxruntime, grpc, safetensors; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

# System tools the tests use: promtool (Debian `prometheus`), Fashion-MNIST (Debian `dataset-fashion-mnist`),
# buf (npm `@bufbuild/buf`) and checkov in its own venv (it pins old versions of common packages).
tools: $(STAMP) $(BUF) $(CHECKOV)
	@if ! command -v promtool >/dev/null || [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus dataset-fashion-mnist >/dev/null; \
	  else echo "warning: install Debian packages prometheus and dataset-fashion-mnist (tests needing them will skip)"; fi; \
	fi

$(BUF):
	mkdir -p $(TOOLS)
	npm install --prefix $(TOOLS) --no-audit --no-fund --silent @bufbuild/buf@1.75.0

$(CHECKOV):
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install -q --disable-pip-version-check checkov==3.3.30 2>&1 | grep -v "^WARNING: Location" || true

test: tools
	PATH="$(CURDIR)/$(BIN):$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(BIN)/python -m pytest -q tests

# The whole pipeline on the embedded digits: train (or reuse runs/demo-vae), export (or reuse the version
# exported from the same weights), serve, request samples over gRPC, print a metrics summary, stop.
demo: venv
	$(BIN)/python -m training.demo
	$(BIN)/aegen-export runs/demo-vae --repository model-repository --name digits-vae --fp16 --if-changed --figures demo-out
	$(BIN)/python -m client.demo --repository model-repository --model digits-vae --out demo-out

# The AE-vs-VAE report in docs/report (about 10 minutes on one CPU core; reuses matching checkpoints in runs/report).
report: venv
	OMP_NUM_THREADS=1 $(BIN)/aegen-report --out docs/report --runs runs/report --threads 1

proto: venv
	$(BIN)/python -m protos.generate

# Benchmarks, not tests: tables and PNGs under docs/benchmarks/ (see docs/benchmarks/README.md). ~15 min.
bench: venv
	$(BIN)/python -m bench.run_all $(BENCH_ARGS)

lint: tools
	$(BIN)/ruff check training export server protos tests bench
	cd protos && ../$(BUF) lint

clean:
	rm -rf $(VENV) .venv-checkov $(TOOLS) runs model-repository demo-out
