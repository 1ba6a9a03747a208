# Two entry points for a fresh machine (Python 3.11):
#   make demo   set everything up, then certify Fashion-MNIST test images with the shipped smoothed CNN
#   make test   set everything up, then run the default test suite
#   make test-slow-quick   the quick study end to end and the Ray determinism/fault-tolerance tests (CI runs it)
# Re-running either on a prepared machine skips the install (stamp file in .venv).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.certify-installed
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
PYTEST_ARGS ?=

.PHONY: demo test test-slow-quick lint install data study zoo clean-venv

demo: install data
	$(VENV)/bin/certify demo --out runs/demo

test: install data
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the quick study end to end (the slow-marked quick test), as CI runs it after make test; one thread for every
# pool, so the run is reproducible and a busy machine cannot oversubscribe it
test-slow-quick: install data
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slow tests/test_study.py -k quick $(PYTEST_ARGS)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slow tests/test_distributed.py $(PYTEST_ARGS)

# ruff (pyproject.toml: pyflakes, pycodestyle, isort, bugbear subset, complexity <= 15, no print in library code)
# and mypy on the two independent packages
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy estimators semantic_layers

study: install data
	$(VENV)/bin/certify study --out runs/study

# Re-make the shipped checkpoints in certify/zoo (about 6 minutes on 2 cores; one thread = reproducible).
ZOO_TRAIN := OMP_NUM_THREADS=1 $(VENV)/bin/certify -q train --seed 0
zoo: install data
	$(ZOO_TRAIN) --arch digits_mlp --data digits --epochs 40 --out certify/zoo/digits_mlp.pt
	$(ZOO_TRAIN) --arch fmnist_cnn --data fashion-mnist --epochs 4 --out certify/zoo/fmnist_cnn.pt
	$(ZOO_TRAIN) --arch fmnist_cnn --data fashion-mnist --epochs 4 --sigma 0.25 --out certify/zoo/fmnist_cnn_sigma0.25.pt
	$(ZOO_TRAIN) --arch fmnist_cnn --data fashion-mnist --epochs 4 --sigma 0.50 --out certify/zoo/fmnist_cnn_sigma0.50.pt
	$(ZOO_TRAIN) --arch color_cnn --data color-fmnist --epochs 4 --out certify/zoo/color_cnn.pt

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q --upgrade pip setuptools wheel
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test,lint,ray]'
	# auto_LiRPA 0.3's metadata pins torch<1.13; its runtime deps are in install_requires above.
	$(PY) -m pip install --disable-pip-version-check -q --no-deps auto-LiRPA==0.3
	$(PY) -c "import certify, semantic_layers, estimators; from certify.lirpa import _lirpa; _lirpa()"
	@touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (offline IDX files).
data:
	@if [ -n "$$CERTIFY_DATA_DIR" ] || [ -f $(FMNIST) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
	  echo "Fashion-MNIST not found at $(FMNIST): run 'sudo apt-get install dataset-fashion-mnist'" \
	       "or set CERTIFY_DATA_DIR to a folder with the *-ubyte.gz files (tests that need it are skipped)"; \
	fi

clean-venv:
	rm -rf $(VENV)
