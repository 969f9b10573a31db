"""``edgemm bench``."""

from __future__ import annotations

from pathlib import Path

import click

from edgemm.cli import emit_json, json_option
from edgemm.errors import UsageError
from edgemm.fsio import check_output_dir, os_errors


def _ints(value: str | None, what: str) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        items = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--{what} takes comma-separated integers, got {value!r}.", hint=f"Example: --{what} 1,8,32") from None
    if not items or min(items) < 1:
        raise UsageError(f"--{what} values must be positive integers.")
    return items


@click.command("bench")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--artifact", "artifacts", multiple=True, help="Artifacts to measure (default: all runnable here).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-sizes", default="1", show_default=True, help="Comma-separated batch sizes.")
@click.option("--seq-lens", help="Comma-separated text lengths for extra model-only runs (tokens).")
@click.option("--warmup", type=click.IntRange(0, 10_000), default=5, show_default=True)
@click.option("--iterations", type=click.IntRange(1, 1_000_000), default=50, show_default=True,
              help="Timed calls per contender, mode and shape.")
@click.option("--rounds", type=click.IntRange(1, 1000), default=5, show_default=True, help="Interleaving rounds.")
@click.option("--duration", type=click.FloatRange(0.1), help="Stop a shape's rounds after this many seconds.")
@click.option("--peers", help="Comma-separated peers: torch-eager, torch-eager-fp16, torch-compile, optimum, openvino, "
                              "openvino-int8; 'none' for none (default: every peer this machine can run).")
@click.option("--contention/--no-contention", default=False, show_default=True,
              help="Also time every cell with one core kept busy by a background process (CPU), interleaved "
                   "with the quiet cells; reports contended ÷ quiet p50.")
@click.option("--workload", "workloads", type=click.Choice(["standard", "repeated"]), multiple=True,
              help="standard: one request per batch size; repeated: texts repeat from a few answers while images "
                   "vary (end to end; what a split artifact's answer cache serves). Repeat the option for both "
                   "[default: standard].")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="The PyTorch checkpoint for peers (default: from the manifest).")
@click.option("--eval-data", help="Labelled data for accuracy drift (default: the checkpoint's training data, else the golden set).")
@click.option("--threads", type=click.IntRange(1, 256), help="Threads for every contender (default: the runtime's).")
@click.option("--cold-start/--no-cold-start", default=True, show_default=True)
@click.option("--cold-runs", type=click.IntRange(1, 50), default=3, show_default=True)
@click.option("--accuracy/--no-accuracy", default=True, show_default=True)
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True, help="CUDA: capture CUDA graphs.")
@click.option("--telemetry/--no-telemetry", default=True, show_default=True,
              help="CUDA: record power, energy per item and device memory (NVML, or tegrastats on Jetson).")
@click.option("--max-p99-ms", type=click.FloatRange(0), help="Budget: exit 4 if an edgemm artifact's end-to-end p99 exceeds it.")
@click.option("-o", "--out", type=click.Path(path_type=Path, file_okay=False, writable=True),
              help="Write bench.json, bench.csv and PNG plots here.")
@json_option
def bench(bundle: Path, artifacts: tuple[str, ...], device: str, batch_sizes: str, seq_lens: str | None, warmup: int,
          iterations: int, rounds: int, duration: float | None, peers: str | None, checkpoint: Path | None,
          eval_data: str | None, threads: int | None, cold_start: bool, cold_runs: int, accuracy: bool,
          cuda_graphs: bool, telemetry: bool, max_p99_ms: float | None, out: Path | None, as_json: bool,
          contention: bool = False, workloads: tuple[str, ...] = ()) -> None:
    """Benchmark BUNDLE's artifacts beside PyTorch, torch.compile, Optimum and OpenVINO, in one run.

    Contenders are interleaved on identical inputs; the report gives p50/p90/p99 end to end and
    model only, throughput, cold start and peak memory in fresh processes, and accuracy drift.
    Ratios headline the artifact predict / serve choose on this machine.
    """
    if out is not None:  # before the run, not after it
        # Without matplotlib (the bench extra) -o still writes bench.json / .csv / .html; the
        # reports say that the plots were not drawn and how to get them.
        check_output_dir(out, "Report directory")
    from edgemm.bench.bench import BenchConfig, check_budgets, run_bench
    from edgemm.bench.files import write_reports
    from edgemm.bench.report import table
    from edgemm.bench.runner import TimingOptions

    peer_list = None if peers is None else tuple(p.strip() for p in peers.split(",") if p.strip() and p.strip() != "none")
    timing = TimingOptions(batch_sizes=_ints(batch_sizes, "batch-sizes") or (1,),
                           seq_lens=(None, *_ints(seq_lens, "seq-lens")), warmup=warmup, iterations=iterations,
                           rounds=rounds, duration_s=duration)
    report = run_bench(BenchConfig(bundle=bundle, artifacts=artifacts or None, device=device, timing=timing,
                                   peers=peer_list, checkpoint=checkpoint, threads=threads, cold_start=cold_start,
                                   cold_runs=cold_runs, accuracy=accuracy, eval_data=eval_data,
                                   max_p99_ms=max_p99_ms, cuda_graphs=cuda_graphs, telemetry=telemetry,
                                   contention=contention, workloads=tuple(dict.fromkeys(workloads)) or ("standard",)))
    files = []
    if out is not None:
        with os_errors(f"write the reports to {out}", path=out):
            files = write_reports(report.document, out)
    if as_json:
        emit_json({"ok": not report.budget_failures, **report.document, "files": [str(f) for f in files]})
    else:
        click.echo(table(report.document))
        for f in files:
            click.echo(f"wrote     {f}")
    check_budgets(report)
