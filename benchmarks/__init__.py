"""The rlpruner benchmark suite: `python benchmarks/run_all.py --quick | --full`.

Every part writes a JSON results file; `benchmarks.render` turns those files (and only those) into the
tables, plots and docs/benchmarks.md.
"""
