"""TensorRT engine compatibility: the record a bundle keeps per engine, and the check against this host.

A serialized TensorRT engine is compiled GPU code: by default it runs only with the exact
TensorRT version, on the same compute capability (same GPU model recommended), with the same
CUDA major version and — on a Jetson — the same L4T release it was built with. This module
decides, *before anything is deserialized*, whether an engine artifact of a verified bundle can
run here, and says why not. It never imports TensorRT unless asked to probe for it, and it is
torch-free (it lives on the edge side).

Decisions:

``ok``           run it.
``stale``        same hardware, different software (TensorRT / CUDA / L4T upgraded): rebuild on
                 request with ``edgemm build-engine BUNDLE --rebuild``; never rebuilt silently.
``mismatch``     different hardware (compute capability, platform, DLA): rebuild on the target.
``refused``      the engine is outside the default policy (version-compatible engines, which carry
                 a lean runtime as executable code; serialized plugin libraries), or its record is
                 incomplete.
``unavailable``  this machine cannot run any engine (no TensorRT, no CUDA GPU).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import platform
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgemm.bundle.manifest import ENGINE_KIND

__all__ = ["ENGINE_KIND", "CompatPolicy", "EngineCompat", "HostInfo", "check_engine", "probe_host"]

STATUSES = ("ok", "stale", "mismatch", "refused", "unavailable")
HARDWARE_COMPAT_LEVELS = ("none", "ampere_plus", "same_compute_capability")
# L4T (Jetson Linux) release → JetPack. JetPack 6.1 and 6.2 share L4T R36.4 (6.2 is 36.4.3+).
_JETPACK_FOR_L4T = {(36, 3): "6.0", (36, 2): "6.0 DP", (35, 6): "5.1.4", (35, 5): "5.1.3", (35, 4): "5.1.2",
                    (35, 3): "5.1.1"}
_TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11")


@dataclass(frozen=True)
class HostInfo:
    """What this machine offers an engine. ``None`` means absent (or not probed)."""

    tensorrt: str | None = None
    compute_capability: str | None = None
    cuda: str | None = None
    l4t: str | None = None
    jetpack: str | None = None
    platform: str = field(default_factory=lambda: _platform_tag())
    dla_cores: int | None = None
    gpu: str | None = None
    problems: tuple[str, ...] = ()

    @property
    def is_jetson(self) -> bool:
        """Whether this machine is a Jetson (an L4T release was found)."""
        return self.l4t is not None

    def to_dict(self) -> dict[str, Any]:
        """The facts as a JSON-ready dict (reports, engine records)."""
        return asdict(self)


@dataclass(frozen=True)
class CompatPolicy:
    """What the operator accepts beyond the safe default (both off by default)."""

    allow_version_compatible: bool = False
    allow_plugins: bool = False


@dataclass(frozen=True)
class EngineCompat:
    """The decision for one engine on one host."""

    status: str
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """The engine may be deserialized on this machine."""
        return self.status == "ok"

    @property
    def rebuildable(self) -> bool:
        """A rebuild from the bundle's ONNX on this machine would fix it."""
        return self.status in ("stale", "mismatch")

    def summary(self) -> str:
        """One line: status and reasons."""
        return self.status + (": " + "; ".join(self.reasons) if self.reasons else "")

    def to_dict(self) -> dict[str, Any]:
        """The decision as a JSON-ready dict (``inspect``, ``verify``)."""
        return {"status": self.status, "reasons": list(self.reasons), "warnings": list(self.warnings)}


# -- probing this machine ----------------------------------------------------------------------


def _platform_tag() -> str:
    return f"{sys.platform}-{platform.machine().lower()}"


