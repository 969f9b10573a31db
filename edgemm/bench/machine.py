"""Machine fingerprint for benchmark reports: CPU, cores, memory, GPU, Jetson, library versions."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

_FLAGS_OF_INTEREST = ("avx", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "fma", "f16c", "sse4_2",
                      "asimd", "asimddp", "fphp", "asimdhp")


def _cpuinfo() -> dict[str, Any]:
    from edgemm.runtime.cpu import cpu_info

    info = cpu_info()
    return {"model": info.model, "flags": sorted(f for f in _FLAGS_OF_INTEREST if f in (info.flags or ()))}


def _memory_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _gpus() -> list[dict[str, Any]]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append({"name": parts[0], "driver": parts[1], "memory_mb": int(float(parts[2])), "compute_capability": parts[3]})
    return gpus


def _jetson() -> dict[str, Any] | None:
    release = Path("/etc/nv_tegra_release")
    if not release.is_file():
        return None
    from edgemm.runtime.trt_compat import jetpack_for_l4t, parse_l4t_release

    text = release.read_text(errors="ignore")
    l4t = parse_l4t_release(text)
    info: dict[str, Any] = {"l4t": text.splitlines()[0].strip() if text else "", "l4t_version": l4t,
                            "jetpack": jetpack_for_l4t(l4t)}
    model = Path("/proc/device-tree/model")
    if model.is_file():
        info["module"] = model.read_text(errors="ignore").strip("\x00\n ")
    if shutil.which("nvpmodel"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            info["nvpmodel"] = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10).stdout.strip()
    info["jetson_clocks"] = _jetson_clocks()
    return info


def _jetson_clocks() -> dict[str, Any]:
    """Whether clocks are pinned (``sudo jetson_clocks``): GPU/EMC current vs max frequency.

    Read from sysfs (no root needed); ``jetson_clocks --show`` needs root, so it is only a
    fallback. Results measured with clocks floating (DVFS) are not comparable to pinned ones.
    """
    out: dict[str, Any] = {}
    for name, pattern in (("gpu", "/sys/devices/platform/*gpu*/devfreq/*"), ("gpu", "/sys/class/devfreq/*gpu*"),
                          ("emc", "/sys/kernel/debug/bpmp/debug/clk/emc")):
        if name in out:
            continue
        for node in sorted(Path("/").glob(pattern.lstrip("/"))):
            cur, top = node / "cur_freq", node / "max_freq"
            if not cur.is_file():
                cur, top = node / "rate", node / "max_rate"
            with contextlib.suppress(OSError, ValueError):
                out[name] = {"cur_hz": int(cur.read_text()), "max_hz": int(top.read_text())}
                break
    if out:
        out["pinned"] = all(v["cur_hz"] >= v["max_hz"] for v in out.values() if isinstance(v, dict))
    return out


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for name in ("edgemm", "onnxruntime", "onnxruntime-gpu", "numpy", "tokenizers", "pillow", "torch", "transformers",
                 "optimum", "optimum-onnx", "onnx"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return versions


def fingerprint() -> dict[str, Any]:
    """Everything needed to tell two benchmark machines apart."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "hostname_hash": _short_hash(platform.node()),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "cpu": {**_cpuinfo(), "logical_cores": os.cpu_count(), "usable_cores": usable},
        "memory_mb": _memory_mb(),
        "gpus": _gpus(),
        "jetson": _jetson(),
        "versions": _versions(),
    }


def machine_id(fp: dict[str, Any]) -> str:
    """A short, filesystem-safe id like ``cpu-amd-epyc-2c`` or ``gpu-nvidia-h100``."""
    import re

    if fp.get("gpus"):
        name = fp["gpus"][0]["name"]
        base = f"gpu-{name}"
    else:
        base = f"cpu-{fp['cpu']['model']}-{fp['cpu']['usable_cores']}c"
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
    slug = re.sub(r"-(processor|cpu|with|radeon-graphics)(?=-|$)", "", slug)
    return slug[:48]


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]
