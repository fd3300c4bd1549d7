# `make run`  : compute every run, trajectory, claim check and leaderboard score as a job graph
#               (`ntkbench run`, into the caches), then judge the claims (`pytest hypotheses/`,
#               replaying the stored checks), write the leaderboard and the report
#               (results/records.jsonl, claims.md, leaderboard.{csv,md}, report.html; W&B offline),
#               then regenerate the results tables in README.md and docs/ (`ntkbench report`)
#               `make run TIER=quick`: every claim on one seed and smoke-sized presets, in minutes;
#               it shows that the code runs and never gives a verdict (results/quick/)
#               `make run TIER=large`: the p = 113 claims alone (a GPU, or runs copied from one)
#               `make run EXECUTOR=slurm`: the graph as SLURM job arrays; `JOBS=N`: local workers
# `make test` : the test suite (unit tests, controls, small end-to-end runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TIER ?= default
EXECUTOR ?= local
JOBS ?=
GRAPH = $(BIN)/ntkbench run --tier $(TIER) --executor $(EXECUTOR) $(if $(JOBS),--jobs $(JOBS))

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
ifeq ($(TIER),default)
	$(GRAPH); graph=$$?; \
	$(BIN)/python -m pytest hypotheses/ -m "not large" -p no:cacheprovider -rA; \
	claims=$$?; $(BIN)/ntkbench leaderboard; board=$$?; \
	$(BIN)/ntkbench report; tables=$$?; \
	worst=$$(( claims > board ? claims : board )); worst=$$(( worst > tables ? worst : tables )); \
	exit $$(( worst > graph ? worst : graph ))
else ifeq ($(TIER),quick)
	$(GRAPH); graph=$$?; \
	NTKBENCH_TIER=quick $(BIN)/python -m pytest hypotheses/ -m "not large" -p no:cacheprovider -q; \
	claims=$$?; exit $$(( claims > graph ? claims : graph ))
else ifeq ($(TIER),large)
	$(GRAPH); graph=$$?; \
	$(BIN)/python -m pytest hypotheses/ -m large -p no:cacheprovider -rA; \
	claims=$$?; $(BIN)/ntkbench report; tables=$$?; \
	worst=$$(( claims > tables ? claims : tables )); exit $$(( worst > graph ? worst : graph ))
else
	@echo "TIER must be one of: quick, default, large (got TIER=$(TIER))"; exit 2
endif

test: $(STAMP)
	$(BIN)/python -m pytest tests/ -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_entk.py
	$(BIN)/python benchmarks/bench_tms_eigs.py
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_lm_sampling.py

clean:
	rm -rf $(VENV) results .pytest_cache
