# `make run`  : evaluate every claim in hypotheses/, then the leaderboard and the report
#               (results/records.jsonl, claims.md, leaderboard.{csv,md}, report.html; W&B offline),
#               then regenerate the results tables in README.md and docs/ (`ntkbench report`)
#               `make run TIER=large`: the p = 113 claims alone (a GPU, or runs copied from one)
# `make test` : the test suite (unit tests, controls, small end-to-end runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TIER ?= default

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
ifeq ($(TIER),default)
	$(BIN)/python -m pytest hypotheses/ -m "not large" -n 2 --dist loadgroup -p no:cacheprovider -rA; \
	claims=$$?; $(BIN)/ntkbench leaderboard; board=$$?; \
	$(BIN)/ntkbench report; tables=$$?; \
	worst=$$(( claims > board ? claims : board )); exit $$(( worst > tables ? worst : tables ))
else ifeq ($(TIER),large)
	$(BIN)/python -m pytest hypotheses/ -m large -p no:cacheprovider -rA; \
	claims=$$?; $(BIN)/ntkbench report; tables=$$?; exit $$(( claims > tables ? claims : tables ))
else
	@echo "TIER must be one of: default, large (got TIER=$(TIER))"; exit 2
endif

test: $(STAMP)
	$(BIN)/python -m pytest tests/ -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_entk.py
	$(BIN)/python benchmarks/bench_tms_eigs.py
	$(BIN)/python benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) results .pytest_cache
