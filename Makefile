# kb: two commands for a new user.  `make run` starts the app; `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# llama.cpp's AMX kernels crash on the first decode on some Sapphire Rapids machines (ggml-org/llama.cpp#20824):
# on x86-64 the native build keeps AVX-512 but leaves AMX out.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS := $(if $(filter x86_64,$(shell uname -m)),-DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)',)

.PHONY: install run test lint bench system-deps clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# The CPU build of torch first, so no later requirement pulls several GB of CUDA wheels.
	$(BIN)/pip install torch==2.13.0
	@echo ">>> llama-cpp-python builds from source the first time: about 11 minutes on 2 cores (cached afterwards)."
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/kb serve

# Debian's Chromium drives the browser tests (Playwright cannot download its own browser offline);
# tesseract with its Chinese (simplified, traditional) data reads scanned PDFs and pictures at ingest.
system-deps:
	@command -v chromium >/dev/null 2>&1 && fc-list :lang=zh | grep -q . && tesseract --list-langs 2>/dev/null | grep -q chi_tra || (apt-get update -qq && apt-get install -y -qq chromium fonts-noto-cjk tesseract-ocr tesseract-ocr-chi-sim tesseract-ocr-chi-tra)

test: install system-deps
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python bench/model.py
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/memory.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
