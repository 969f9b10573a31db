"""``edgemm verify``."""

from __future__ import annotations

from pathlib import Path

import click

from edgemm.cli import emit_json, json_option
from edgemm.errors import GoldenSetError


@click.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Device to re-run the golden set on.")
@click.option("--artifact", "artifacts", multiple=True, help="Only these artifacts (default: all for the device).")
@json_option
def verify(bundle: Path, device: str, artifacts: tuple[str, ...], as_json: bool) -> None:
    """Verify BUNDLE: every file's hash, then each artifact's golden set on this machine.

    Exit code 4 when an artifact no longer reproduces its golden outputs.
    """
    from edgemm.bundle.verify import verify_bundle
    from edgemm.runtime.golden import golden_report
    from edgemm.runtime.predictor import _PROVIDER

    manifest = verify_bundle(bundle)
    names = list(artifacts) or [a.name for a in manifest.artifacts if _PROVIDER[device] in a.providers and a.kind == "onnx"]
    reports = [golden_report(bundle, manifest, name, device=device) for name in names]
    passed = all(r["passed"] for r in reports)
    if as_json:
        emit_json({"ok": passed, "bundle": str(bundle), "files": len(manifest.files), "hashes": "ok", "artifacts": reports})
    else:
        click.echo(f"files     {len(manifest.files)} listed, all hashes match")
        for r in reports:
            worst = max((o["max_abs"] for o in r["outputs"]), default=0.0)
            drift = max((o["max_abs"] for o in r["reference_drift"]), default=0.0)
            pre = "preprocessing ok" if not r["preprocessing"]["mismatched_inputs"] else \
                f"preprocessing differs: {r['preprocessing']['mismatched_inputs']}"
            click.echo(f"golden    {r['artifact']:<8} on {r['device']}: {'ok' if r['passed'] else 'FAILED'}  "
                       f"max abs {worst:.2e} (vs PyTorch {drift:.2e})  {pre}")
    if not passed:
        failed = [r["artifact"] for r in reports if not r["passed"]]
        raise GoldenSetError(f"Golden set failed for {', '.join(failed)}.",
                             hint="Re-export the bundle or check library versions against `edgemm inspect`.")
