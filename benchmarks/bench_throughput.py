"""Records per second, end to end: W workers log N records into a FileHandler in the parent.

Each configuration is timed from pool creation until the output file is complete (every
record handled and the handler closed), and the file is then parsed to count missing,
duplicated and corrupt records. Configurations, run interleaved in every round:

    single   the same records logged by one process straight to the handler (the ceiling)
    floor    a plain ProcessPoolExecutor, logging disabled in the workers (nothing written)
    recipe   the stdlib recipe: multiprocessing.Queue + QueueListener dispatching by name
    mplog    multiprocessing-logging's install_mp_handler() (fork only)
    loguru   loguru with enqueue=True writing the file
    logexec  logexec.LoggingProcessPoolExecutor

Every trial runs in a fresh interpreter (no library's global state carries over). Ratios
are computed within a round, against that round's single writer, then their median taken.

    python3 benchmarks/bench_throughput.py            # the default: 5 rounds, N=20k,200k
    python3 benchmarks/bench_throughput.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import defaultdict
from typing import Any

import _common

CONFIGS = ("single", "floor", "recipe", "mplog", "loguru", "logexec")
POOL_CONFIGS = CONFIGS[1:]

# Trial side: what runs in the fresh interpreter -------------------------------------------


_loguru_logger: Any = None


def loguru_initializer(logger: Any) -> None:
    global _loguru_logger
    _loguru_logger = logger


def loguru_task(source: int, count: int) -> int:
    info = _loguru_logger.info
    for sequence in range(count):
        info("src={} seq={} {}", source, sequence, _common.PAD)
    return count


def _loguru_json_format(record: dict[str, Any]) -> str:
    # The same tiny JSON document as _common.JsonFormatter; loguru formats in the caller.
    record["extra"]["json"] = json.dumps(
        {
            "time": record["time"].strftime("%Y-%m-%d %H:%M:%S,%f")[:-3],
            "level": record["level"].name,
            "logger": _common.LOGGER_NAME,
            "pid": record["process"].id,
            "message": record["message"],
        }
    )
    return "{extra[json]}\n"


_LOGURU_PLAIN_FORMAT = (
    "{time:YYYY-MM-DD HH:mm:ss,SSS} {level} " + _common.LOGGER_NAME + " {process} {message}"
)


def run_pool(executor: concurrent.futures.ProcessPoolExecutor, task: Any, counts: list[int]) -> None:
    futures = [executor.submit(task, source, count) for source, count in enumerate(counts)]
    for future in futures:
        future.result()


def trial(spec: dict[str, Any]) -> dict[str, Any]:
    config: str = spec["config"]
    formatter_kind: str = spec["formatter"]
    workers: int = spec["workers"]
    counts = _common.split(spec["records"], workers)
    context = multiprocessing.get_context(spec["start_method"])
    directory = tempfile.mkdtemp(prefix="logexec-bench-")
    path = os.path.join(directory, "out.log")
    root = _common.reset_root_logger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_common.make_formatter(formatter_kind))
    checked = True

    if config == "single":
        root.addHandler(handler)
        logger = logging.getLogger(_common.LOGGER_NAME)
        start = time.perf_counter()
        for source, count in enumerate(counts):
            _common.log_records(logger, source, count)
        handler.close()
        elapsed = time.perf_counter() - start
    elif config == "floor":
        root.addHandler(handler)
        start = time.perf_counter()
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as executor:
            run_pool(executor, _common.disabled_task, counts)
        handler.close()
        elapsed = time.perf_counter() - start
        checked = False
    elif config == "recipe":
        root.addHandler(handler)
        start = time.perf_counter()
        queue, listener = _common.start_recipe_listener(context)
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_common.recipe_initializer, initargs=(queue,)
        ) as executor:
            run_pool(executor, _common.logging_task, counts)
        listener.stop()
        handler.close()
        elapsed = time.perf_counter() - start
    elif config == "mplog":
        import multiprocessing_logging  # type: ignore[import-untyped]  # ships no type hints

        if spec["start_method"] != "fork":
            raise ValueError("multiprocessing-logging works only with fork")
        root.addHandler(handler)
        start = time.perf_counter()
        multiprocessing_logging.install_mp_handler()
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as executor:
            run_pool(executor, _common.logging_task, counts)
        for wrapper in list(root.handlers):
            wrapper.close()  # joins its receiving thread for up to 5 s
            receiver = getattr(wrapper, "_receive_thread", None)
            if receiver is not None:
                receiver.join()  # whatever is left beyond those 5 s
            root.removeHandler(wrapper)
        handler.close()
        elapsed = time.perf_counter() - start
    elif config == "loguru":
        from loguru import logger as loguru_logger

        loguru_logger.remove()
        start = time.perf_counter()
        fmt: Any = _loguru_json_format if formatter_kind == "json" else _LOGURU_PLAIN_FORMAT
        loguru_logger.add(path, enqueue=True, format=fmt, level="INFO", context=context)
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=loguru_initializer, initargs=(loguru_logger,)
        ) as executor:
            run_pool(executor, loguru_task, counts)
        loguru_logger.remove()  # drains the queue and closes the file
        elapsed = time.perf_counter() - start
    elif _common.is_logexec(config):
        from logexec import LoggingProcessPoolExecutor

        root.addHandler(handler)
        start = time.perf_counter()
        with LoggingProcessPoolExecutor(workers, mp_context=context) as logexec_executor:
            run_pool(logexec_executor, _common.logging_task, counts)
        handler.close()
        elapsed = time.perf_counter() - start
    else:
        raise ValueError(f"unknown config {config!r}")

    result: dict[str, Any] = {**spec, "seconds": elapsed, "rate": spec["records"] / elapsed}
    if checked:
        result.update(_common.verify(path, counts, formatter_kind).as_dict())
    shutil.rmtree(directory, ignore_errors=True)
    return result


# Orchestrator side ------------------------------------------------------------------------


def plan_round(args: argparse.Namespace, configs: list[str]) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    for records in args.records:
        for formatter in args.formatters:
            base = {"records": records, "formatter": formatter, "start_method": args.start_method}
            if "single" in configs:
                # One single-writer run per (N, formatter) serves every W: it writes the same records.
                specs.append({**base, "config": "single", "workers": 1})
            for workers in args.workers:
                specs.extend(
                    {**base, "config": config, "workers": workers} for config in configs if config != "single"
                )
    for spec in specs:
        if spec["config"] == "alt":
            spec["pythonpath"] = args.alt_logexec
    return specs


def main() -> None:
    parser = _common.make_parser(__doc__, "smoke run: 2 rounds, N=5000, W=2")
    parser.add_argument("--records", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--formatters", nargs="+", default=["plain", "json"], choices=["plain", "json"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument(
        "--replot", action="store_true", help="redraw the table and chart from results/bench_throughput.json"
    )
    _common.add_run_arguments(parser)
    args = parser.parse_args()
    if _common.answer_trial(args, trial):
        return
    if args.quick:
        args.repeats, args.records, args.workers = 2, [5_000], [2]
    if args.replot:
        saved: list[dict[str, Any]] = json.loads(
            (_common.RESULTS_DIRECTORY / "bench_throughput.json").read_text(encoding="utf-8")
        )
        present = {r["config"] for r in saved}
        args.records = sorted({r["records"] for r in saved})
        args.workers = sorted({r["workers"] for r in saved if r["config"] != "single"})
        args.repeats = len({r["round"] for r in saved})
        chart(args, [c for c in CONFIGS if c in present], saved)
        return
    configs = [c for c in args.configs if not (c == "mplog" and args.start_method != "fork")]
    if "single" not in configs:
        configs.insert(0, "single")  # every ratio needs it
    if args.alt_logexec:
        configs += [c for c in ("logexec", "alt") if c not in configs]
    if args.transports:
        configs += [c for c in ("logexec", *_common.transport_configs(args)) if c not in configs]

    _common.print_header(args)
    # Warm-up: one small trial of each configuration, discarded (disk cache, imports, pyc).
    for spec in plan_round(argparse.Namespace(**{**vars(args), "records": [2_000], "workers": [2]}), configs):
        _common.run_trial(__file__, spec)

    results = _common.run_rounds(__file__, args, lambda: plan_round(args, configs), describe)
    _common.finish("bench_throughput", args, report(args, configs, results), results)
    if not args.no_save and not args.alt_logexec and not args.transports:
        chart(args, configs, results)


def describe(spec: dict[str, Any], result: dict[str, Any]) -> str:
    errors = sum(result.get(k, 0) for k in ("missing", "duplicated", "corrupt"))
    return (
        f"{spec['config']:16} W={spec['workers']} N={spec['records']:>7} "
        f"{spec['formatter']:5} {result['rate']:>10,.0f} rec/s {result['seconds']:7.3f} s"
        + (f"  ERRORS {errors}" if errors else "")
    )


def _ratios(results: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, list[float]]]:
    """Per (N, formatter, W, config): this round's ratios to single writer and to the recipe."""
    by_round: dict[tuple[Any, ...], dict[str, Any]] = {}
    for result in results:
        by_round[
            (result["round"], result["records"], result["formatter"], result["config"], result["workers"])
        ] = result
    out: dict[tuple[Any, ...], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (round_number, records, formatter, config, workers), result in by_round.items():
        if config == "single":
            continue
        single = by_round.get((round_number, records, formatter, "single", 1))
        recipe = by_round.get((round_number, records, formatter, "recipe", workers))
        logexec = by_round.get((round_number, records, formatter, "logexec", workers))
        key = (records, formatter, workers, config)
        if logexec:
            out[key]["x_logexec"].append(result["rate"] / logexec["rate"])
        out[key]["rate"].append(result["rate"])
        if single:
            out[key]["x_single"].append(result["rate"] / single["rate"])
            out[key]["time_x_single"].append(result["seconds"] / single["seconds"])
        if recipe:
            out[key]["x_recipe"].append(result["rate"] / recipe["rate"])
    for result in results:
        if result["config"] == "single":
            for workers in {r["workers"] for r in results if r["config"] != "single"}:
                key = (result["records"], result["formatter"], workers, "single")
                out[key]["rate"].append(result["rate"])
                out[key]["x_single"].append(1.0)
                out[key]["time_x_single"].append(1.0)
    return out


def report(args: argparse.Namespace, configs: list[str], results: list[dict[str, Any]]) -> str:
    ratios = _ratios(results)
    sections = [
        "## Throughput (bench_throughput.py)",
        "",
        _common.environment_line() + f"; logexec at {_common.revision_note(args)}; "
        f"start method {args.start_method}; {args.repeats} interleaved rounds; medians of per-round ratios.",
        "",
        "`x single` = records/s ÷ the same round's single writer; `time x single` = wall time ÷ single "
        "writer's; `x recipe` / `x logexec` = ÷ the same round's stdlib recipe / logexec. Correctness "
        "columns are totals over all rounds (`lines` is per run); `floor` writes nothing, so it is not "
        "checked.",
    ]
    for records in args.records:
        for workers in args.workers:
            for formatter in args.formatters:
                rows = []
                for config in configs:
                    entry = ratios.get((records, formatter, workers, config))
                    if not entry:
                        continue
                    runs = [
                        r
                        for r in results
                        if r["config"] == config
                        and r["records"] == records
                        and r["formatter"] == formatter
                        and (r["workers"] == workers or config == "single")
                    ]
                    checked = [r for r in runs if "lines" in r]
                    rows.append(
                        [
                            config,
                            f"{_common.median(entry['rate']):,.0f}",
                            _common.spread(entry["rate"]),
                            f"{_common.median(entry['x_single']):.2f}",
                            f"{_common.median(entry['time_x_single']):.2f}",
                            f"{_common.median(entry['x_recipe']):.2f}" if entry.get("x_recipe") else "-",
                            f"{_common.median(entry['x_logexec']):.2f}" if entry.get("x_logexec") else "-",
                            f"{_common.median(r['lines'] for r in checked):,.0f}" if checked else "-",
                            sum(r["missing"] for r in checked) if checked else "-",
                            sum(r["duplicated"] for r in checked) if checked else "-",
                            sum(r["corrupt"] for r in checked) if checked else "-",
                        ]
                    )
                sections += [
                    "",
                    f"### N={records:,}, W={workers}, {formatter} formatter",
                    "",
                    _common.markdown_table(
                        [
                            "config",
                            "records/s",
                            "range",
                            "x single",
                            "time x single",
                            "x recipe",
                            "x logexec",
                            "lines",
                            "missing",
                            "duplicated",
                            "corrupt",
                        ],
                        rows,
                    ),
                ]
    return "\n".join(sections)


def chart(args: argparse.Namespace, configs: list[str], results: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = _ratios(results)
    # The floor writes nothing and runs at 10-60x the ceiling; plotted, it hides every other bar.
    configs = [config for config in configs if config != "floor"]
    groups = [(n, w, f) for n in args.records for w in args.workers for f in args.formatters]
    figure, axis = plt.subplots(figsize=(max(8, 1.6 * len(groups)), 4.5))
    width = 0.8 / len(configs)
    for index, config in enumerate(configs):
        values = [_common.median(ratios.get((n, f, w, config), {}).get("x_single", [])) for n, w, f in groups]
        axis.bar([g + index * width for g in range(len(groups))], values, width, label=config)
    axis.set_xticks([g + width * (len(configs) - 1) / 2 for g in range(len(groups))])
    axis.set_xticklabels([f"N={n // 1000}k W={w}\n{f}" for n, w, f in groups])
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.axhline(0.9, color="grey", linewidth=0.8, linestyle="--")
    axis.set_ylabel("records/s ÷ single writer (median of rounds)")
    axis.set_title(
        "Throughput into a FileHandler in the parent (higher is better; dashed: 0.9 goal; floor omitted)"
    )
    axis.set_ylim(0, max(1.3, axis.get_ylim()[1]))
    axis.legend(ncol=len(configs), fontsize="small", loc="upper right")
    figure.tight_layout()
    _common.RESULTS_DIRECTORY.mkdir(parents=True, exist_ok=True)
    figure.savefig(_common.RESULTS_DIRECTORY / "throughput.png", dpi=110)


if __name__ == "__main__":
    main()
