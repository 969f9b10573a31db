"""Exposed mode: the API token, what counts as local (the peer, never the Host header), the kiosk
page's token, the per-client rate limit — on real ``edgemm serve`` processes.

A peer that is not local comes from two places: a second loopback address (127.0.0.2) that the
server is told is not local (``--local-peer 127.0.0.1``), and, where this machine lets a test
create one (root), a real network namespace joined to this one by a veth pair, with the server's
default notion of local.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgemm.serve.auth import RateLimiter
from tests.browser import CHROMIUM, launch
from tests.conftest import REPO
from tests.serve.conftest import Server, png_bytes, start_server, stop_server

LAN = "127.0.0.2"  # a peer the exposed test server is told is not local
NAME = "kiosk.test"  # the name LAN clients call the server by (--allow-host)
SECURITY_HEADERS = ("x-content-type-options", "content-security-policy", "x-frame-options", "referrer-policy")


def exposed_args(bundle: Path, token_file: Path, *extra: str) -> list[str]:
    return [str(bundle), "--device", "cpu", "--expose", "--allow-host", NAME, "--local-peer", "127.0.0.1",
            "--token-file", str(token_file), *extra]


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("auth-state") / "state" / "api-token"


@pytest.fixture(scope="module")
def exposed(serve_bundle, token_file, tmp_path_factory) -> Iterator[Server]:
    """An exposed server on loopback that treats only 127.0.0.1 as the kiosk itself."""
    srv = start_server(tmp_path_factory.mktemp("auth"), *exposed_args(serve_bundle, token_file, "--rate-burst", "500"))
    yield srv
    stop_server(srv)


def bearer(token_file: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_file.read_text().strip()}"}


def error_count(metrics: str, code: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(metrics) for s in f.samples
               if s.name == "edgemm_errors_total" and s.labels.get("code") == code)


def assert_error(res, status: int, code: str) -> None:
    assert (res.status, res.code) == (status, code), res.body
    assert res.headers["content-type"] == "application/json"
    assert set(res.json()["error"]) == {"code", "message", "hint"}
    assert all(name in res.headers for name in SECURITY_HEADERS), res.headers


def test_a_lan_client_needs_the_token_for_everything_but_health(exposed, token_file):
    lan = {"Host": NAME}
    auth = {**lan, **bearer(token_file)}
    image = {"Content-Type": "image/png"}
    for path in ("/v1/model", "/metrics", "/v1/nothing-here"):
        res = exposed.get(path, headers=lan, source=LAN)
        assert_error(res, 401, "unauthorized")
        assert res.headers["www-authenticate"] == 'Bearer realm="edgemm"'
    res = exposed.request("POST", "/v1/predict?text=seven", png_bytes(), {**lan, **image}, source=LAN)
    assert_error(res, 401, "unauthorized")
    wrong = exposed.get("/v1/model", headers={**lan, "Authorization": "Bearer " + "x" * 43}, source=LAN)
    assert_error(wrong, 401, "unauthorized")
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    basic = exposed.get("/v1/model", headers={**lan, "Authorization": "Basic " + token_file.read_text().strip()},
                        source=LAN)
    assert_error(basic, 401, "unauthorized")

    for path in ("/v1/health/live", "/v1/health/ready", "/", "/static/kiosk.js"):
        assert exposed.get(path, headers=lan, source=LAN).status == 200, path
    assert exposed.get("/v1/model", headers=auth, source=LAN).json()["labels"]
    assert "edgemm_ready 1.0" in exposed.get("/metrics", headers=auth, source=LAN).body.decode()
    res = exposed.request("POST", "/v1/predict?text=seven", png_bytes(), {**auth, **image}, source=LAN)
    assert res.status == 200 and res.json()["label"], res.body
    assert error_count(exposed.get("/metrics", headers=auth, source=LAN).body.decode(), "unauthorized") == 6


def test_a_loopback_host_name_is_no_pass_from_a_lan_peer(exposed, token_file):
    for headers in ({"Host": f"127.0.0.1:{exposed.port}"}, {"Host": "localhost"}, {"Host": "[::1]"}):
        for extra in ({}, bearer(token_file)):
            res = exposed.get("/v1/model", headers={**headers, **extra}, source=LAN)
            assert_error(res, 421, "host_not_allowed")
        assert_error(exposed.get("/v1/kiosk/token", headers=headers, source=LAN), 421, "host_not_allowed")
    # By its LAN name, the token endpoint refuses a peer that is not the kiosk itself, whatever
    # forwarding header it sends (only a proxy on 127.0.0.1 is trusted with those).
    for forwarded in ({}, {"X-Forwarded-For": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"}):
        res = exposed.get("/v1/kiosk/token", headers={"Host": NAME, **forwarded}, source=LAN)
        assert_error(res, 403, "forbidden")


def test_the_kiosk_page_gets_the_token_on_loopback_only(exposed, token_file):
    res = exposed.get("/v1/kiosk/token")  # from 127.0.0.1, Host 127.0.0.1:port
    assert res.status == 200 and res.headers["cache-control"] == "no-store"
    assert res.json() == {"token": token_file.read_text().strip()}
    # Local peer, but called by a name that is not loopback (as through a proxy or rebinding).
    assert_error(exposed.get("/v1/kiosk/token", headers={"Host": NAME}), 403, "forbidden")
    # Another site's page in the kiosk's browser.
    assert_error(exposed.get("/v1/kiosk/token", headers={"Origin": "http://evil.test"}), 403, "origin_not_allowed")
    # Exposed, the token is needed on loopback too (a reverse proxy would make everyone local).
    assert_error(exposed.get("/v1/model"), 401, "unauthorized")
    assert exposed.get("/v1/model", headers=bearer(token_file)).status == 200


def test_the_token_file_is_private_and_reused_across_restarts_and_the_rate_limit(exposed, serve_bundle, token_file,
                                                                                    tmp_path):
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    token, inode = token_file.read_text(), token_file.stat().st_ino
    srv = start_server(tmp_path, *exposed_args(serve_bundle, token_file, "--rate-limit", "0.05", "--rate-burst", "2"))
    try:
        assert srv.get("/v1/kiosk/token").json()["token"] == token.strip()
        assert (token_file.read_text(), token_file.stat().st_ino) == (token, inode)
        # 0.05 requests/s: no token comes back between these requests unless 20 s pass.
        statuses = [srv.get("/v1/health/live", headers={"Host": NAME}, source=LAN) for _ in range(4)]
        assert [r.status for r in statuses[:2]] == [200, 200]
        limited = statuses[3]
        assert_error(limited, 429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1
        # The kiosk itself is not rate limited.
        assert all(srv.get("/v1/health/live").status == 200 for _ in range(6))
        assert error_count(srv.get("/metrics", headers=bearer(token_file)).body.decode(), "rate_limited") >= 2
    finally:
        stop_server(srv)


@pytest.mark.parametrize("problem", ["mode", "content", "symlink"])
def test_a_bad_token_file_is_refused_before_serving(serve_bundle, tmp_path, problem):
    path = tmp_path / "api-token"
    if problem == "symlink":
        (tmp_path / "real").write_text("a" * 43)
        (tmp_path / "real").chmod(0o600)
        path.symlink_to(tmp_path / "real")
    else:
        path.write_text("a" * 43 if problem == "mode" else "short")
        path.chmod(0o644 if problem == "mode" else 0o600)
    # A process of its own, as a user runs it (the server would change prometheus-client's globals here).
    done = subprocess.run([sys.executable, "-m", "edgemm", "serve", str(serve_bundle), "--expose", "--token-file",
                           str(path), "--port", "0"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert done.returncode == 2, done.stderr
    expected = {"mode": f"The API token file {path} is readable by other users (mode 644).",
                "content": f"The API token file {path} does not hold a valid token.",
                "symlink": f"Cannot read the API token file {path}: "}[problem]
    assert f"Error: {expected}" in done.stderr and "Hint: " in done.stderr and "Traceback" not in done.stderr


def test_a_local_peer_that_is_not_an_address_is_a_usage_error(serve_bundle):
    from click.testing import CliRunner

    from edgemm.cli import cli

    result = CliRunner().invoke(cli, ["serve", str(serve_bundle), "--local-peer", "kiosk.lan"])
    assert result.exit_code == 2 and "--local-peer" in result.output and "Traceback" not in result.output


def test_the_rate_limiter_refills_at_its_rate_and_forgets_the_oldest_client():
    now = [100.0]
    limiter = RateLimiter(2.0, 3, max_clients=2, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)  # empty: one token comes back every 0.5 s
    now[0] += 0.5
    assert limiter.take("a") == 0.0 and limiter.take("a") > 0
    now[0] += 100
    assert [limiter.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, not beyond
    limiter.take("b")
    limiter.take("c")  # a third client: "a", the least recently seen, is forgotten
    assert limiter.take("a") == 0.0


# -- a real non-loopback peer: a network namespace joined by a veth pair --------------------

_LAN_CLIENT = """
import http.client, json, sys
port, token = int(sys.argv[1]), sys.argv[2]
out = []
for path, headers in json.loads(sys.argv[3]):
    conn = http.client.HTTPConnection(sys.argv[4], port, timeout=30)
    conn.request("GET", path, headers={k: v.replace("TOKEN", token) for k, v in headers.items()})
    res = conn.getresponse()
    out.append([res.status, res.read().decode()])
    conn.close()
