# Every target that runs code depends on `install`, so each one alone sets up a bare machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install tools test lint bench bench-quick report regress microbench soak speed clean

install: $(STAMP) tools

# The tests drive every model with `nc -N`, as a person would try one, and measure
# socat as a server of any language; the harness counts system calls with perf.  As
# root, a bare Debian machine gets what is missing of netcat-openbsd, socat and
# linux-perf in one apt-get call; otherwise the tests that need them are skipped, and
# the syscalls scenario records why it counted nothing.
tools:
	@missing=""; \
	command -v nc >/dev/null || missing="$$missing netcat-openbsd"; \
	command -v socat >/dev/null || missing="$$missing socat"; \
	command -v perf >/dev/null || missing="$$missing linux-perf"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "make: only root may install$$missing: tests/test_netcat.py," \
			"tests/test_custom_server.py's socat case and syscall counting skip"; \
	fi

# Re-install only when the dependency list changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,uvloop,uring,cluster]'
	touch $@

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest

# The code is wrapped by hand to 100 columns; ruff's formatter would spread
# call arguments one per line and push a dozen modules far past 300 lines.
lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/muxbench bench --suite default
	$(BIN)/muxbench report

bench-quick: install
	$(BIN)/muxbench bench --suite quick
	$(BIN)/muxbench report

report: install
	$(BIN)/muxbench report

# Regression gate: the working tree against the git revision BASE, both measured here,
# their runs interleaved (docs/gate.md).  HEAD judges uncommitted edits, and on a fresh
# clone unchanged code; CI passes BASE=<the PR's base sha>.  REGRESS_ARGS adds options,
# e.g. REGRESS_ARGS='--junit results/regress/junit.xml'.
BASE ?= HEAD
regress: install
	$(BIN)/muxbench regress --base $(BASE) $(REGRESS_ARGS)

# Hot-path micro-benchmarks for real (in `make test` they only run once, as smoke).
microbench: install
	mkdir -p results
	$(BIN)/pytest tests/test_microbench.py --benchmark-enable --benchmark-json=results/microbench.json

# Long fuzz and soak cases, kept out of `make test`.
soak: install
	$(BIN)/pytest -m slow

# Speed targets measured as ratios against minimal C programs (needs gcc).
# Both always run: a missed server target must not hide the generator's figure.
speed: install
	status=0; \
	$(BIN)/python benchmarks/server_cpu.py || status=$$?; \
	$(BIN)/python benchmarks/loadgen_rate.py || status=$$?; \
	exit $$status

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .benchmarks
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
