# A fresh machine needs only Python >= 3.11 and make: everything else installs from the package index.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test demo clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python >= 3.11 is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,local]'
	@touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/pytest -q

# Starts the stack (embedded services where the configured ones do not answer), migrates, seeds,
# runs the main job, prints its report, stops the stack whatever happened.
demo: install
	$(BIN)/worktask stack up
	@rc=0; \
	( set -e; \
	  $(BIN)/worktask migrate; \
	  $(BIN)/worktask migrate status; \
	  $(BIN)/worktask seed --skip-existing; \
	  $(BIN)/worktask health ) || rc=$$?; \
	$(BIN)/worktask stack down; \
	exit $$rc

clean:
	rm -rf $(VENV) .worktask