print(json.dumps(out))
"""


@pytest.fixture
def namespace() -> Iterator[tuple[str, str]]:
    """A network namespace whose only route to this machine is a veth pair: (its name, the host side's address)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("creating a network namespace needs root and iproute2")
    tag = uuid.uuid4().hex[:6]
    name, outer, inner = f"edgemm-{tag}", f"em{tag}h", f"em{tag}n"
    subnet = int(tag[:2], 16)
    host_addr, ns_addr = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    steps = [["ip", "netns", "add", name],
             ["ip", "link", "add", outer, "type", "veth", "peer", "name", inner],
             ["ip", "link", "set", inner, "netns", name],
             ["ip", "addr", "add", f"{host_addr}/30", "dev", outer],
             ["ip", "link", "set", outer, "up"],
             ["ip", "netns", "exec", name, "ip", "addr", "add", f"{ns_addr}/30", "dev", inner],
             ["ip", "netns", "exec", name, "ip", "link", "set", inner, "up"]]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot build a network namespace here: {' '.join(step)}: {done.stderr.strip()}")
        yield name, host_addr
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_a_client_in_another_network_namespace_needs_the_token(serve_bundle, namespace, tmp_path):
    name, host_addr = namespace
    token_file = tmp_path / "api-token"
    srv = start_server(tmp_path, str(serve_bundle), "--device", "cpu", "--host", "0.0.0.0", "--expose",
                       "--allow-host", host_addr, "--token-file", str(token_file))
    try:
        token = token_file.read_text().strip()
        here = f"{host_addr}:{srv.port}"
        asks = [("/v1/model", {"Host": here}), ("/v1/model", {"Host": here, "Authorization": "Bearer TOKEN"}),
                ("/metrics", {"Host": here}), ("/v1/health/ready", {"Host": here}),
                ("/v1/model", {"Host": f"127.0.0.1:{srv.port}", "Authorization": "Bearer TOKEN"}),
                ("/v1/kiosk/token", {"Host": here})]
        done = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", _LAN_CLIENT, str(srv.port), token,
                               json.dumps(asks), host_addr], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        got = json.loads(done.stdout)
        assert [status for status, _ in got] == [401, 200, 401, 200, 421, 403], got
        assert json.loads(got[0][1])["error"]["code"] == "unauthorized"
        assert token not in got[5][1]
    finally:
        stop_server(srv)


