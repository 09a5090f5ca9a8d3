# Two front-door targets (see README):
#   make all    install into .venv, then run the whole default pipeline to its tables/figures
#   make test   install into .venv, then run the test suite
#   make test-fast   the suite without the slow end-to-end tests (a quick local loop; CI runs all)
#   make report      Snakemake's HTML report of a finished run: results/report.html
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ldpm-installed
TEST_STAMP := $(VENV)/.ldpm-test-installed
# every package's version, resolved from pyproject.toml (`make lock` regenerates it)
LOCK := requirements.lock

.PHONY: all test test-fast install lock report clean-results

all: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" snakemake --profile workflow/profiles/local all

test: $(TEST_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

test-fast: $(TEST_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow"

install: $(STAMP)

report: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" snakemake --profile workflow/profiles/local --report results/report.html all

# The runtime (what `make all` and cluster jobs use): this package with the workflow tools, every
# version from the lock; `pip check` is clean. torch and torchvision are pinned in pyproject.toml
# (the only pair that imports together here). --no-compile: no bytecode for the thousands of
# modules never imported (torch's above all); Python writes it for those a job imports, once.
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -c $(LOCK) -e ".[workflow]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

# The tests add pytest and fastMRI's reference code (its E2E-VarNet and metrics, without its
# training stack: Lightning etc.), which the runtime does not install.
$(TEST_STAMP): $(STAMP)
	$(PIP_INSTALL) -c $(LOCK) -e ".[workflow,test]"
	$(PIP_INSTALL) --no-deps fastmri==0.3.0
	touch $@

lock: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip compile pyproject.toml --extra workflow --extra test --universal --quiet \
	  $(if $(wildcard /opt/wheels),--find-links /opt/wheels) --python $(BIN)/python -o $(LOCK)

clean-results:
	rm -rf results .snakemake
