"""``python -m bench NAME [NAME ...]``: run benchmarks, print their tables, rewrite their docs/benchmarks.md blocks."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

BENCHMARKS = {
    "serving": "1. our service vs `mlflow models serve`: req/s, p50, p99 at 1, 8, 32 clients (fume_hood, fracture)",
    "processes": "1b. one serving process vs two (`mlops serve --workers 2`, rate limits in Redis) vs MLflow's",
    "overhead": "2. batch-1 request latency vs the bare forward pass; what batching would gain",
    "onnx": "2c. onnxruntime's forward pass vs torch's for the served image classifiers",
    "heavy": "2d. gas_leak, skeleton, ttubule: a request vs the bare model, and the largest admitted input (--home)",
    "isolation": "2b. fracture's latency alone vs while maximal ttubule stacks keep ttubule's lane full",
    "tracking": "3. the same sweep with MLflow logging on vs off",
    "pruning": "4. the same sampler and budget with and without the pruner",
    "workers": "5. 1 vs 2 local sweep workers: trials per hour",
    "pipeline": "6. `dvc repro` no-op and after one augmentation change, vs the full repro",
    "determinism": "7. generation-synchronous vs free-running sweeps; deterministic vs default final fit",
    "main": "6b. the whole main command (./run.sh) in a fresh clone: 20-30 min, not part of `all`",
}
ALL = (
    "serving",
    "processes",
    "overhead",
    "onnx",
    "isolation",
    "tracking",
    "pruning",
    "workers",
    "pipeline",
    "determinism",
)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks, each a ratio against a baseline measured in the same run; results go to "
        "docs/benchmarks.md.",
        epilog="\n".join(f"  {name:9} {text}" for name, text in BENCHMARKS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="+", metavar="NAME", choices=[*BENCHMARKS, "all"], help="benchmarks, or all")
    parser.add_argument(
        "--home",
        type=Path,
        help="serve the champions of this existing MLflow store (e.g. .mlops/ after ./run.sh) instead of building a "
        "tiny pipeline store (serving, processes, overhead, isolation)",
    )
    parser.add_argument("--quick", action="store_true", help="shorter measurements and budgets (for trying it out)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/OpenMP threads of this process and of both servers (OMP_NUM_THREADS); 0: torch's default. "
        "Default 1: on a shared 2-core machine, 2 intra-op threads made single forward passes erratic (1-200 ms)",
    )
    parser.add_argument("--out", type=Path, help="the Markdown file to update (default docs/benchmarks.md)")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores, datasets and server logs")
    parser.add_argument(
        "--note",
        default=os.environ.get("BENCH_NOTE", ""),
        help="a sentence written under each block's machine line, e.g. what else ran on the machine (env BENCH_NOTE)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    names = list(dict.fromkeys(ALL if "all" in args.names else args.names))

    if args.threads > 0:  # before torch is imported, here and in every process started from here
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import torch

    from bench import report

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    out = args.out or report.DOC
    # Every temporary folder of this run goes under one, removed at the end (the main command's clone stays).
    tempfile.tempdir = tempfile.mkdtemp(prefix="mlops-bench-run-")
    print(f"temporary files under {tempfile.tempdir}", flush=True)
    started = time.perf_counter()
    store = None
    sweep_data = None
    for name in names:
        if name in ("serving", "processes", "overhead"):
            if store is None:
                from bench.fixture import existing_store, tiny_pipeline

                store = existing_store(args.home) if args.home else tiny_pipeline()
            from bench import serving

            section = getattr(serving, f"bench_{name}")(store, args.quick)
        elif name == "heavy":
            from bench.fixture import existing_store
            from bench.heavy import bench_heavy

            if not args.home:
                raise SystemExit("heavy needs --home: a store with the three champions and its data (after ./run.sh)")
            store = store or existing_store(args.home)
            section = bench_heavy(store, args.quick)
        elif name == "onnx":
            from bench.onnx import bench_onnx

            section = bench_onnx(args.quick)
        elif name == "isolation":
            from bench.fixture import existing_store, tiny_pipeline
            from bench.isolation import TASKS as ISOLATION_TASKS
            from bench.isolation import bench_isolation

            # Its own tiny store (fracture and ttubule): the shared one's tasks are the pipeline benchmark's baseline.
            if args.home:
                store = store or existing_store(args.home)
                section = bench_isolation(store, args.quick)
            else:
                section = bench_isolation(tiny_pipeline(tasks=ISOLATION_TASKS), args.quick)
        elif name in ("tracking", "pruning", "workers", "determinism"):
            from bench import sweeps

            if sweep_data is None:
                sweep_data = sweeps.sweep_data(Path(tempfile.mkdtemp(prefix="mlops-bench-sweeps-")), args.quick)
            if name == "determinism":
                from bench.determinism import bench_determinism

                section = bench_determinism(args.quick, sweep_data)
            else:
                section = getattr(sweeps, f"bench_{name}")(args.quick, sweep_data)
        elif name == "pipeline":
            from bench.pipeline import bench_pipeline

            section = bench_pipeline(args.quick, store)
        else:
            from bench.pipeline import bench_main

            section = bench_main()
        if not args.no_write:
            report.write(section, out, args.note)
    print(f"\ndone in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    if not args.keep and "main" not in names:
        shutil.rmtree(tempfile.tempdir, ignore_errors=True)


if __name__ == "__main__":
    main()
