"""Writes the models of a repository into its staging directory.

One :class:`ModelWriter` per repository: it creates each model's directory, copies the bundle
files a model needs (checking every copy's sha256 against the manifest), builds and renders each
``config.pbtxt`` through Triton's ``ModelConfig`` (:mod:`edgemm.triton.pbtxt`) and keeps every
config and report entry for the cross-model checks and ``edgemm-triton.json``.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from edgemm.bundle.manifest import MANIFEST_NAME
from edgemm.errors import BundleError, UsageError
from edgemm.triton.naming import check_name
from edgemm.triton.pbtxt import build_config, render
from edgemm.triton.plan import Plan
from edgemm.triton.provenance import config_header, python_shim
from edgemm.triton.python_models import BUNDLE_DIR

__all__ = ["ModelWriter"]


class ModelWriter:
    """Model directories, bundle copies and configs of one repository being staged.

    Attributes:
        plan: The repository plan.
        staging: The staging directory (renamed into place when everything is written).
        configs: Every written ``ModelConfig`` message, by model name.
        models: Every model's report entry (``role`` and details), by model name, in write order.
    """

    def __init__(self, plan: Plan, staging: Path):
        """Start writing into ``staging`` (an empty directory).

        Args:
            plan: The repository plan.
            staging: The staging directory.
        """
        self.plan = plan
        self.staging = staging
        self.configs: dict[str, Any] = {}
        self.models: dict[str, dict[str, Any]] = {}

    def model_dir(self, name: str) -> Path:
        """Create the directory of model ``name`` with its (empty) version directory.

        Args:
            name: The model's name.

        Returns:
            The model's directory.

        Raises:
            UsageError: Triton refuses the name, or two models would share it.
        """
        check_name(name, hint="Pass --name with a simpler name.")
        path = self.staging / name
        if path.exists():
            raise UsageError(f"Two models would be called {name!r}.", hint="Rename an artifact or pass --name.")
        (path / self.plan.version).mkdir(parents=True)
        return path

    def python_model_dir(self, name: str, role: str, files: list[str]) -> Path:
        """Create a Python-backend model: its directory, the bundle ``files`` it reads and its ``model.py``.

        Args:
            name: The model's name.
            role: A role of :func:`edgemm.triton.python_models.model_class`.
            files: Bundle-relative paths the model reads (``edgemm.json`` always goes along).

        Returns:
            The model's directory.

        Raises:
            UsageError: Triton refuses the name, or two models would share it.
            BundleError: A bundle file changed while it was copied.
        """
        model_dir = self.model_dir(name)
        version_dir = model_dir / self.plan.version
        target = version_dir / BUNDLE_DIR
        target.mkdir(parents=True)
        shutil.copyfile(self.plan.root / MANIFEST_NAME, target / MANIFEST_NAME)
        for rel in files:
            self.copy(rel, target / rel)
        (version_dir / "model.py").write_text(python_shim(self.plan, role), encoding="utf-8")
        return model_dir

    def copy(self, rel: str, dest: Path) -> None:
        """Copy a bundle file and check the copy's sha256 against the manifest.

        Args:
            rel: The bundle-relative path.
            dest: Where the copy goes.

        Raises:
            BundleError: The file changed since the bundle was verified.
        """
        entry = next(e for e in self.plan.manifest.files if e.path == rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(self.plan.root / rel, "rb") as src, open(dest, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                dst.write(block)
        if digest.hexdigest() != entry.sha256:
            raise BundleError(f"{rel} changed while it was copied.", hint="Do not modify the bundle during export.")

    def labels(self, model_dir: Path) -> None:
        """Write ``labels.txt`` (one bundle label a line) for Triton's classification extension.

        Args:
            model_dir: The model's directory.
        """
        text = "".join(f"{label}\n" for label in self.plan.manifest.labels)
        (model_dir / "labels.txt").write_text(text, encoding="utf-8")

    def save(self, model_dir: Path, config: dict[str, Any], *, role: str, **info: Any) -> None:
        """Build the model's ``ModelConfig``, write its ``config.pbtxt`` and record it.

        Args:
            model_dir: The model's directory (its name is the model's name).
            config: The config in protobuf's JSON mapping of ``ModelConfig``.
            role: What the model does, for the header comment and the report.
            **info: More report details (artifact, backend, steps …).

        Raises:
            ModelConfigError: The config is not a valid ``ModelConfig`` (a bug; nothing is published).
        """
        message = build_config(config, name=model_dir.name)
        (model_dir / "config.pbtxt").write_text(render(message, header=config_header(self.plan, role)),
                                                encoding="utf-8")
        self.configs[model_dir.name] = message
        self.models[model_dir.name] = {"role": role, **info}
