#!/bin/sh
# Run every benchmark with its defaults, one after the other (never in parallel: they
# would measure each other). About 12 minutes on a 2-core machine. Run from the repo root:
#     sh benchmarks/run_all.sh            # or: sh benchmarks/run_all.sh --quick
set -e
mkdir -p benchmarks/results
for script in bench_throughput bench_tasks bench_memory bench_overhead; do
    python3 "benchmarks/$script.py" "$@" 2>&1 | tee "benchmarks/results/$script.log"
done
# bench_stages takes no --repeats; pass --quick through only.
case " $* " in
    *" --quick "*) python3 benchmarks/bench_stages.py --quick ;;
    *) python3 benchmarks/bench_stages.py ;;
esac 2>&1 | tee benchmarks/results/bench_stages.log
# bench_pool (logexec.Pool, issue 21) takes --rounds, not --repeats or --quick: run with its defaults.
python3 benchmarks/bench_pool.py --rounds 9 --noop-tasks 1000000 2>&1 | tee benchmarks/results/bench_pool.log
