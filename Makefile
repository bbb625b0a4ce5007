# The two commands of the README: `make demo` and `make test`. Both install first (once).
PYTHON ?= python3

.PHONY: install demo test test-slow bench
install: .install-stamp
.install-stamp: pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh
	touch .install-stamp

demo: install
	$(PYTHON) -m rlpruner demo

test: install
	$(PYTHON) -m pytest

test-slow: install
	$(PYTHON) -m pytest -m slow

bench: install
	$(PYTHON) benchmarks/run_all.py --quick
