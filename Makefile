# Two commands do everything on a fresh machine: `make test` and `make demo`.
# Set-up is idempotent: the venv is rebuilt only when its inputs change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_FLAGS := -q --disable-pip-version-check

.PHONY: setup test bench clean

setup: $(STAMP)

$(STAMP): setup.py constraints.txt requirements-test.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -r requirements-test.txt -e '.[training]' 2>&1 \
		| grep -v 'is ignored: it is neither a file nor a directory' || true
	$(PY) -c "import torch, torchvision, nuscenes, yaml"
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -rs tests

bench: setup
	$(PY) bench/lift.py

clean:
	rm -rf $(VENV) .pytest_cache
