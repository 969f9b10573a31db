"""The model host: loads the bundle, warms it up, runs the known-answer canary, swaps bundles.

Readiness means: the predictor is loaded, warmed up, and reproduced the golden set's recorded
outputs on this machine. A newly committed bundle in a device store is loaded and canaried in
the background; only then does it replace the serving one, so requests never see a half-loaded
model and a bad bundle never serves.

Integrity while serving: every file of the served bundle is re-hashed (``verify_bundle``) on
SIGHUP and every ``verify_interval_s`` seconds, in a background thread (predictions go on). A
mismatch makes the server not ready at once, with the reason naming the file. A device store
then rolls back to its previous bundle (``DeviceStore.rollback``; when the service may not write
the store, as under the shipped unit, the previous bundle serves without switching the store's
pointers) once that bundle is verified and canaried; with none, or a plain directory, the server
stays not ready until a check finds the files restored, reloads them and canaries them again.
A store's active bundle that fails verification when the server starts rolls back the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgemm.bundle.verify import verify_bundle
from edgemm.errors import BackendUnavailableError, BundleError, EdgemmError, PathPermissionError
from edgemm.runtime.predictor import Predictor
from edgemm.serve.config import ServeConfig
from edgemm.serve.metrics import Metrics

log = logging.getLogger("edgemm.serve")

# Where ``Predictor.device`` reports work on the GPU (ORT CUDA, ORT TensorRT EP, native engines).
GPU_DEVICES = ("cuda", "tensorrt")

# CUDA errors after which the context is unusable: only a new process recovers.
_POISON_MARKERS = (
    "illegal memory access", "cudaerrorillegaladdress", "unspecified launch failure",
    "cudaerrorlaunchfailure", "device-side assert", "cuda error: an illegal", "cudaerrorecc",
    "uncorrectable ecc", "cudaerrordevicesunavailable", "gpu has fallen off the bus", "cudaerrorassert",
    "cublas_status_execution_failed", "cudnn_status_execution_failed", "cudaerrormisalignedaddress",
)


def poisons_gpu(error: BaseException, device: str) -> bool:
    """Whether ``error`` on ``device`` leaves the CUDA context unusable (restart the process).

    Args:
        error: The engine's own exception (the ``__cause__`` of a :class:`RuntimeFailure`).
        device: Where the model ran (``Predictor.device``); only GPU devices can be poisoned.

    Returns:
        True for an illegal address, a launch failure, an ECC error and the like on a GPU.
    """
    if device not in GPU_DEVICES:
        return False
    text = f"{type(error).__name__}: {error}".lower()
    return any(marker in text for marker in _POISON_MARKERS)


@dataclass
class Loaded:
    """A predictor that passed warm-up and the canary, and where it came from.

    Attributes:
        predictor: The loaded, warmed-up predictor.
        source: The bundle directory.
        version: The store's version of it (``None`` for a plain directory).
        canary: The golden-set report of its canary.
        loaded_at: ``time.time()`` when it was loaded.
    """

    predictor: Predictor
    source: Path
    version: str | None
    canary: dict[str, Any]
    loaded_at: float = field(default_factory=time.time)


class ModelHost:
    """Owns the serving predictor; see the module docstring.

    Args:
        config: The server configuration.
        metrics: Where reloads are counted.
    """

    def __init__(self, config: ServeConfig, metrics: Metrics):
        self.config = config
        self.metrics = metrics
        self.current: Loaded | None = None
        self.not_ready_reason: str | None = "starting: loading the bundle"
        self._failed_sources: set[Path] = set()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        # Integrity: why serving stopped when the bundle's files are at fault (None otherwise),
        # the background checker, and what wakes it early (SIGHUP).
        self.bundle_fault: str | None = None
        self._checker: threading.Thread | None = None
        self._wake = threading.Event()
        metrics.watch("edgemm_integrity_failed", lambda: float(self.bundle_fault is not None))
        # One load at a time: the watcher (or SIGHUP) must not load the bundle that the initial
        # load is still loading and then "swap" to it a second time.
        self._loading = threading.Lock()

    # -- loading ------------------------------------------------------------------------

    def _source(self) -> tuple[Path, str | None]:
        if self.config.bundle is not None:
            return Path(self.config.bundle), None
        from edgemm.deploy.store import DeviceStore

        active = DeviceStore(self.config.store).active()
        if active is None:
            raise EdgemmError("The device store has no active bundle.",
                              hint="Install one: edgemm install ARCHIVE --store DIR --trusted-key KEY.")
        return active.bundle, active.version

    def prepare(self, source: Path, version: str | None) -> Loaded:
        """Load and canary (which warms it up) a bundle without touching the serving one.

        Args:
            source: The bundle directory.
            version: Its store version, if any.

        Returns:
            The loaded bundle, ready to serve.

        Raises:
            EdgemmError: Invalid bundle, device policy not met, or the canary failed.
        """
        policy = self.config.device_policy
        predictor = Predictor.load(source, device=self.config.device, artifact=self.config.artifact,
                                   threads=self.config.threads,
                                   allow_cpu_fallback=policy == "allow_cpu")
        if policy == "require_gpu" and (predictor.device not in GPU_DEVICES or predictor.degraded):
            predictor.close()
            raise BackendUnavailableError(
                f"Device policy require_gpu: the model runs on {predictor.device}"
                + (f" ({predictor.degraded})" if predictor.degraded else "") + ".",
                hint="Install onnxruntime-gpu and its CUDA libraries, or serve with --device-policy allow_cpu.")
        # The canary is also the warm-up: its run allocates the arenas and picks the kernels
        # before the first request arrives.
        try:
            report = predictor.check_golden()
        except EdgemmError:
            predictor.close()
            raise
        return Loaded(predictor, source, version, report)

    def load_initial(self) -> None:
        """Load the configured bundle; on failure stay alive and not ready, with the reason.

        A store's active bundle whose files are wrong rolls back to the previous one.
        """
        with self._loading:
            self._load_configured()

    def _load_configured(self) -> None:
        source: Path | None = None
        try:
            source, version = self._source()
            loaded = self.prepare(source, version)
        except EdgemmError as exc:
            self.not_ready_reason = _reason(exc)
            log.error("not ready: %s", self.not_ready_reason)
            if isinstance(exc, BundleError) and source is not None:
                self.bundle_fault = self.not_ready_reason
                self._roll_back(source)
            return
        self._serve(loaded, "serving")

    def _serve(self, loaded: Loaded, what: str) -> bool:
        if self._stop.is_set():  # withdrawn or shutting down while it loaded
            loaded.predictor.close()
            return False
        # One reference assignment: the batcher reads ``current`` once per batch, so a batch
        # in flight finishes on the old predictor and the next one runs on the new.
        self.current = loaded
        self.not_ready_reason = None
        self.bundle_fault = None
        self._log_serving(what)
        return True

    def _log_serving(self, what: str) -> None:
        cur = self.current
        assert cur is not None
        log.info("%s %s (artifact %s on %s%s)", what, cur.source, cur.predictor.artifact.name,
                 cur.predictor.device, f", degraded: {cur.predictor.degraded}" if cur.predictor.degraded else "")

    # -- hot swap ----------------------------------------------------------------------

    def check_for_update(self) -> bool:
        """Swap to the store's active bundle if it changed and passes its canary.

        Returns:
            Whether a new bundle now serves.
        """
        if self.config.store is None or self._stop.is_set():
            return False
        with self._loading:
            return self._swap_if_changed()

    def _swap_if_changed(self) -> bool:
        try:
            source, version = self._source()
        except EdgemmError as exc:
            log.warning("store: %s", exc.message)
            return False
        if (self.current is not None and source == self.current.source) or source in self._failed_sources:
            return False
        try:
            loaded = self.prepare(source, version)
        except EdgemmError as exc:
            # Remembered so a bad bundle is not retried (and re-logged) every interval.
            self._failed_sources.add(source)
            self.metrics.count_reload("failed")
            log.error("keeping the current bundle: %s failed to load: %s", source, exc.message)
            return False
        if not self._serve(loaded, "swapped to"):
            return False
        self.metrics.count_reload("ok")
        return True

    def start_watcher(self) -> None:
        """Poll the store for a newly committed bundle (no-op when serving a directory)."""
        if self.config.store is None or self._watcher is not None:
            return

        def loop() -> None:
            while not self._stop.wait(self.config.reload_interval_s):
                try:
                    self.check_for_update()
                except Exception:  # a bug here must not kill the watcher and freeze updates
                    log.exception("bundle watcher failed")

        self._watcher = threading.Thread(target=loop, name="edgemm-bundle-watcher", daemon=True)
        self._watcher.start()

    # -- integrity while serving ---------------------------------------------------------

    def request_check(self) -> None:
        """Ask for a check now (SIGHUP): the store's active bundle, then the served files."""
        self._wake.set()

    def start_checker(self) -> None:
        """Run :meth:`verify` every ``verify_interval_s`` seconds (never when 0) and on
        :meth:`request_check`, which also looks for a newly committed store bundle first."""
        if self._checker is not None:
            return
        interval = self.config.verify_interval_s or None

        def loop() -> None:
            while True:
                requested = self._wake.wait(interval)
                if self._stop.is_set():
                    return
                self._wake.clear()
                try:
                    if requested:
                        self.check_for_update()
                    self.verify()
                except Exception:  # a bug here must not end the checks for good
                    log.exception("integrity check failed")

        self._checker = threading.Thread(target=loop, name="edgemm-integrity-checker", daemon=True)
        self._checker.start()

    def verify(self) -> bool:
        """Re-hash every file of the served bundle and act on the result (see the module docstring).

        With nothing loaded because the bundle's files were wrong, the load is tried again.

        Returns:
            Whether the server is ready afterwards.
        """
        with self._loading:
            if self._stop.is_set():
                return False
            cur = self.current
            if cur is None:
                if self.bundle_fault is not None:
                    self._load_configured()
                return self.ready
            try:
                verify_bundle(cur.source)
            except (EdgemmError, OSError) as exc:
                self.metrics.count_integrity_check("failed")
                message = exc.message if isinstance(exc, EdgemmError) else f"cannot read it ({exc})"
                # Not ready first: not one more request reaches a model whose files changed.
                self.bundle_fault = self.not_ready_reason = f"The bundle's files changed while serving: {message}"
                log.error("%s failed re-verification: %s", cur.source, message)
                if self.config.store is not None:
                    self._roll_back(cur.source)
                return self.ready
            self.metrics.count_integrity_check("ok")
            if self.bundle_fault is not None:  # the files were restored: load them again
                try:
                    self._serve(self.prepare(cur.source, cur.version), "files verified again, serving")
                except EdgemmError as exc:
                    self.not_ready_reason = self.bundle_fault = _reason(exc)
                    log.error("still not ready: %s", self.not_ready_reason)
            return self.ready

    def _roll_back(self, bad: Path) -> None:
        """Serve the store's previous bundle instead of ``bad``, if there is one that verifies."""
        if self.config.store is None:
            return
        from edgemm.deploy.store import DeviceStore

        store = DeviceStore(self.config.store)
        try:
            previous = store.previous()
        except EdgemmError as exc:
            log.error("cannot roll back: %s", exc.message)
            return
        if previous is None or previous.bundle == bad:
            log.error("no previous bundle to roll back to: staying not ready")
            return
        self._failed_sources.add(bad)  # the store watcher must not load it again
        try:
            store.rollback()  # re-hashes the previous bundle, then switches the store's pointers
        except (OSError, PathPermissionError) as exc:  # a read-only store, as the shipped unit mounts it
            log.warning("cannot switch the store's pointers (%s): serving version %s without switching them; "
                        "to make it stick, run: edgemm install --store %s --rollback",
                        exc.message if isinstance(exc, EdgemmError) else exc, previous.version, store.root)
        except EdgemmError as exc:
            log.error("cannot roll back to version %s: %s", previous.version, exc.message)
            return
        try:
            loaded = self.prepare(previous.bundle, previous.version)
        except EdgemmError as exc:
            log.error("cannot roll back to version %s: %s", previous.version, exc.message)
            return
        if self._serve(loaded, f"rolled back to version {previous.version}:"):
            self.metrics.count_reload("rollback")

    def withdraw(self, reason: str) -> None:
        """Stop serving for good (the process is about to exit): not ready, no more swaps.

        Args:
            reason: Why, as readiness reports it.
        """
        self.not_ready_reason = reason
        self.stop()

    def stop(self) -> None:
        """Stop the bundle watcher, the integrity checker and any later swap."""
        self._stop.set()
        self._wake.set()

    # -- state ------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether a model passed its canary and serves (what ``/v1/health/ready`` answers)."""
        return self.current is not None and self.not_ready_reason is None

    def info(self) -> dict[str, str]:
        """Labels for the ``edgemm_model_info`` metric.

        Returns:
            ``name``, ``artifact``, ``device``, ``version`` and ``policy``; empty while nothing is loaded.
        """
        cur = self.current
        if cur is None:
            return {}
        return {"name": cur.predictor.manifest.name, "artifact": cur.predictor.artifact.name,
                "device": cur.predictor.device, "version": cur.version or "",
                "policy": self.config.device_policy}


def _reason(error: EdgemmError) -> str:
    """Why the server is not ready, as readiness reports it."""
    return error.message + (f" Hint: {error.hint}" if error.hint else "")
