# A fresh machine needs only Python >= 3.11 and make: everything else installs from the package index.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test demo bench clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python >= 3.11 is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,local]'
	@touch $@

install: $(BIN)/.installed

# The linter first (fail fast, seconds), then the suite.
test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# Starts the stack (embedded services where the configured ones do not answer), runs `worktask init --test-data 200`
# (migrate, seed, test data, validate, backup), checks health, lists and validates the backup, restores it as a dry run
# and one table for real, then stops the stack
# whatever happened. Without BACKUP_ENCRYPTION_KEY the demo makes one and keeps it in the state folder.
STATE ?= $(or $(WORKTASK_STATE_DIR),.worktask)
demo: install
	@mkdir -p $(STATE); [ -s $(STATE)/demo-backup.key ] || $(BIN)/worktask keygen > $(STATE)/demo-backup.key
	@export BACKUP_ENCRYPTION_KEY="$${BACKUP_ENCRYPTION_KEY:-$$(cat $(STATE)/demo-backup.key)}"; \
	$(BIN)/worktask stack up || exit $$?; \
	rc=0; \
	( set -e; \
	  $(BIN)/worktask init --test-data 200; \
	  $(BIN)/worktask migrate status; \
	  $(BIN)/worktask health; \
	  $(BIN)/worktask backup list; \
	  id=$$($(BIN)/worktask backup list --json | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)[0]["backup_id"])'); \
	  $(BIN)/worktask backup validate "$$id"; \
	  $(BIN)/worktask restore "$$id" --dry-run; \
	  $(BIN)/worktask restore "$$id" --tables quality_standards ) || rc=$$?; \
	$(BIN)/worktask stack down; \
	exit $$rc

# Ratios against pg_dump / pg_restore / a plain COPY on the same data (bench/README.md); needs
# `worktask stack up` first. COUNT work tasks (default 100000).
bench: install
	$(BIN)/python bench/run.py $(COUNT)

clean:
	rm -rf $(VENV) .worktask
