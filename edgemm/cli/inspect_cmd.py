"""``edgemm inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgemm.cli import emit_json, json_option


def summary(bundle: Path) -> dict[str, Any]:
    """A verified bundle's manifest summary (what ``inspect --json`` prints)."""
    from edgemm.bundle.verify import verify_bundle

    m = verify_bundle(bundle)
    sizes = {f.path: f.bytes for f in m.files}
    return {
        "bundle": str(bundle),
        "name": m.name,
        "task": m.task,
        "schema": m.schema,
        "modalities": m.modalities,
        "labels": m.labels,
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape, "profile": t.profile} for t in m.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in m.outputs],
        "preprocessing": {k: {kk: vv for kk, vv in v.items() if kk not in ("mean", "std")} for k, v in m.preprocessing.items()},
        "postprocessing": m.postprocessing,
        "artifacts": [
            {"name": a.name, "kind": a.kind, "precision": a.precision, "path": a.path,
             "bytes": sum(sizes.get(p, 0) for p in a.files), "providers": a.providers,
             "quantization": a.quantization, "requirements": a.requirements, "validation": a.validation}
            | ({"unavailable": _openvino_unavailable(a)} if a.kind == "openvino" else {})
            for a in m.artifacts
        ],
        "validation": {k: v for k, v in m.validation.items() if k != "parity"}
        | {"parity": {k: v for k, v in m.validation.get("parity", {}).items() if k != "comparisons"}},
        "created_by": m.created_by,
        "source": m.source,
        "files": len(m.files),
        "bytes": sum(sizes.values()),
        "engines": engines_summary(m),
        "tensorrt": m.validation.get("tensorrt"),
    }


def _split_line(requirements: dict[str, Any]) -> str:
    """What a split artifact caches and when it answers through its whole graph, in one line."""
    parts = {p.get("name"): p for p in requirements.get("parts", []) if isinstance(p, dict)}
    cache = requirements.get("cache") or {}
    line = (f"{cache.get('branch', '?')} part cached ({cache.get('entries', '?')} answers, padding "
            f"{cache.get('padding', '?')}), rest part on the batch")
    record = requirements.get("whole") or {}
    whole, fraction = parts.get("whole"), record.get("min_new_fraction")
    if whole and isinstance(fraction, (int, float)):
        owner = record.get("artifact", requirements.get("source_artifact", "source"))
        engine = "OpenVINO" if whole.get("engine") == "openvino" else "ONNX Runtime"
        line += (f"; batches with ≥ {100 * fraction:.0f} % new answers run the whole graph "
                 f"({whole.get('path')}, the {owner} artifact's file, on {engine})")
    if parts.get("joint"):
        line += (f"; a new answer alone runs the joint graph ({parts['joint'].get('path')}: answer and "
                 "cached row in one call, bit-exact to the parts)")
    return line


def _openvino_unavailable(artifact: Any) -> str | None:
    """Why this machine cannot run an OpenVINO artifact (None: it can)."""
    from edgemm.runtime.backends.openvino import unavailable_reason

    return unavailable_reason(artifact)


def engines_summary(m: Any) -> list[dict[str, Any]]:
    """Each TensorRT engine's compatibility record and the decision for this machine."""
    from edgemm.bundle.manifest import ENGINE_KIND

    engines = [a for a in m.artifacts if a.kind == ENGINE_KIND]
    if not engines:
        return []
    from edgemm.runtime.trt_compat import check_engine, probe_host

    host = probe_host()
    out = []
    for a in engines:
        req = a.requirements
        built = req.get("built_with", {})
        out.append({
            "name": a.name, "precision": a.precision, "path": a.path,
            "record": {k: req.get(k) for k in ("tensorrt", "compute_capability", "cuda", "l4t", "jetpack", "platform", "gpu")},
            "built_with": {k: built.get(k) for k in ("source_artifact", "regime", "builder_flags", "network_flags",
                                                     "layernorm_fp32", "workspace_mb", "dla_core", "hardware_compatibility",
                                                     "version_compatible", "cache_key")}
            | {"profiles": [p.get("name") for p in built.get("profiles", [])]},
            "compat": check_engine(req, host).to_dict(),
        })
    return out