def parse_l4t_release(text: str) -> str | None:
    """``/etc/nv_tegra_release`` → ``"36.4.0"`` (``# R36 (release), REVISION: 4.0, ...``)."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def jetpack_for_l4t(l4t: str | None) -> str | None:
    """The JetPack release that ships L4T ``l4t`` (None when unknown)."""
    v = _version_tuple(l4t)
    if v[:2] == (36, 4):  # JetPack 6.1 and 6.2 share R36.4; 6.2 starts at 36.4.3
        return "6.2" if v[2:3] >= (3,) else "6.1"
    return _JETPACK_FOR_L4T.get(v[:2])


def tensorrt_version(*, import_module: bool = True) -> str | None:
    """The installed TensorRT version, or None.

    pip wheels are found by metadata (cheap); JetPack installs TensorRT's Python bindings from
    apt without metadata, so the module is imported as a last resort (``import_module``).
    """
    for dist in _TENSORRT_DISTRIBUTIONS:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    if not import_module:
        return None
    try:
        return str(importlib.import_module("tensorrt").__version__)
    except Exception:  # ImportError, or a broken install raising OSError from its loader
        return None


def probe_host(*, import_tensorrt: bool = True) -> HostInfo:
    """Probe TensorRT, CUDA and Jetson facts of this machine (never raises)."""
    from edgemm.runtime import cuda

    problems: list[str] = []
    trt_version = tensorrt_version(import_module=import_tensorrt)
    if trt_version is None:
        problems.append("TensorRT is not installed")
    cc = cuda_version = None
    try:
        if cuda.device_count() > 0:
            cc, cuda_version = cuda.compute_capability(0), cuda.runtime_version()
        else:
            problems.append("no CUDA device is visible")
    except Exception as exc:  # BackendUnavailableError / RuntimeFailure: report, never raise
        problems.append(f"no usable CUDA runtime ({getattr(exc, 'message', exc)})")
    l4t = None
    release = Path("/etc/nv_tegra_release")
    if release.is_file():
        l4t = parse_l4t_release(release.read_text(errors="ignore"))
    dla = None
    if trt_version is not None and import_tensorrt and l4t is not None:
        dla = _dla_cores()
    return HostInfo(tensorrt=trt_version, compute_capability=cc, cuda=cuda_version, l4t=l4t,
                    jetpack=jetpack_for_l4t(l4t), dla_cores=dla, problems=tuple(problems))


def _dla_cores() -> int | None:
    try:
        trt = importlib.import_module("tensorrt")
        return int(trt.Runtime(trt.Logger(trt.Logger.ERROR)).num_DLA_cores)
    except Exception:
        return None


def host_record(host: HostInfo) -> dict[str, Any]:
    """The host part of an engine's ``requirements`` (what it was built on)."""
    return {"tensorrt": host.tensorrt, "compute_capability": host.compute_capability, "cuda": host.cuda,
            "l4t": host.l4t, "jetpack": host.jetpack, "platform": host.platform, "gpu": host.gpu}


# -- the decision ------------------------------------------------------------------------------


def _version_tuple(text: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text or ""))


