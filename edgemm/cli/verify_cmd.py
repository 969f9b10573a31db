"""``edgemm verify``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgemm import progress
from edgemm.cli import emit_json, json_option
from edgemm.errors import EngineMismatchError, GoldenSetError

if TYPE_CHECKING:
    from edgemm.bundle.manifest import Manifest


@click.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--device", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
              help="Device to re-run the golden set on (tensorrt: the bundle's engines).")
@click.option("--artifact", "artifacts", multiple=True, help="Only these artifacts (default: all for the device).")
@json_option
def verify(bundle: Path, device: str, artifacts: tuple[str, ...], as_json: bool) -> None:
    """Verify BUNDLE: every file's hash, the manifest's semantics, then each artifact's golden set.

    The manifest must describe its model: every file it points to is listed and hashed, the
    postprocessing and labels fit the outputs, and preprocessing sizes and caps fit the inputs.
    The golden set re-run also checks that the labels still give the answers recorded at export.

    TensorRT engines are checked against this machine before anything deserializes them: an
    engine outside the default policy (version-compatible, plugins) always fails; a stale or
    mismatched engine fails where TensorRT and a GPU are present (or with --device tensorrt).

    Exit code 4 when a file's hash or size differs from the manifest, an artifact no longer
    reproduces its golden outputs or labels, or an engine mismatches; 1 when the bundle is
    malformed (unlisted, missing or linked files, an invalid manifest).
    """
    from edgemm.bundle.verify import verify_bundle
    from edgemm.cli.inspect_cmd import engines_summary
    from edgemm.runtime.backends.kinds import _PROVIDER
    from edgemm.runtime.golden import golden_report
    from edgemm.runtime.semantics import check_semantics

    manifest = verify_bundle(bundle)
    check_semantics(manifest)
    engines = engines_summary(manifest)
    # stale / mismatch only arise where TensorRT and a GPU exist; "unavailable" fails only when
    # engines were asked for.
    refused = [e for e in engines if e["compat"]["status"] in ("refused", "stale", "mismatch")
               or (device == "tensorrt" and e["compat"]["status"] != "ok")]
    if device == "tensorrt":
        names = list(artifacts) or [e["name"] for e in engines if e["compat"]["status"] == "ok"]
    else:
        names = list(artifacts) or [a.name for a in manifest.artifacts
                                    if (_PROVIDER[device] in a.providers and a.kind == "onnx")
                                    or (device == "cpu" and a.kind in ("openvino", "split"))]
    skipped = _openvino_skips(manifest, names)
    reports = [golden_report(bundle, manifest, name, device=device)
               for name in progress.track(names, label="Re-running golden sets")
               if name not in {e["name"] for e in refused} and name not in skipped]
    passed = all(r["passed"] for r in reports) and not refused
    if as_json and passed:  # a failure prints its one JSON document through the error handler
        emit_json({"ok": passed, "bundle": str(bundle), "files": len(manifest.files), "hashes": "ok",
                   "manifest": "ok", "artifacts": reports,
                   "skipped": [{"artifact": n, "reason": why} for n, why in skipped.items()],
                   "engines": [{"name": e["name"], **e["compat"]} for e in engines]})
    elif not as_json:
        click.echo(f"files     {len(manifest.files)} listed, all hashes match")
        click.echo("manifest  paths, postprocessing, labels and preprocessing sizes fit the model")
        for e in engines:
            c = e["compat"]
            state = {"ok": "compatible", "unavailable": "not checked here"}.get(c["status"], c["status"].upper())
            click.echo(f"engine    {e['name']:<8} {state}" + (f": {'; '.join(c['reasons'])}" if c["reasons"] else ""))
        for r in reports:
            worst = max((o["max_abs"] for o in r["outputs"]), default=0.0)
            drift = max((o["max_abs"] for o in r["reference_drift"]), default=0.0)
            pre = "preprocessing ok" if not r["preprocessing"]["mismatched_inputs"] else \
                f"preprocessing differs: {r['preprocessing']['mismatched_inputs']}"
            click.echo(f"golden    {r['artifact']:<8} on {r['device']}: {'ok' if r['passed'] else 'FAILED'}  "
                       f"max abs {worst:.2e} (vs PyTorch {drift:.2e})  {pre}  {_labels_line(r['labels'])}")
        for name, why in skipped.items():
            click.echo(f"golden    {name:<8} skipped: {why}")
    if refused:
        lines = [f"{e['name']}: {e['compat']['status']} ({'; '.join(e['compat']['reasons'])})" for e in refused]
        raise EngineMismatchError("TensorRT engine(s) cannot run here: " + "; ".join(lines) + ".",
                                  hint=f"Rebuild on the target device: edgemm build-engine {bundle} --rebuild",
                                  details={"engines": lines, "artifacts": reports})
    if not passed:
        failed = [r["artifact"] for r in reports if not r["passed"]]
        labels = next((r["labels"] for r in reports if not r["labels"]["passed"]), None)
        if labels is not None:
            raise GoldenSetError(f"Golden set failed for {', '.join(failed)}: labels differ: {labels['reason']}.",
                                 hint="The manifest's labels or postprocessing changed after export; "
                                      "export the bundle again.", details={"artifacts": reports})
        raise GoldenSetError(f"Golden set failed for {', '.join(failed)}.",
                             hint="Re-export the bundle or check library versions against `edgemm inspect`.",
                             details={"artifacts": reports})


def _openvino_skips(manifest: Manifest, names: list[str]) -> dict[str, str]:
    """OpenVINO artifacts among ``names`` that this machine cannot run, with why (their files were hashed)."""
    from edgemm.runtime.backends.openvino import openvino_installed, unavailable_reason

    skipped = {}
    for name in names:
        art = manifest.artifact(name)
        if art.kind != "openvino":
            continue
        why = unavailable_reason(art)
        if why is not None:
            skipped[name] = "openvino not installed" if not openvino_installed() else why
    return skipped


def _labels_line(labels: dict) -> str:
    """The label check in a few words."""
    if not labels["checked"]:
        return "labels not checked (no labels recorded; export again)"
    return f"labels ok ({labels['rows']} rows)" if labels["passed"] else "labels DIFFER"
