"""``edgemm build-engine``: build TensorRT engines into a bundle, on the device that will run them."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import click

from edgemm import progress
from edgemm.cli import emit_json, json_option, output, warn


def _layernorm_layers(onnx_path: Path) -> list[str] | None:
    """ONNX node names of LayerNorm parts (TensorRT names its layers after them), if onnx is installed."""
    try:
        import onnx
    except ImportError:
        return None
    from edgemm.tensorrt.plan import LAYERNORM_NAME

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.name and (n.op_type == "LayerNormalization" or (
        n.op_type in ("ReduceMean", "Sub", "Pow", "Add", "Sqrt", "Div", "Mul") and LAYERNORM_NAME.search(n.name)))]


def _emit_trtexec(bundle: Path, requests: list[Any], version: str, jetson: bool, timing_cache: Path | None) -> list[dict]:
    from edgemm.bundle.verify import verify_bundle
    from edgemm.tensorrt.bundle_engines import plan_engine
    from edgemm.tensorrt.trtexec import trtexec_command

    manifest = verify_bundle(bundle)
    out = []
    for request in requests:
        plan = plan_engine(manifest, request, version, jetson=jetson)
        onnx_path = bundle.resolve() / manifest.artifact(request.source).path
        layers = _layernorm_layers(onnx_path) if plan.layernorm_fp32 == "constraints" else None
        engine = bundle.resolve().parent / f"{bundle.name}.{request.engine_name}.plan"
        out.append({"engine": request.engine_name, "plan": plan.to_dict(),
                    "command": trtexec_command(plan, onnx_path, engine, timing_cache=timing_cache,
                                               layernorm_layers=layers)})
    return out


@click.command("build-engine")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--target", "recipe", default=None, help="Recipe whose [tensorrt] table to follow (e.g. jetson-orin-nano).")
@click.option("--artifact", "artifacts", multiple=True, help="ONNX artifact(s) to build from (default: by precision).")
@click.option("--name", default=None, help="Artifact name of the engine (default trt-<precision or source>).")
@click.option("--fp16", "precision", flag_value="fp16", default=None, help="FP16 engine.")
@click.option("--int8", "precision", flag_value="int8", help="INT8 engine from the bundle's Q/DQ graph.")
@click.option("--fp32", "precision", flag_value="fp32", help="FP32 engine.")
@click.option("--profile", "profiles", multiple=True, metavar="SPEC",
              help='Optimization profile, repeatable: "name=b1;batch=1,1,1;seq=8,32,64" (min,opt,max).')
@click.option("--workspace", "workspace_mb", type=int, default=None, help="Builder workspace pool in MiB.")
@click.option("--dla-core", type=int, default=None, help="Build for this DLA core (Jetson AGX/NX; FP16/INT8).")
@click.option("--no-gpu-fallback", is_flag=True, help="With --dla-core: fail instead of running layers on the GPU.")
@click.option("--no-layernorm-fp32", is_flag=True, help="Let LayerNorm run in reduced precision (not advised).")
@click.option("--strongly-typed/--no-strongly-typed", default=None, help="Force the regime (TensorRT 11: always).")
@click.option("--hardware-compatibility", type=click.Choice(["none", "ampere_plus", "same_compute_capability"]),
              default=None, help="Engine hardware compatibility level (desktop GPUs only).")
@click.option("--version-compatible", is_flag=True, help="Version-compatible engine (the runtime refuses it by default).")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="Timing cache file (default: this machine's, per TensorRT version and GPU).")
@click.option("--waive-fp16-overflow", is_flag=True, help="Accept FP16 overflow/subnormal warnings in the build log.")
@click.option("--emit-trtexec", is_flag=True, help="Print the equivalent trtexec command(s); builds nothing.")
@click.option("--trt-version", default=None, help="TensorRT version for --emit-trtexec when TensorRT is not installed.")
@click.option("--jetson/--no-jetson", default=None, help="Plan for a Jetson (default: detect).")
@click.option("--rebuild", "--force", "rebuild", is_flag=True, help="Replace engines already in the bundle.")
@click.option("--no-cache", is_flag=True, help="Do not reuse an engine from this machine's engine cache.")
@json_option
def build_engine(bundle: Path, recipe: str | None, artifacts: tuple[str, ...], name: str | None, precision: str | None,
                 profiles: tuple[str, ...], workspace_mb: int | None, dla_core: int | None, no_gpu_fallback: bool,
                 no_layernorm_fp32: bool, strongly_typed: bool | None, hardware_compatibility: str | None,
                 version_compatible: bool, timing_cache: Path | None, waive_fp16_overflow: bool, emit_trtexec: bool,
                 trt_version: str | None, jetson: bool | None, rebuild: bool, no_cache: bool, as_json: bool) -> None:
    """Build TensorRT engines into BUNDLE on this device (TensorRT 10 or 11 and a CUDA GPU needed).

    Engines are planned from the manifest's min/opt/max shapes and the bundle's ONNX artifacts,
    gated on TensorRT's FP16-range warnings, checked against the golden set, recorded with their
    compatibility (TensorRT, compute capability, CUDA, L4T/JetPack) and hashed into the bundle.
    --emit-trtexec prints the equivalent trtexec command instead and works without TensorRT.
    """
    from edgemm.bundle.verify import verify_bundle
    from edgemm.recipes import TensorRTSection, load_recipe
    from edgemm.runtime.trt_compat import parse_l4t_release, tensorrt_version
    from edgemm.tensorrt.bundle_engines import add_engines, requests_from_recipe
    from edgemm.tensorrt.profiles import parse_profile_option

    manifest = verify_bundle(bundle, check_hashes=False)
    table, recipe_workspace = TensorRTSection(), None
    if recipe:
        loaded = load_recipe(recipe)
        table, recipe_workspace = loaded.tensorrt, loaded.limits.workspace_mb
    overrides = {
        "artifacts": list(artifacts) or None,
        "precisions": [precision] if precision and not artifacts else None,
        "precision": precision if artifacts else None,
        "profiles": [parse_profile_option(p) for p in profiles] or None,
        "workspace_mb": workspace_mb, "dla_core": dla_core, "name": name,
        "gpu_fallback": False if no_gpu_fallback else None,
        "layernorm_fp32": False if no_layernorm_fp32 else None,
        "strongly_typed": strongly_typed, "hardware_compatibility": hardware_compatibility,
        "version_compatible": version_compatible or None, "waive_fp16_overflow": waive_fp16_overflow or None,
    }
    if emit_trtexec:
        version = trt_version or tensorrt_version() or "10.3.0"
        if jetson is None:
            release = Path("/etc/nv_tegra_release")
            jetson = release.is_file() and parse_l4t_release(release.read_text(errors="ignore")) is not None
        requests = requests_from_recipe(table, manifest, version, workspace_mb=recipe_workspace, overrides=overrides)
        commands = _emit_trtexec(bundle, requests, version, bool(jetson), timing_cache)
        if as_json:
            emit_json({"ok": True, "tensorrt": version, "trtexec": commands})
        else:
            if trt_version is None and tensorrt_version() is None:
                click.echo(f"# TensorRT is not installed here: planned for TensorRT {version} (--trt-version to change)")
            for item in commands:
                click.echo(item["command"])
            click.echo("# edgemm runs only engines inside a verified bundle: build them with `edgemm build-engine`.")
        return

    from edgemm.runtime.trt_compat import probe_host
    from edgemm.tensorrt.build import import_tensorrt

    trt = import_tensorrt()  # MissingDependencyError (exit 3) with the install hint
    host = probe_host()
    if jetson is not None and jetson != host.is_jetson:
        warn("--jetson/--no-jetson ignored for a real build (detected from the machine).")
    requests = requests_from_recipe(table, manifest, str(trt.__version__), workspace_mb=recipe_workspace,
                                    overrides=overrides)
    # The builder's own phase lines and warnings: stderr, or nowhere with -q (a failure still raises).
    build_log = sys.stderr if output.verbosity() >= 0 else io.StringIO()
    with progress.stage("Building TensorRT engines"):
        reports = add_engines(bundle, requests, rebuild=rebuild, use_cache=not no_cache, timing_cache=timing_cache,
                              host=host, progress=build_log)
    if as_json:
        emit_json({"ok": True, "bundle": str(bundle), "host": host.to_dict(), "engines": reports})
        return
    for r in reports:
        detail = f"{r.get('precision', '')} {r.get('regime', '')} in {r.get('seconds', 0):.0f}s" if r["outcome"] != "up to date" else ""
        click.echo(f"engine  {r['engine']:<14} {r['outcome']:<11} {detail}")
