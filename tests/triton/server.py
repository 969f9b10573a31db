"""Start the ``tritonserver`` that the ``nvidia-pytriton`` wheel ships, on loopback, for tests.

The wheel carries the server binary, its libraries (``nvidia_pytriton.libs``) and the Python
backend with one stub per Python version. We do what pytriton itself does: copy the Python backend
into a private backend directory with the stub for *this* interpreter, put the libraries on
``LD_LIBRARY_PATH`` and this venv's ``bin`` first on ``PATH`` (the stub's embedded Python finds
its ``sys.prefix`` — and so this venv's site-packages, edgemm included — through ``python3`` on
``PATH``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServerPaths:
    binary: Path
    libs: Path
    python_backend: Path
    stub: Path


def find_server() -> tuple[ServerPaths | None, str]:
    """The shipped server's paths, or None and the reason it cannot run here."""
    try:
        import pytriton
    except ImportError:
        return None, "nvidia-pytriton is not installed (it ships tritonserver): pip install nvidia-pytriton"
    base = Path(pytriton.__file__).parent / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    paths = ServerPaths(
        binary=base / "bin" / "tritonserver",
        libs=base.parent.parent / "nvidia_pytriton.libs",
        python_backend=base / "backends" / "python",
        stub=base / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    for what, path in (("tritonserver", paths.binary), ("the Python backend", paths.python_backend),
                       (f"the Python {version} backend stub", paths.stub)):
        if not path.exists():
            return None, f"nvidia-pytriton ships no {what} here ({path})"
    if sys.platform != "linux":
        return None, "the tritonserver in nvidia-pytriton runs on Linux only"
    # The stub embeds libpython of this version; without it every Python model fails to load.
    ldd = shutil.which("ldd")
    if ldd:
        out = subprocess.run([ldd, str(paths.stub)], capture_output=True, text=True,
                             env={**os.environ, "LD_LIBRARY_PATH": str(paths.libs)}).stdout
        missing = [line.split()[0] for line in out.splitlines() if "not found" in line]
        if missing:
            return None, f"the Python backend stub cannot load {', '.join(missing)} (install libpython{version})"
    return paths, ""


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class TritonProcess:
    """A running tritonserver on 127.0.0.1 (explicit model control); :meth:`stop` ends it."""

    def __init__(self, paths: ServerPaths, repository: Path, workdir: Path, models: list[str]):
        workdir.mkdir(parents=True, exist_ok=True)
        backends = workdir / "backends"
        shutil.copytree(paths.python_backend, backends / "python",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(paths.stub, backends / "python" / "triton_python_backend_stub")
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.log_path = workdir / "tritonserver.log"
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(paths.libs), env.get("LD_LIBRARY_PATH")]))
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        # The source tree under test, even where edgemm is installed non-editable.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        command = [
            str(paths.binary),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            *[f"--load-model={m}" for m in models],
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--exit-timeout-secs=5",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            # A private shared-memory prefix: parallel test runs must not share regions.
            f"--backend-config=python,shm-region-prefix-name=edgemm{os.getpid()}_",
            "--log-verbose=0",
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open as long as the server runs
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                         cwd=workdir, start_new_session=True)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"tritonserver was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # Only this server's own process group (it was started in a new session).
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
