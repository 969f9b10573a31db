"""Typed errors: every failure a user can cause carries an exit code, a stable code and a hint.

The CLI prints ``Error: <message>`` and ``Hint: <hint>`` for these and exits with ``exit_code``;
the HTTP API maps ``code`` to a stable machine-readable error code. Anything that is *not* an
``EdgemmError`` is a bug in edgemm and keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_MISSING_DEPENDENCY = 3
EXIT_CHECK_FAILED = 4


class EdgemmError(Exception):
    """Base class of every error a user can cause.

    Args:
        message: What went wrong, in one sentence.
        hint: What to do about it (optional).
        details: Structured facts for ``--json`` output and logs (optional).
    """

    exit_code: int = EXIT_FAILED
    code: str = "E_FAILED"

    def __init__(self, message: str, *, hint: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details or {}

    def to_dict(self) -> dict:
        """The error as a JSON-serialisable dict (``code``, ``message``, ``hint``, ``details``)."""
        return {"code": self.code, "message": self.message, "hint": self.hint, "details": self.details}


# --- usage and configuration (exit 2) ------------------------------------------------------


class UsageError(EdgemmError):
    """A command-line option or configuration value is invalid."""

    exit_code = EXIT_USAGE
    code = "E_USAGE"


class InputPathError(UsageError):
    """A path given by the user does not exist or is of the wrong kind."""

    code = "E_PATH"


class PathPermissionError(InputPathError):
    """The operating system refused access to a path (EACCES, EPERM): owner, mode or policy."""

    code = "E_PERMISSION"


class ReadOnlyFilesystemError(PathPermissionError):
    """A path to be written lies on a read-only filesystem (EROFS)."""

    code = "E_READ_ONLY"


class AddressError(UsageError):
    """The server cannot listen on the address it was given (unknown, not local, privileged)."""

    code = "E_ADDRESS"


class AddressInUseError(AddressError):
    """Another process already listens on the address and port (EADDRINUSE)."""

    code = "E_ADDRESS_IN_USE"


class UnsupportedModelError(UsageError):
    """The checkpoint's architecture, encoder or fusion type is not supported."""

    code = "E_UNSUPPORTED_MODEL"


class UnsafeCheckpointError(UsageError):
    """A pickle-based checkpoint was given without ``--allow-pickle``."""

    code = "E_UNSAFE_CHECKPOINT"


class RecipeError(UsageError):
    """An export recipe (``export/*.toml``) is missing or malformed."""

    code = "E_RECIPE"


class InvalidInputError(UsageError):
    """A prediction input (text, image, audio) is malformed or outside the bundle's limits."""

    code = "E_INVALID_INPUT"


class MissingModalityError(InvalidInputError):
    """A request lacks a modality that the model requires."""

    code = "E_MISSING_MODALITY"


class InputTooLargeError(InvalidInputError):
    """An input exceeds a size cap (bytes, pixels, characters, seconds)."""

    code = "E_INPUT_TOO_LARGE"


class UnsupportedMediaError(InvalidInputError):
    """An image or audio payload is in a format that is not allowed or cannot be decoded."""

    code = "E_UNSUPPORTED_MEDIA"


# --- failures (exit 1) ---------------------------------------------------------------------


class CheckpointError(EdgemmError):
    """A checkpoint exists but cannot be read (corrupt safetensors, missing tensors ...)."""

    code = "E_CHECKPOINT"


class ExportError(EdgemmError):
    """The torch → ONNX conversion or the ONNX checker failed."""

    code = "E_EXPORT"


class BundleError(EdgemmError):
    """A bundle is invalid: unknown or missing files, links, escaping paths, bad hashes."""

    code = "E_BUNDLE"


class BundleExistsError(BundleError):
    """The output bundle directory already exists."""

    exit_code = EXIT_USAGE
    code = "E_BUNDLE_EXISTS"


class UnknownArtifactError(BundleError):
    """An artifact asked for by name (``--artifact``) is not in the bundle; the hint lists the valid names."""

    exit_code = EXIT_USAGE
    code = "E_UNKNOWN_ARTIFACT"


class OutputMismatchError(BundleError):
    """The model's outputs do not fit the bundle's postprocessing: a label list of the wrong length,
    a missing output, or values that are not the probabilities the postprocessing type expects."""

    code = "E_OUTPUT_MISMATCH"


class ArchiveError(BundleError):
    """A ``.edgemm`` archive is malformed, unsigned, wrongly signed or unsafe to extract."""

    code = "E_ARCHIVE"


class SignatureError(ArchiveError):
    """An archive's Ed25519 signature does not verify against the trusted public key."""

    exit_code = EXIT_CHECK_FAILED
    code = "E_SIGNATURE"


class DowngradeError(ArchiveError):
    """An archive is not newer than the bundle the device already runs."""

    exit_code = EXIT_CHECK_FAILED
    code = "E_DOWNGRADE"


class StorageError(EdgemmError):
    """The filesystem failed an operation that was otherwise valid (I/O error, too many open files)."""

    code = "E_STORAGE"


class DiskFullError(StorageError):
    """No space (or no inodes, or no quota) is left for a write, or too little for one to begin."""

    code = "E_DISK_FULL"


class FileSizeLimitError(StorageError):
    """A write would exceed the largest file this process or filesystem allows (EFBIG)."""

    code = "E_FILE_TOO_LARGE"


class RuntimeFailure(EdgemmError):
    """An inference backend failed while running a model."""

    code = "E_RUNTIME"


# --- missing dependency or backend (exit 3) ------------------------------------------------


class MissingDependencyError(EdgemmError):
    """An optional dependency is not installed; the hint names the extra to install."""

    exit_code = EXIT_MISSING_DEPENDENCY
    code = "E_MISSING_DEPENDENCY"


class BackendUnavailableError(EdgemmError):
    """The requested device or execution provider cannot be used on this machine."""

    exit_code = EXIT_MISSING_DEPENDENCY
    code = "E_BACKEND_UNAVAILABLE"


class DeviceFallbackError(BackendUnavailableError):
    """A session asked for a GPU provider but ONNX Runtime silently placed it on the CPU."""

    code = "E_DEVICE_FALLBACK"


# --- a check failed (exit 4) ---------------------------------------------------------------


class CheckFailedError(EdgemmError):
    """A quality gate failed (parity, accuracy budget, latency budget, golden set)."""

    exit_code = EXIT_CHECK_FAILED
    code = "E_CHECK_FAILED"


class ParityError(CheckFailedError):
    """ONNX outputs differ from PyTorch beyond tolerance; ``details['failures']`` lists all."""

    code = "E_PARITY"


class BundleIntegrityError(BundleError, CheckFailedError):
    """A bundle file's bytes differ from the size or sha256 its manifest records (exit 4).

    Still a :class:`BundleError` (the bundle is refused), but the integrity check is a check that
    failed, not a malformed bundle: ``edgemm verify`` exits 4 and names the file.
    """

    exit_code = EXIT_CHECK_FAILED
    code = "E_BUNDLE_INTEGRITY"


class GoldenSetError(CheckFailedError):
    """An artifact no longer reproduces the bundle's golden outputs on this machine."""

    code = "E_GOLDEN"


class EngineMismatchError(CheckFailedError):
    """A TensorRT engine in the bundle does not fit this machine (or the engine policy refuses it)."""

    code = "E_ENGINE_MISMATCH"


class DisplayError(UsageError):
    """Display texts (``edgemm export --display``, a checkpoint's ``display.json``) are invalid:
    a label left out, an unknown key, a string too long or not plain text (exit 2)."""

    code = "E_DISPLAY"
