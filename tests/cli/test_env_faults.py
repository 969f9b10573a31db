"""Environmental faults end as ``Error:`` / ``Hint:`` with the right exit code, never a traceback,
and leave nothing behind: full disks, file size limits, permissions, read-only filesystems, a
port in use, and paths of the wrong kind (directory, FIFO, device, a sparse 2 GB file).

The faults are real: a tmpfs mounted by the test (too small, out of inodes, read-only) gives
ENOSPC and EROFS from the kernel; ``RLIMIT_FSIZE`` gives EFBIG; a read-only directory gives
EACCES (as root, with CAP_DAC_OVERRIDE dropped by ``setpriv`` so that permissions apply); a
socket the test binds gives EADDRINUSE. Every command runs as a separate process, as a user
runs it, and its peak RSS is measured.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgemm.deploy.archive import pack
from edgemm.deploy.keys import generate_keypair
from edgemm.deploy.store import DeviceStore
from tests.conftest import REPO

TWO_GB = 2 * 2**30
RSS_CEILING_MB = 200


@dataclass
class Run:
    """One finished ``edgemm`` process."""

    rc: int
    out: str
    err: str
    peak_rss_mb: float

    def json(self) -> dict:
        return json.loads(self.out)


# Runs the command as its grandchild and reports its peak RSS: measured on a child of this
# parent it would include pytest's own (Linux carries the pre-exec peak of a fork into ru_maxrss).
_LAUNCHER = """
import json, os, resource, signal, subprocess, sys
spec = json.loads(sys.argv[1])
def limits():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG as an error, not a signal
    if spec["fsize"] is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (spec["fsize"], resource.RLIM_INFINITY))
