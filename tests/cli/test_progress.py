"""Progress on a terminal, silence off one, and -v / -q that change what stderr shows.

The terminal is a real pseudo-terminal (``os.openpty``): the CLI runs in a subprocess with its
stderr on the pty's slave end and its stdout on a pipe, as in ``edgemm export … | tee``.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest
from click.testing import CliRunner

from edgemm import progress
from edgemm.cli import cli, output
from tests.conftest import REPO, run_edge

SPINNER = set("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _on_terminal(*args: str, columns: int = 100, timeout: float = 300) -> tuple[int, str, str]:
    """Run ``python -m edgemm *args`` with stderr on a pseudo-terminal ``columns`` wide.

    Returns:
        (exit code, stdout, everything the terminal received on stderr).
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(REPO)}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen([sys.executable, "-m", "edgemm", *args], stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, cwd=REPO, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    stdout: list[bytes] = []
    reader = threading.Thread(target=lambda: stdout.append(proc.stdout.read()), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed its end
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    code = proc.wait(timeout=30)
    reader.join(timeout=30)
    return code, b"".join(stdout).decode(), b"".join(chunks).decode(errors="replace")


def _frames(terminal: str) -> list[str]:
    """Every state the terminal's current line went through (split at CR / LF, escapes removed)."""
    return [ANSI.sub("", part) for part in re.split(r"[\r\n]+", terminal)]


def _display_width(text: str) -> int:
    return progress._width(text)


# -- the renderer, without a terminal ---------------------------------------------------------------


class _FakeTerminal(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


@pytest.fixture
def fake_terminal():
    stream = _FakeTerminal()
    progress.configure(enabled=True, stream=stream)
    yield stream
    progress.configure(enabled=False)


@pytest.mark.parametrize("width", [0, 1, 2, 5, 9, 12, 20, 33, 60, 200])
def test_a_line_never_outgrows_the_terminal(width):
    stack = [progress.Stage("Building precision variants"), progress.Stage("Variant int8-text 图像"),
             progress.Stage("held-out batches", total=45)]
    stack[2].done = 12
    for ascii_only in (False, True):
        line = progress.render(stack, width, spinner="|" if ascii_only else "⠋", ascii_only=ascii_only)
        assert _display_width(line) <= width, (width, line)
        assert ("\n" not in line) and ("\r" not in line)
    wide = progress.render(stack, 200)
    assert "Building precision variants › Variant int8-text 图像 › held-out batches 12/45 [" in wide
    # Narrow: the innermost label and the count survive longest.
    assert progress.render(stack, 30).endswith("held-out batches 12/45")


def test_log_records_clear_the_line_first(fake_terminal):
    handler = progress.ProgressHandler(fake_terminal)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("edgemm.test_progress")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with progress.stage("Quantizing int8"):
            for _ in progress.track(range(3), label="calibration batches"):
                logger.warning("a record in the middle")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = fake_terminal.getvalue()
    assert text.count("WARNING a record in the middle\n") == 3
    for line in text.split("\n"):
        last = line.split("\r")[-1]
        # Every record starts on a cleared line: never after a half-drawn bar.
        if "a record" in line:
            assert last.replace("\x1b[2K", "") == "WARNING a record in the middle", repr(line)
    assert "Quantizing int8 › calibration batches 0/3" in text
    assert text.endswith("\r\x1b[2K")  # the line is gone once the stage ended


def test_steps_replace_each_other_and_disabled_progress_writes_nothing(fake_terminal):
    with progress.steps():
        progress.step("Exporting to ONNX")
        progress.step("Checking parity")
        time.sleep(0.5)  # the spinner keeps turning on the step that replaced another
    text = fake_terminal.getvalue()
    assert "Exporting to ONNX" in text and text.count("Checking parity") >= 2 and text.endswith("\r\x1b[2K")
    assert not progress._renderer.stack

    quiet = _FakeTerminal()
    progress.configure(enabled=False, stream=quiet)
    with progress.stage("Nothing"):
        assert progress.track([1, 2], label="x") == [1, 2]  # the iterable itself: no cost when off
        progress.step("Nothing either")
    assert quiet.getvalue() == ""


def test_json_stdout_holds_only_the_document(capsys):
    with output.json_stdout():
        print("a library's chatter")
        output.document_stream().write('{"ok": true}\n')
    captured = capsys.readouterr()
    assert captured.out == '{"ok": true}\n'
    assert "a library's chatter" in captured.err


def test_a_callback_runs_once_a_module_is_imported(tmp_path, monkeypatch):
    (tmp_path / "edgemm_probe_mod.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    hooks = output._AfterImport()
    seen = []
    hooks.after("edgemm_probe_mod", lambda module: seen.append(module.VALUE))
    sys.meta_path.insert(0, hooks)
    try:
        import edgemm_probe_mod  # noqa: F401
    finally:
        sys.meta_path.remove(hooks)
        module = sys.modules.pop("edgemm_probe_mod", None)
    assert seen == [1]
    assert module is not None and not isinstance(module.__spec__.loader, output._ThenLoader)


def test_verbosity_levels():
    assert output.levels(0)["edgemm"] == logging.WARNING and output.levels(0)[""] == logging.ERROR
    assert output.levels(1)["edgemm"] == logging.INFO and output.levels(1)[""] == logging.WARNING
    assert output.levels(2)["edgemm"] == logging.DEBUG and output.levels(5)["edgemm"] == logging.DEBUG
    assert output.levels(-1)["edgemm"] == logging.ERROR
    assert output.levels(0, "serve")["edgemm.serve"] == logging.INFO  # a daemon's journal is its output
    assert "edgemm.serve" not in output.levels(-1, "serve")


def test_nncf_is_kept_off_stdout():
    # nncf's logger prints to stdout through its own handler (set up when nncf is imported).
    logger = logging.getLogger("nncf")
    logger.handlers, existing = [], list(logger.handlers)  # nncf's own, if an earlier test imported it
    own = logging.StreamHandler(sys.stdout)
    logger.addHandler(own)
    before = logger.propagate
    logger.propagate = False
    try:
        undo = output._tame_nncf(logging.ERROR)
        assert logger.handlers == [] and logger.propagate and logger.level == logging.ERROR
        undo()
        assert logger.handlers == [own] and logger.propagate is False
    finally:
        logger.handlers = existing
        logger.propagate = before
        logger.setLevel(logging.NOTSET)


# -- the command line ---------------------------------------------------------------------------


def test_export_shows_stages_on_a_terminal(tiny_ckpt, tmp_path):
    # stdout is a pipe holding the JSON document; stderr is the terminal, with -v's records too.
    code, stdout, terminal = _on_terminal("export", str(tiny_ckpt), "-o", str(tmp_path / "tty"), "--json", "-v")
    assert code == 0, terminal
    doc = json.loads(stdout)  # exactly one document, with -v and progress too
    assert doc["ok"] and doc["bundle"] == str(tmp_path / "tty")
    frames = _frames(terminal)
    for stage in ("Loading the checkpoint", "Exporting to ONNX", "Checking parity with PyTorch",
                  "Verifying the bundle"):
        assert any(stage in f and f[:1] in SPINNER for f in frames), (stage, frames[:40])
    assert re.search(r"✓ Exporting to ONNX \(\d+\.\d s\)", terminal)  # a stage over a second leaves its time
    assert all(_display_width(f) < 100 for f in frames), max(frames, key=len)
    # Records start on a cleared line, never after a half-drawn bar.
    records = [line for line in terminal.split("\n") if "INFO edgemm.export: exporting" in line]
    assert records and all(ANSI.sub("", line.split("\r")[-2 if line.endswith("\r") else -1]).startswith("INFO")
                           for line in records), records
    assert _frames(terminal)[-1] == ""  # no half-drawn line left behind


def test_nothing_but_the_result_off_a_terminal(tiny_bundle):
    piped = subprocess.run([sys.executable, "-m", "edgemm", "verify", str(tiny_bundle)], capture_output=True,
                           text=True, cwd=REPO, timeout=120, env={**os.environ, "TERM": "xterm-256color"})
    assert piped.returncode == 0 and "golden" in piped.stdout, piped.stderr
    assert piped.stderr == ""


def test_quiet_on_a_terminal_shows_errors_only(tiny_bundle, tmp_path):
    code, stdout, terminal = _on_terminal("verify", str(tiny_bundle))
    assert code == 0 and "golden" in stdout, terminal
    assert "Re-running golden sets" in terminal

    code, stdout, terminal = _on_terminal("verify", str(tiny_bundle), "-q")
    assert code == 0 and "golden" in stdout  # the result still prints
    assert terminal == ""

    code, stdout, terminal = _on_terminal("-q", "verify", str(tmp_path / "missing"))
    assert code != 0 and terminal.startswith("Error: ") and "Hint: " in terminal


def test_a_narrow_terminal_gets_a_shorter_line(tiny_bundle):
    code, _, terminal = _on_terminal("verify", str(tiny_bundle), columns=12)
    assert code == 0, terminal
    frames = [f for f in _frames(terminal) if f]
    assert frames and all(_display_width(f) <= 11 for f in frames), frames


def test_predict_is_quiet_by_default_and_says_why_with_v(tiny_bundle, tmp_path):
    from PIL import Image

    from edgemm.data.synthetic import synthesize_image

    image = tmp_path / "seven.png"
    Image.fromarray(synthesize_image(40, 50, seed=2)).save(image)
    args = ("predict", str(tiny_bundle), "--text", "7", "--image", str(image))
    code, stdout, err, _ = run_edge(*args)
    assert code == 0 and stdout.strip(), err
    assert [line for line in err.splitlines() if not line.startswith("EDGE_GUARD")] == []  # not one log line
    for verbose in (("-v", *args), (*args, "-v")):  # before or after the command: the same
        code, stdout, err, _ = run_edge(*verbose)
        assert code == 0 and "INFO edgemm.runtime: artifact fp32 on cpu" in err, err
    code, stdout, err, _ = run_edge(*args, "--json", "-v")
    assert code == 0 and json.loads(stdout)["artifact"] == "fp32"  # one document, info on stderr only
    assert "INFO edgemm.runtime: artifact" in err

    both = CliRunner().invoke(cli, ["-q", *args, "-v"])
    assert both.exit_code == 2 and "opposite" in both.stderr


def test_the_cli_leaves_logging_as_it_found_it(tiny_bundle):
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogger("edgemm").level, list(sys.meta_path),
              os.environ.get("TRANSFORMERS_VERBOSITY"))
    result = CliRunner().invoke(cli, ["-v", "inspect", str(tiny_bundle)])
    assert result.exit_code == 0, result.output
    after = (list(root.handlers), root.level, logging.getLogger("edgemm").level, list(sys.meta_path),
             os.environ.get("TRANSFORMERS_VERBOSITY"))
    assert after == before
    assert not progress.enabled()


def test_progress_imports_nothing_heavy():
    code = ("import sys, edgemm.progress; light = sorted(m for m in ('click', 'numpy') if m in sys.modules); "
            "import edgemm.cli.output; print(light, sorted(m for m in ('numpy', 'onnxruntime', 'torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and proc.stdout.strip() == "[] []", proc.stdout + proc.stderr
