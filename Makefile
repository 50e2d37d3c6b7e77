# Benchmarks (see docs/benchmarks.md). Each target runs one benchmark and rewrites its block of
# docs/benchmarks.md; `make bench` runs all of them but the main command (20-30 min: `make bench-main`).
# BENCH_ARGS is passed on, e.g. `make bench BENCH_ARGS=--quick` or `BENCH_ARGS="--home .mlops"`;
# BENCH_NOTE is written under each block (e.g. what else ran on the machine).
PYTHON ?= .venv/bin/python
BENCH = $(PYTHON) -m bench
BENCH_ARGS ?=

.PHONY: findings bench bench-serving bench-processes bench-overhead bench-onnx bench-heavy bench-tracking bench-pruning bench-workers bench-pipeline bench-main

bench:
	$(BENCH) all $(BENCH_ARGS)

bench-serving:
	$(BENCH) serving $(BENCH_ARGS)

bench-processes:  # needs Redis (MLOPS_REDIS_URL, default redis://127.0.0.1:6379/0) for the shared rate limits
	$(BENCH) processes $(BENCH_ARGS)

bench-overhead:
	$(BENCH) overhead $(BENCH_ARGS)

bench-onnx:
	$(BENCH) onnx $(BENCH_ARGS)

bench-heavy:  # needs a store with the champions and its data: BENCH_ARGS="--home .mlops" after ./run.sh
	$(BENCH) heavy $(BENCH_ARGS)

bench-tracking:
	$(BENCH) tracking $(BENCH_ARGS)

bench-pruning:
	$(BENCH) pruning $(BENCH_ARGS)

bench-workers:
	$(BENCH) workers $(BENCH_ARGS)

bench-pipeline:
	$(BENCH) pipeline $(BENCH_ARGS)

bench-main:
	$(BENCH) main $(BENCH_ARGS)

# Each study's claim judged on its arms retrained over 5 seeds (after the main job: it reads best_params.json and
# the prepared data): writes reports/findings.md and the README's study table. About an hour on 2 cores.
FINDINGS_ARGS ?= --workers 2
findings:
	$(PYTHON) -m mlops.cli findings $(FINDINGS_ARGS)