def check_engine(requirements: dict[str, Any], host: HostInfo, policy: CompatPolicy | None = None) -> EngineCompat:
    """Decide whether an engine with this compatibility record can be deserialized on ``host``.

    Args:
        requirements: The engine artifact's ``requirements`` from the manifest.
        host: This machine (:func:`probe_host`).
        policy: What to accept beyond the default (version-compatible engines, plugins).

    Returns:
        An :class:`EngineCompat`; ``status`` is one of :data:`STATUSES`.
    """
    policy = policy or CompatPolicy()
    built_with = requirements.get("built_with") or {}
    missing = [k for k in ("tensorrt", "compute_capability") if not isinstance(requirements.get(k), str)]
    if missing or not isinstance(built_with, dict):
        return EngineCompat("refused", (f"incomplete compatibility record (missing {', '.join(missing) or 'built_with'})",))

    # 1. Policy: what this runtime never deserializes by default, whatever the host.
    refused = []
    if built_with.get("version_compatible") and not policy.allow_version_compatible:
        refused.append("version-compatible engine: it embeds a lean TensorRT runtime that would be loaded as "
                       "executable code from the bundle (allow it explicitly to run it)")
    plugins = list(built_with.get("plugins") or []) + list(built_with.get("serialized_plugin_libraries") or [])
    if plugins and not policy.allow_plugins:
        refused.append(f"engine needs plugin libraries {plugins} (plugins run arbitrary native code; allow them explicitly)")
    if refused:
        return EngineCompat("refused", tuple(refused))

    # 2. Can this machine run any engine at all?
    if host.tensorrt is None or host.compute_capability is None:
        return EngineCompat("unavailable", host.problems or ("TensorRT or a CUDA GPU is missing here",))

    mismatch: list[str] = []
    stale: list[str] = []
    warnings: list[str] = []
    level = built_with.get("hardware_compatibility", "none")
    built_cc, here_cc = requirements["compute_capability"], host.compute_capability

    # 3. Hardware.
    if requirements.get("platform") and requirements["platform"] != host.platform:
        mismatch.append(f"built on {requirements['platform']}, this is {host.platform}")
    if requirements.get("l4t") and not host.is_jetson:
        mismatch.append(f"built on a Jetson (L4T R{requirements['l4t']}); this machine is not a Jetson")
    elif not requirements.get("l4t") and host.is_jetson:
        mismatch.append("built on a desktop/server GPU; this machine is a Jetson")
    if level == "ampere_plus":
        if _version_tuple(here_cc) < (8, 0):
            mismatch.append(f"hardware-compatible (Ampere+) engine, this GPU is compute capability {here_cc}")
        if host.is_jetson:
            mismatch.append("hardware-compatible engines are not supported on Jetson")
    elif built_cc != here_cc:
        mismatch.append(f"built for compute capability {built_cc}, this GPU is {here_cc}")
    dla_core = built_with.get("dla_core")
    if dla_core is not None and (host.dla_cores is None or host.dla_cores <= int(dla_core)):
        have = "no DLA" if not host.dla_cores else f"{host.dla_cores} DLA core(s)"
        mismatch.append(f"engine runs on DLA core {dla_core}; this device has {have}")
    if requirements.get("gpu") and host.gpu and requirements["gpu"] != host.gpu and level == "none":
        warnings.append(f"built on {requirements['gpu']}, running on {host.gpu}: same compute capability, "
                        "but TensorRT tunes tactics per GPU model; rebuild for best speed")

    # 4. Software.
    built_trt, here_trt = _version_tuple(requirements["tensorrt"]), _version_tuple(host.tensorrt)
    if built_with.get("version_compatible"):
        if here_trt[:1] != built_trt[:1] or here_trt < built_trt:
            stale.append(f"version-compatible engine from TensorRT {requirements['tensorrt']} needs the same major "
                         f"version, at least as new; this machine has {host.tensorrt}")
    elif here_trt[:3] != built_trt[:3]:
        stale.append(f"built with TensorRT {requirements['tensorrt']}, this machine has {host.tensorrt}")
    if requirements.get("cuda") and host.cuda and _version_tuple(requirements["cuda"])[:1] != _version_tuple(host.cuda)[:1]:
        stale.append(f"built with CUDA {requirements['cuda']}, this machine has CUDA {host.cuda}")
    if requirements.get("l4t") and host.is_jetson and \
            _version_tuple(requirements["l4t"])[:2] != _version_tuple(host.l4t)[:2]:
        stale.append(f"built on L4T R{requirements['l4t']} (JetPack {requirements.get('jetpack') or '?'}), "
                     f"this is L4T R{host.l4t} (JetPack {host.jetpack or '?'})")

    if mismatch:
        return EngineCompat("mismatch", tuple(mismatch + stale), tuple(warnings))
    if stale:
        return EngineCompat("stale", tuple(stale), tuple(warnings))
    return EngineCompat("ok", (), tuple(warnings))


def rebuild_hint(bundle: str | Path, artifact: str) -> str:
    """What to run to rebuild a stale or mismatched engine (on the target device)."""
    return f"On the target device: edgemm build-engine {bundle} --rebuild --artifact {artifact}"


def cache_root() -> Path:
    """``$EDGEMM_CACHE`` or ``~/.cache/edgemm``: machine-local caches (never inside a bundle)."""
    import os

    return Path(os.environ.get("EDGEMM_CACHE", Path.home() / ".cache" / "edgemm"))


def bundle_cache_dir(bundle: str | Path) -> Path:
    """This machine's cache directory for one bundle (keyed by its manifest's sha256).

    A bundle is read-only and every file in it is hashed, so engine and timing caches of the ORT
    TensorRT EP live here instead; a re-exported bundle gets a fresh directory.
    """
    import hashlib

    from edgemm.bundle.manifest import MANIFEST_NAME

    digest = hashlib.sha256((Path(bundle) / MANIFEST_NAME).read_bytes()).hexdigest()[:16]
    return cache_root() / "bundles" / digest