# -- the kiosk page, exposed, in real headless Chromium on loopback ---------------------------


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)")
def test_the_kiosk_page_works_exposed_with_the_token(exposed, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    picture = tmp_path / "digit.png"
    picture.write_bytes(png_bytes(120, 90, (30, 90, 200)))
    base = f"http://127.0.0.1:{exposed.port}"
    sent: dict[str, str | None] = {}
    with sync_api.sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page()
            page.on("request", lambda req: sent.update({req.url.replace(base, ""): req.headers.get("authorization")}))
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/")
            page.locator("#status", has_text="Ready").wait_for(timeout=20_000)
            page.set_input_files("#image-input", str(picture))
            page.fill("#text-input", "seven")
            page.click("#submit-btn")
            page.wait_for_selector("#result-body:not([hidden])", timeout=20_000)
            # No display words in this bundle: the label humanised.
            assert page.text_content("#result-label") in ("Zero", "One", "Two")
            assert page.is_hidden("#error") and not errors, errors
        finally:
            browser.close()
    assert sent["/v1/model"] and sent["/v1/model"].startswith("Bearer ")
    assert sent["/v1/predict"] == sent["/v1/model"]
    assert sent["/v1/kiosk/token"] is None


def test_the_systemd_unit_keeps_the_token_in_its_state_directory(tmp_path):
    from edgemm.cli.serve_cmd import render_systemd_unit

    unit = render_systemd_unit(tmp_path, 8310, "allow_cpu", "2G")
    assert "--token-file /var/lib/edgemm-serve/api-token" in unit
    assert "StateDirectory=edgemm-serve" in unit and "StateDirectoryMode=0700" in unit