@click.command("inspect")
@click.argument("bundle", type=click.Path(path_type=Path))
@json_option
def inspect(bundle: Path, as_json: bool) -> None:
    """Show BUNDLE's model, inputs/outputs, artifacts and validation (after verifying it)."""
    info = summary(bundle)
    if as_json:
        emit_json({"ok": True, **info})
        return
    echo = click.echo
    echo(f"{info['name']}  ({info['task']}, {info['schema']})  {info['files']} files, {info['bytes'] / 2**20:.2f} MiB")
    mods = ", ".join(f"{m}{'' if v.get('required', True) else ' (optional)'}" for m, v in info["modalities"].items())
    echo(f"modalities  {mods}")
    if info["labels"]:
        shown = ", ".join(info["labels"][:12]) + (" …" if len(info["labels"]) > 12 else "")
        echo(f"labels      {shown}")
    echo("inputs")
    for t in info["inputs"]:
        prof = "  ".join(f"{axis}∈[{p[0]},{p[2]}] opt {p[1]}" for axis, p in t["profile"].items())
        echo(f"  {t['name']:<22} {t['dtype']:<8} {t['shape']!s:<26} {prof}")
    echo("outputs")
    for t in info["outputs"]:
        echo(f"  {t['name']:<22} {t['dtype']:<8} {t['shape']}")
    echo("artifacts")
    for a in info["artifacts"]:
        parity, gate = a["validation"].get("parity", {}), a["validation"].get("gate")
        if gate:
            check = (f"{gate['metric']} {gate['value']:.4f} (fp32 {gate['fp32_value']:.4f}, drop {gate['drop_points']:.2f} pt), "
                     f"agreement {gate['top1_agreement']:.4f}, max |Δlogit| {gate['max_abs_diff']:.3f}")
        else:
            check = f"parity max abs {parity['max_abs']:.1e}" if parity else ""
        providers = ",".join(p.replace("ExecutionProvider", "") for p in a["providers"])
        echo(f"  {a['name']:<10} {a['precision']:<5} {a['bytes'] / 2**20:8.2f} MiB  [{providers}]  {check}")
        if a["kind"] == "openvino":
            echo(f"             OpenVINO IR {a['requirements'].get('openvino', '?')}, inference precision "
                 f"{a['requirements'].get('inference_precision', 'f32')}"
                 + (f", {a['quantization'].get('method')}" if a["quantization"] else "")
                 + f"; here: {a.get('unavailable') or 'runs'}")
        elif a["kind"] == "split":
            echo(f"             {_split_line(a['requirements'])}")
    parity = info["validation"].get("parity", {})
    if parity:
        state = "passed" if parity.get("passed") else "FAILED (accepted)"
        echo(f"validation  parity vs {info['validation'].get('reference')} {state} at {', '.join(parity.get('cases', []))}")
    optimization = info["validation"].get("optimization")
    if optimization:
        for step in optimization["passes"]:
            fused = ", ".join(f"{op} {n}" for op, n in sorted(step["fused"].items())) or "nothing fused"
            echo(f"fusions     {step['branch']} encoder ({step['model_type']}): {fused}")
    gate = info["validation"].get("gate")
    if gate:
        echo(f"gate        budget {gate['budget_points']} pt {gate['metric']} on {gate['eval']['records']} "
             f"{gate['eval']['split']} records of {gate['eval']['data']} (fp32 {gate['fp32'][gate['metric']]:.4f})")
        for variant in gate["variants"]:
            echo(f"  {variant['variant']:<10} {variant['outcome']}")
    if info["engines"] or info["tensorrt"]:
        echo("tensorrt")
    for e in info["engines"]:
        r, b, c = e["record"], e["built_with"], e["compat"]
        where = f"L4T R{r['l4t']} / JetPack {r['jetpack']}" if r.get("l4t") else (r.get("platform") or "")
        echo(f"  {e['name']:<10} {e['precision']:<5} TensorRT {r['tensorrt']}, sm {r['compute_capability']}, "
             f"CUDA {r.get('cuda')}, {where}; {b['regime']} from {b['source_artifact']}, "
             f"profiles {', '.join(p for p in b['profiles'] if p)}")
        echo(f"             here: {c['status']}" + (f" ({'; '.join(c['reasons'])})" if c["reasons"] else ""))
    if info["tensorrt"] and info["tensorrt"].get("skipped"):
        echo(f"  engines not built at export: {info['tensorrt']['skipped']}")
    cb = info["created_by"]
    echo("created by  " + ", ".join(f"{k} {v}" for k, v in cb.items() if k not in ("created_at",)))