child = subprocess.Popen(spec["argv"], preexec_fn=limits)
_, status, usage = os.wait4(child.pid, 0)
with open(spec["report"], "w") as fh:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}, fh)
"""


def spawn(argv: list[object], *, cwd: Path, fsize_limit: int | None = None, env: dict | None = None,
          timeout: float = 180) -> Run:
    """Run ``argv`` as a user would (its own process, stdout and stderr captured), with an
    optional file size limit; its peak RSS is measured. A run past ``timeout`` (a FIFO that
    blocked) is killed and fails the test."""
    report = cwd / f".report-{os.getpid()}.json"
    spec = {"argv": [str(a) for a in argv], "fsize": fsize_limit, "report": str(report)}
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, json.dumps(spec)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    result = json.loads(report.read_text())
    report.unlink()
    return Run(result["rc"], out, err, result["maxrss_kb"] / 1024)


def edgemm(*args: object, cwd: Path, obey_permissions: bool = False, **kwargs) -> Run:
    """``python -m edgemm ARGS`` through :func:`spawn` (``obey_permissions``: as root, without the
    capabilities that let root ignore file modes, so that a read-only directory refuses it)."""
    prefix: list[str] = []
    if obey_permissions and os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", "--bounding-set", caps, "--inh-caps", caps]
    return spawn([*prefix, sys.executable, "-m", "edgemm", *args], cwd=cwd, **kwargs)


def refused(run: Run, exit_code: int, *names: object, code: str | None = None) -> str:
    """The run failed as a user error should: exit code, one ``Error:`` naming ``names``, a hint,
    no traceback (and with --json the stable ``code``). Returns the error line."""
    assert "Traceback" not in run.err + run.out, run.err
    assert run.rc == exit_code, f"exit {run.rc}, expected {exit_code}\n{run.err}"
    errors = [line for line in run.err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, run.err
    for name in names:
        assert str(name) in errors[0], f"{name} not named in: {errors[0]}"
    assert any(line.startswith("Hint: ") for line in run.err.splitlines()), run.err
    if code is not None:
        assert run.json()["error"]["code"] == code, run.out
    return errors[0]


def tree(root: Path) -> dict[str, tuple]:
    """Everything under ``root`` (type, size, link target): what "left as it was" compares."""
    if not os.path.lexists(root):
        return {}
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        link = os.readlink(path) if path.is_symlink() else None
        found[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_size if stat.S_ISREG(st.st_mode) else 0, link)
    return found


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release(tiny_bundle, tmp_path_factory) -> dict[str, Path]:
    """A signing key pair and two signed archives (versions 1 and 2) of the tiny bundle."""
    root = tmp_path_factory.mktemp("release")
    key, pub = root / "edgemm-signing.key", root / "edgemm-signing.pub"
    generate_keypair(key, pub)
    archives = {}
    for version in ("1", "2"):
        archives[version] = root / f"v{version}.edgemm"
        pack(tiny_bundle, archives[version], key=key, version=version)
    return {"key": key, "pub": pub, "v1": archives["1"], "v2": archives["2"], "bundle": tiny_bundle}


@pytest.fixture
def mount(tmp_path):
    """Mount a tmpfs with the given options (root only; skipped with the reason elsewhere)."""
    mounted: list[Path] = []

    def _mount(name: str, options: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root (run the suite as root, e.g. in the CI container)")
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield _mount
    for point in reversed(mounted):
        if subprocess.run(["umount", str(point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


def remount(point: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(point)], check=True, capture_output=True)


def inodes_used(point: Path) -> int:
    st = os.statvfs(point)
    return st.f_files - st.f_ffree


@pytest.fixture
def wrong_kinds(tmp_path) -> dict[str, Path]:
    """A directory, a FIFO, /dev/zero and a sparse 2 GB file: none is a file to read whole."""
    directory = tmp_path / "a-directory"
    directory.mkdir()
    fifo = tmp_path / "a-fifo"
    os.mkfifo(fifo)
    sparse = tmp_path / "sparse-2g.png"
    with open(sparse, "wb") as fh:
        fh.truncate(TWO_GB)
    assert os.stat(sparse).st_blocks * 512 < 2**20  # sparse indeed: reading it would cost 2 GB
    return {"directory": directory, "fifo": fifo, "/dev/zero": Path("/dev/zero"), "sparse": sparse}


# -- full disk (ENOSPC) ------------------------------------------------------------------------


def test_pack_on_a_small_disk_is_refused_before_writing(release, mount, tmp_path):
    disk = mount("small", "size=2M")
    run = edgemm("pack", release["bundle"], "-o", disk / "kiosk.edgemm", "--key", release["key"], "--version", "1",
                 "--json", cwd=tmp_path)
    line = refused(run, 1, disk / "kiosk.edgemm", code="E_DISK_FULL")
    assert re.search(r"it needs \d+\.\d MiB; 2\.0 MiB are free on ", line), line
    assert tree(disk) == {}


def test_install_on_a_small_disk_says_what_it_needs_with_headroom(release, mount, tmp_path):
    disk = mount("small", "size=2M")
    store = disk / "store"
    run = edgemm("install", release["v1"], "--store", store, "--trusted-key", release["pub"], "--json", cwd=tmp_path)
    line = refused(run, 1, store, code="E_DISK_FULL")
    # the check keeps headroom, and the message says so: needed + headroom = in all, vs free
    needs = re.search(r"it needs (\d+\.\d) MiB plus (\d+\.\d) MiB of headroom, 10 % of it \+ 64 MiB kept free "
                      r"\((\d+\.\d) MiB in all\); 2\.0 MiB are free on ", line)
    assert needs, line
    bundle, headroom, total = (float(g) for g in needs.groups())
    assert abs(headroom - (64 + bundle / 10)) < 0.2 and abs(total - (bundle + headroom)) < 0.2
    assert tree(disk) == {}  # not even the store directory the install created


def test_pack_out_of_inodes_fails_cleanly(release, mount, tmp_path):
    disk = mount("no-inodes", "size=64M,nr_inodes=1")  # the root takes the only one: creating a file fails
    run = edgemm("pack", release["bundle"], "-o", disk / "kiosk.edgemm", "--key", release["key"], "--version", "1",
                 "--json", cwd=tmp_path)
    line = refused(run, 1, disk / "kiosk.edgemm", code="E_DISK_FULL")
    assert "no space left" in line and ".partial" not in line  # the user's name, not the temporary one
    assert tree(disk) == {}


def test_install_running_out_at_every_step_leaves_the_store_as_it_was(release, mount, tmp_path):
    """ENOSPC from the kernel at each inode the install needs: staging, extraction, the statement,
    the pointer switch. Every failure is exit 1 with the store exactly as before (v1 active)."""
    disk = mount("store-disk", "size=128M")
    store = disk / "store"
    DeviceStore(store).install(release["v1"], release["pub"])
    before = tree(store)
    used = inodes_used(disk)
    failures = 0
    for extra in range(60):
        remount(disk, f"nr_inodes={used + extra}")
        run = edgemm("install", release["v2"], "--store", store, "--trusted-key", release["pub"], "--json",
                     cwd=tmp_path)
        if run.rc == 0:
            break
        line = refused(run, 1, store, code="E_DISK_FULL")
        assert "no space left" in line
        assert tree(store) == before, f"with {extra} inodes free the failed install changed the store"
        assert DeviceStore(store).active().version == "1"
        failures += 1
    else:
        pytest.fail("the install never succeeded")
    assert failures >= 5, failures  # staging dirs, bundle dirs, files, statement, the pointer switch
    assert DeviceStore(store).active().version == "2" and not (store / "staging").exists()


# -- file size limit (EFBIG) -------------------------------------------------------------------


def test_pack_past_the_file_size_limit(release, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run = edgemm("pack", release["bundle"], "-o", out / "kiosk.edgemm", "--key", release["key"], "--version", "1",
                 "--json", cwd=tmp_path, fsize_limit=2**20)
    line = refused(run, 1, out / "kiosk.edgemm", code="E_FILE_TOO_LARGE")
    assert "largest file" in line
    assert tree(out) == {}


def test_install_past_the_file_size_limit_leaves_the_store_as_it_was(release, tmp_path):
    store = tmp_path / "store"
    DeviceStore(store).install(release["v1"], release["pub"])
    before = tree(store)
    run = edgemm("install", release["v2"], "--store", store, "--trusted-key", release["pub"], "--json",
                 cwd=tmp_path, fsize_limit=2**20)
    line = refused(run, 1, store, code="E_FILE_TOO_LARGE")
    assert ".partial" not in line  # named as it would have been installed
    assert tree(store) == before


def test_first_install_past_the_file_size_limit_leaves_no_store(release, tmp_path):
    store = tmp_path / "new" / "store"
    run = edgemm("install", release["v1"], "--store", store, "--trusted-key", release["pub"],
                 cwd=tmp_path, fsize_limit=2**20)
    refused(run, 1, store)
    assert not (tmp_path / "new").exists()


# -- permissions (EACCES) and read-only filesystems (EROFS) ------------------------------------


@pytest.fixture
def locked_dir(tmp_path) -> Path:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("as root, permissions apply only without CAP_DAC_OVERRIDE: needs setpriv (util-linux)")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    yield locked
    locked.chmod(0o755)


def test_permission_denied_for_every_writer(release, locked_dir, tmp_path):
    cases = {
        "pack": ["pack", release["bundle"], "-o", locked_dir / "kiosk.edgemm", "--key", release["key"],
                 "--version", "1"],
        "install": ["install", release["v1"], "--store", locked_dir / "store", "--trusted-key", release["pub"]],
        "keygen": ["keygen", "--out", locked_dir / "keys"],
    }
    for name, args in cases.items():
        run = edgemm(*args, "--json", cwd=tmp_path, obey_permissions=True)
        line = refused(run, 2, locked_dir, code="E_PERMISSION")
        assert "permission denied" in line, name
        assert tree(locked_dir) == {}, name


def test_permission_denied_for_inputs(release, locked_dir, tmp_path):
    locked_dir.chmod(0o755)
    for name in ("kiosk.edgemm", "edgemm-signing.pub"):
        shutil.copy(release["v1"] if name.endswith("edgemm") else release["pub"], locked_dir / name)
    locked_dir.chmod(0o000)  # nothing in it can even be stat-ed
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n")
    secret.chmod(0o000)
    try:
        cases = [["install", locked_dir / "kiosk.edgemm", "--store", tmp_path / "store", "--trusted-key", release["pub"]],
                 ["install", release["v1"], "--store", tmp_path / "store", "--trusted-key",
                  locked_dir / "edgemm-signing.pub"]]
        for args in cases:
            run = edgemm(*args, "--json", cwd=tmp_path, obey_permissions=True)
            assert "permission denied" in refused(run, 2, locked_dir, code="E_PERMISSION")
        # click checks an existing --image for readability itself: its usage error, no traceback either
        run = edgemm("predict", release["bundle"], "--text", "7", "--image", secret, "--json", cwd=tmp_path,
                     obey_permissions=True)
        assert run.rc == 2 and "Traceback" not in run.err and run.json()["error"]["code"] == "E_USAGE"
        assert str(secret) in run.json()["error"]["message"] and "not readable" in run.json()["error"]["message"]
    finally:
        locked_dir.chmod(0o755)
    assert not (tmp_path / "store").exists()


def test_a_fault_where_no_writer_expects_one_is_still_no_traceback(tiny_bundle, locked_dir, tmp_path):
    # serve writes --port-file itself, after binding: the CLI maps what reaches it
    run = edgemm("serve", tiny_bundle, "--port", "0", "--port-file", locked_dir / "port", cwd=tmp_path,
                 obey_permissions=True, env={"XDG_STATE_HOME": str(tmp_path / "state")}, timeout=60)
    assert "ermission denied" in refused(run, 2, locked_dir)
    assert tree(locked_dir) == {}


def test_install_into_a_read_only_store_leaves_it_as_it_was(release, tmp_path):
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("as root, permissions apply only without CAP_DAC_OVERRIDE: needs setpriv (util-linux)")
    store = tmp_path / "store"
    DeviceStore(store).install(release["v1"], release["pub"])
    before = tree(store)
    for path in (store, store / "bundles"):
        path.chmod(0o555)
    try:
        run = edgemm("install", release["v2"], "--store", store, "--trusted-key", release["pub"], "--json",
                     cwd=tmp_path, obey_permissions=True)
    finally:
        for path in (store, store / "bundles"):
            path.chmod(0o755)
    refused(run, 2, store, code="E_PERMISSION")
    assert tree(store) == before


def test_read_only_filesystem(release, mount, tmp_path):
    disk = mount("read-only", "size=128M,ro")
    cases = [
        ["pack", release["bundle"], "-o", disk / "kiosk.edgemm", "--key", release["key"], "--version", "1"],
        ["install", release["v1"], "--store", disk / "store", "--trusted-key", release["pub"]],
        ["keygen", "--out", disk / "keys"],
    ]
    for args in cases:
        run = edgemm(*args, "--json", cwd=tmp_path)
        line = refused(run, 2, disk, code="E_READ_ONLY")
        assert "read-only filesystem" in line


# -- a port in use (EADDRINUSE) ----------------------------------------------------------------


def test_serve_on_a_port_in_use(tiny_bundle, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        run = edgemm("serve", tiny_bundle, "--port", port, "--port-file", tmp_path / "port", cwd=tmp_path,
                     env={"XDG_STATE_HOME": str(tmp_path / "state")})
    line = refused(run, 2, f"127.0.0.1:{port}")
    assert "already in use" in line
    assert not (tmp_path / "port").exists()


def test_serve_on_an_address_of_another_machine(tiny_bundle, tmp_path):
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this machine
    run = edgemm("serve", tiny_bundle, "--host", "192.0.2.1", "--expose", "--port", "0", cwd=tmp_path,
                 env={"XDG_STATE_HOME": str(tmp_path / "state")})
    line = refused(run, 2, "192.0.2.1")
    assert "not an address of this machine" in line


# -- paths of the wrong kind -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["directory", "fifo", "/dev/zero", "sparse"])
def test_wrong_kind_of_input_path(kind, release, wrong_kinds, tmp_path):
    """Every input path argument refuses a directory, FIFO and device as what it is (a FIFO is never
    opened: it would block) and a sparse 2 GB file by its size (never read: peak RSS stays small)."""
    path = wrong_kinds[kind]
    is_a = {"directory": "is a directory", "fifo": "is a FIFO, not a file",
            "/dev/zero": "is a character device, not a file"}.get(kind)
    store = tmp_path / "store"
    cases = [
        # (args, exit code for the sparse file, what the sparse file is refused as)
        (["predict", release["bundle"], "--text", "7", "--image", path], 2, "larger than the limit"),
        (["install", path, "--store", store, "--trusted-key", release["pub"]], 1, "signed statement is missing"),
        (["install", release["v1"], "--store", store, "--trusted-key", path], 2, "larger than the limit"),
        (["pack", release["bundle"], "-o", tmp_path / "x.edgemm", "--key", path, "--version", "1"], 2,
         "larger than the limit"),
    ]
    for args, sparse_exit, sparse_says in cases:
        run = edgemm(*args, cwd=tmp_path, timeout=120)
        line = refused(run, 2 if is_a else sparse_exit, path)
        assert (is_a or sparse_says) in line, line
        assert run.peak_rss_mb < RSS_CEILING_MB, f"{args[0]}: {run.peak_rss_mb:.0f} MB"
    assert not store.exists() and not (tmp_path / "x.edgemm").exists()


def test_runtime_reads_inputs_by_their_size(tiny_bundle, wrong_kinds, tmp_path):
    """The Python API, past the CLI's checks: a FIFO is refused without blocking, /dev/zero and a
    directory as what they are, a sparse 2 GB image and recording by stat (the process stays small)."""
    script = textwrap.dedent(f"""
        import json
        from edgemm.errors import EdgemmError
        from edgemm.runtime import Predictor
        from edgemm.runtime.preprocess.audio.load import load_audio

        paths = {json.dumps({k: str(v) for k, v in wrong_kinds.items()})}
        seen = {{}}
        with Predictor.load({str(tiny_bundle)!r}, device="cpu") as predictor:
            for kind, path in paths.items():
                try:
                    predictor.predict(text="7", image=path)
                except EdgemmError as exc:
                    seen["image " + kind] = [type(exc).__name__, exc.message]
                try:
                    load_audio(path, target_rate=16000, max_seconds=30)
                except EdgemmError as exc:
                    seen["audio " + kind] = [type(exc).__name__, exc.message]
        print(json.dumps(seen))
    """)
    (tmp_path / "probe.py").write_text(script)
    run = spawn([sys.executable, tmp_path / "probe.py"], cwd=tmp_path, timeout=120)
    assert run.rc == 0, run.err
    seen = json.loads(run.out)
    for modality in ("image", "audio"):
        assert seen[f"{modality} directory"][0] == "InputPathError" and "is a directory" in seen[f"{modality} directory"][1]
        assert seen[f"{modality} fifo"][1].endswith("is a FIFO, not a file.")
        assert "is a character device, not a file" in seen[f"{modality} /dev/zero"][1]
        assert seen[f"{modality} sparse"][0] == "InputTooLargeError"
        assert f"({TWO_GB:,} bytes)" in seen[f"{modality} sparse"][1]  # by stat: the real size, not cap + 1
    assert run.peak_rss_mb < RSS_CEILING_MB, f"{run.peak_rss_mb:.0f} MB"


def test_wrong_kind_of_output_path(release, wrong_kinds, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    directory = wrong_kinds["directory"]
    cases = [
        # pack -o a directory, with or without --force; and a device (root could replace /dev/null)
        (["pack", release["bundle"], "-o", directory, "--key", release["key"], "--version", "1"],
         directory, "is a directory, not a file"),
        (["pack", release["bundle"], "-o", directory, "--key", release["key"], "--version", "1", "--force"],
         directory, "is a directory, not a file"),
        (["pack", release["bundle"], "-o", "/dev/null", "--key", release["key"], "--version", "1", "--force"],
         "/dev/null", "is a character device, not a file"),
        (["pack", release["bundle"], "-o", a_file / "x.edgemm", "--key", release["key"], "--version", "1"],
         a_file, "is a file, not a directory"),
        (["install", release["v1"], "--store", a_file, "--trusted-key", release["pub"]], a_file,
         "is a file, not a directory"),
        (["install", release["v1"], "--store", a_file / "store", "--trusted-key", release["pub"]], a_file,
         "is a file, not a directory"),
        (["keygen", "--out", a_file / "keys"], a_file, "is a file, not a directory"),
        (["triton", release["bundle"], a_file], a_file, "is a file, not a directory"),
    ]
    before = tree(tmp_path)
    for args, named, says in cases:
        run = edgemm(*args, "--json", cwd=tmp_path)
        line = refused(run, 2, named, code="E_PATH")
        assert says in line, line
    # a store that is a file would never become ready: refused before the server starts
    run = edgemm("serve", "--store", a_file, "--port", "0", cwd=tmp_path, timeout=60)
    assert "is a file, not a directory" in refused(run, 2, a_file)
    assert tree(tmp_path) == before
    assert os.path.exists("/dev/null") and stat.S_ISCHR(os.stat("/dev/null").st_mode)
