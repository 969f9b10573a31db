"""``edgemm export``."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from edgemm._deps import require_all
from edgemm.cli import emit_json, json_option
from edgemm.errors import UsageError
from edgemm.fsio import check_output_dir, read_bounded
from edgemm.recipes import available_recipes

log = logging.getLogger("edgemm.export")

MAX_LABELS_FILE_BYTES = 2**20


def _labels(labels: str | None, labels_file: Path | None) -> tuple[str, ...] | None:
    if labels and labels_file:
        raise UsageError("Give --labels or --labels-file, not both.")
    if labels_file:
        data = read_bounded(labels_file, MAX_LABELS_FILE_BYTES, "Labels file",
                            hint="One label per line: a labels file is a few kilobytes.")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"Labels file {labels_file} is not UTF-8 text ({exc.reason} at byte {exc.start}).",
                             hint="Save it as UTF-8, one label per line.") from None
        items = [line.strip() for line in text.splitlines()]
    elif labels:
        items = [item.strip() for item in labels.split(",")]
    else:
        return None
    items = [item for item in items if item]
    if len(items) < 2 or len(set(items)) != len(items):
        raise UsageError("Zero-shot labels must be at least two distinct names.", hint="Example: --labels cat,dog,bird")
    return tuple(items)


@click.command("export")
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Bundle directory to create.")
@click.option("--spec", "spec_ref", metavar="MODULE:FACTORY", help="Your own nn.Module: a factory returning (module, ExportSpec).")
@click.option("--target", default="default", show_default=True, metavar="NAME|PATH",
              help=f"Export recipe: {', '.join(available_recipes())}; or the path of a recipe .toml of your own "
                   "(README, 'Targets, precision variants and the accuracy gate').")
@click.option("--labels", metavar="A,B,…",
              help="Zero-shot directories (CLIP, SigLIP, Chinese-CLIP, VisionTextDualEncoder, CLAP): fixed labels "
                   "(the text tower runs at export); classifiers: names for the head's outputs, in order.")
@click.option("--labels-file", type=click.Path(path_type=Path), help="As --labels, one label per line.")
@click.option("--prompt", metavar="TEMPLATE", help="Zero-shot directories: prompt template with {} for the label.")
@click.option("--display", "display_file", type=click.Path(path_type=Path), metavar="FILE.toml|json",
              help="What the kiosk page shows, per language: an instruction line, and per label a name and a short "
                   "message (default: the checkpoint's display.json, which edgemm train writes for digit-match).")
@click.option("--exporter", type=click.Choice(["dynamo", "legacy"]), help="torch → ONNX exporter (recipe default: dynamo).")
@click.option("--opset", type=click.IntRange(17, 23), help="ONNX opset (recipe default: 18).")
@click.option("--eval-data", metavar="DATA", help="Held-out data for the accuracy gate: digit-match or a dataset path "
              "(default: the data the checkpoint was trained on).")
@click.option("--budget", type=click.FloatRange(0, 100), help="Max accuracy drop of a variant, in points (recipe default 0.5).")
@click.option("--calibration", type=click.Choice(["minmax", "entropy", "percentile"]), help="INT8 static calibration method.")
@click.option("--allow-mismatch", is_flag=True, help="Accept a parity failure; it is recorded in the manifest.")
@click.option("--allow-tracer-warnings", is_flag=True,
              help="Accept the legacy exporter's warnings that the trace may be wrong for other inputs "
                   "(a Python branch on a tensor value); they are recorded in the manifest.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle checkpoints (they can run code: trusted sources only).")
@click.option("--force", is_flag=True, help="Replace an existing output bundle.")
@json_option
def export(source: Path | None, output: Path, spec_ref: str | None, target: str, labels: str | None,
           labels_file: Path | None, prompt: str | None, display_file: Path | None, exporter: str | None, opset: int | None,
           eval_data: str | None, budget: float | None, calibration: str | None,
           allow_mismatch: bool, allow_tracer_warnings: bool, allow_pickle: bool, force: bool,
           as_json: bool) -> None:
    """Export SOURCE to a verified bundle: a FusionModel directory, a Hugging Face directory that
    save_pretrained wrote (text / token / image / audio classification, ViLT, BLIP, CLIP, SigLIP,
    Chinese-CLIP, VisionTextDualEncoder, CLAP; recognised by its config.json), or with --spec your
    own model's weights or checkpoint directory.

    The spec's contract is checked before and after export (input names against forward(),
    outputs, shapes, dtypes, labels, postprocessing: exit 2). The graph is checked against
    PyTorch at several shapes, on real held-out records and on random inputs; a mismatch fails
    with exit code 4 unless --allow-mismatch. Nothing is written at OUTPUT unless the bundle
    verified.
    """
    check_output_dir(output, "Output bundle")  # before minutes of export, not after them
    # Checked before the build side is imported, which would otherwise end in a traceback.
    require_all("torch", "transformers", "onnx", "onnxscript", "safetensors", purpose="edgemm export")
    from edgemm.bundle.display import load_display_file
    from edgemm.export.pipeline import ExportOptions, export_bundle
    from edgemm.recipes import load_recipe

    recipe = load_recipe(target)
    if recipe.triton is not None:  # the repository is written after the export: fail before it instead
        from edgemm.triton.pbtxt import model_config_pb2

        model_config_pb2()
    options = ExportOptions(
        recipe=recipe,
        exporter=exporter,
        opset=opset,
        allow_mismatch=allow_mismatch,
        allow_tracer_warnings=allow_tracer_warnings,
        allow_pickle=allow_pickle,
        labels=_labels(labels, labels_file),
        prompt=prompt,
        force=force,
        eval_data=eval_data,
        budget_points=budget,
        calibration_method=calibration,
        # Read now, before minutes of export; checked against the model's labels once it is loaded.
        display=load_display_file(display_file) if display_file else None,
    )
    log.info("exporting %s with recipe %s", source or spec_ref, recipe.name)
    report = export_bundle(source, output, spec_ref=spec_ref, options=options)
    triton_repo = None
    if recipe.triton is not None:  # --target triton: the bundle plus a model repository beside it
        from edgemm.triton import write_repository

        triton_repo = write_repository(report.bundle, Path(str(output) + ".triton"), recipe.triton, force=force)
    if as_json:
        emit_json({"ok": True, **report.to_dict(), "triton": triton_repo.to_dict() if triton_repo else None})
        return
    parity = report.parity
    click.echo(f"bundle   {report.bundle}")
    if triton_repo is not None:
        click.echo(f"triton   {triton_repo.repository}  (ensemble {triton_repo.ensemble})")
    click.echo(f"model    {report.manifest.name} ({report.manifest.task})")
    verdict = "passed" if parity["passed"] else "FAILED (accepted with --allow-mismatch)"
    click.echo(f"parity   {verdict} on {len(parity['cases'])} cases ({_sources(parity.get('sources', {}))}): "
               f"max abs {parity['max_abs']:.2e}, min cosine {parity['min_cosine']:.6f}")
    optimization = report.manifest.validation.get("optimization")
    if optimization:
        fused = ", ".join(f"{op} {n}" for op, n in sorted(optimization["fused"].items())) or "nothing"
        click.echo(f"fusions  {fused}")
    for art in report.manifest.artifacts:
        size = sum(f.bytes for f in report.manifest.files if f.path in art.files)
        gate = art.validation.get("gate")
        measured = (f"  {gate['metric']} {gate['value']:.4f} (fp32 {gate['fp32_value']:.4f}), "
                    f"agreement {gate['top1_agreement']:.4f}" if gate else "")
        click.echo(f"artifact {art.name:<10} {art.precision:<5} {size / 2**20:8.2f} MiB  {art.path}{measured}")
    for variant in (report.manifest.validation.get("gate") or {}).get("variants", []):
        click.echo(f"gate     {variant['variant']}: {variant['outcome']}")
    split = report.manifest.validation.get("split")
    if split:
        click.echo(f"split    {split['name']} (from {split['from']}): {split['outcome']}")
    for warning in report.warnings:
        click.echo(f"warning  {warning}")
    engines = report.manifest.validation.get("tensorrt") or {}
    if "skipped" in engines:  # the recipe wants engines: say where they come from now (no log line needed)
        click.echo(f"tensorrt not built: {engines['skipped']}")
    elif "failed" in engines:
        click.echo(f"tensorrt FAILED, the bundle ships without engines: {engines['failed']}")
    click.echo(f"time     {report.timings.get('total', 0):.1f} s")


def _sources(sources: dict) -> str:
    """``built-in 4, real records 64 (digit-match), randomized 4`` for the parity line."""
    parts = [f"built-in {len(sources.get('built_in', {}).get('cases', []))}"]
    records = sources.get("real_records", {})
    parts.append(f"real records {records['count']} ({records.get('data')})" if "count" in records
                 else "no real records")
    parts.append(f"randomized {len(sources.get('randomized', {}).get('cases', []))}")
    return ", ".join(parts)
