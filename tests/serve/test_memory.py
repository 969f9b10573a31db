"""Memory: decoding within one budget derived from the unit's limit, deadlines that count decoding,
freed memory given back, and what the budget is made of (cgroup limits, sizes, the semaphore)."""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgemm.data.synthetic import synthesize_image
from edgemm.errors import UsageError
from edgemm.serve.budget import (
    MIB,
    MemoryBudget,
    bound_allocator,
    cgroup_memory_limit,
    parse_size,
)
from edgemm.serve.httperrors import ApiError
from tests.serve.conftest import Server, png_bytes, start_server, stop_server

# The shipped unit's MemoryMax, which the server is started with; the peak must stay below
# MemoryHigh (80 %, where the kernel starts reclaiming) with room to spare.
MEMORY_MAX_MIB = 2048
PEAK_BOUND_MIB = MEMORY_MAX_MIB * 3 // 4
DEADLINE_S = 10.0
# The deadline is the server's: what the client measures on top of it is the loopback connection
# and the answer's transfer from an event loop that shares 2 cores with 2 decode threads.
CLIENT_SLACK_S = 2.0


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) // 1024
    return out


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def max_size_images(side: int) -> dict[str, tuple[bytes, str]]:
    """``side`` x ``side`` images (the server's pixel cap) in several formats: name → (bytes, type)."""
    photo = Image.fromarray(synthesize_image(side // 8, side // 8, seed=3)).resize((side, side), Image.BICUBIC)
    y, x = np.mgrid[0:side, 0:side]
    gradient = np.stack([x * 255 // side, y * 255 // side, (x + y) * 127 // side, np.full_like(x, 200)], -1)
    flat = Image.new("RGBA", (side, side), (10, 20, 30, 128))
    return {
        "png_rgba": (_encode(Image.fromarray(gradient.astype(np.uint8), "RGBA"), "PNG", compress_level=1), "image/png"),
        "jpeg": (_encode(photo, "JPEG", quality=85), "image/jpeg"),
        "webp": (_encode(photo, "WEBP", quality=80), "image/webp"),
        # A few hundred bytes that decode to 64 MB: the 974-byte WEBP, at the cap.
        "webp_tiny": (_encode(flat, "WEBP", lossless=True), "image/webp"),
        "png_tiny": (_encode(flat, "PNG"), "image/png"),
    }


def _budget_drains(server: Server, within_s: float = 15.0) -> bool:
    """Whether the decode budget is all back (decodes that outlived their deadline end first)."""
    until = time.monotonic() + within_s
    while "edgemm_decode_bytes_in_flight 0.0" not in server.metrics():
        if time.monotonic() > until:
            return False
        time.sleep(0.2)
    return True


def _post(server: Server, image: tuple[bytes, str]) -> tuple[int, str | None, float]:
    started = time.monotonic()
    res = server.request("POST", "/v1/predict?text=seven", image[0], {"Content-Type": image[1]}, timeout=60)
    return res.status, res.code, time.monotonic() - started


def test_32_concurrent_maximum_size_images_within_the_units_memory_limit(serve_bundle, tmp_path):
    srv = start_server(tmp_path, str(serve_bundle), "--device", "cpu", "--memory-max", f"{MEMORY_MAX_MIB}M",
                       "--deadline", str(DEADLINE_S))
    try:
        # The pixel cap is sized to the bundle (32x32 input): its floor, 16 MP, not a fixed 24 MP.
        max_pixels = srv.get("/v1/model").json()["limits"]["max_pixels"]
        assert max_pixels == 16_000_000
        side = math.isqrt(max_pixels)
        images = max_size_images(side)
        assert len(images["webp_tiny"][0]) < 1000 and len(images["png_tiny"][0]) < 100_000
        over = _encode(Image.new("RGB", (side + 1, side)), "PNG")
        res = srv.request("POST", "/v1/predict?text=x", over, {"Content-Type": "image/png"})
        assert (res.status, res.code) == (413, "input_too_large") and "16,000,000" in res.json()["error"]["message"]

        for image in images.values():  # warm: every decoder, thread and arena has run once
            assert _post(srv, image)[0] == 200
        warm = _proc_status(srv.proc.pid)["VmRSS"]
        Path(f"/proc/{srv.proc.pid}/clear_refs").write_text("5")  # VmHWM from here on

        kinds = list(images)
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda i: (kinds[i % len(kinds)], *_post(srv, images[kinds[i % len(kinds)]])),
                                    range(32)))
        peak = _proc_status(srv.proc.pid)["VmHWM"]
        answers = Counter((status, code) for _, status, code, _ in results)
        print(f"warm RSS {warm} MiB, peak RSS {peak} MiB under MemoryMax {MEMORY_MAX_MIB} MiB; answers {dict(answers)}; "
              f"slowest {max(r[3] for r in results):.1f} s")
        assert set(answers) <= {(200, None), (503, "deadline_exceeded"), (503, "overloaded")}, results
        assert answers[(200, None)] > 0
        assert all(elapsed <= DEADLINE_S + CLIENT_SLACK_S for *_, elapsed in results), results
        assert peak < PEAK_BOUND_MIB, f"peak RSS {peak} MiB"

        # Freed memory leaves the process (the allocator is bounded): back within 20 % in 30 s.
        until, rss = time.monotonic() + 30, warm * 2
        while time.monotonic() < until and rss > warm * 1.2:
            time.sleep(0.5)
            rss = _proc_status(srv.proc.pid)["VmRSS"]
        assert rss <= warm * 1.2, f"RSS {rss} MiB 30 s after the burst; warm {warm} MiB"
        assert _budget_drains(srv)
        assert srv.get("/v1/health/ready").status == 200
    finally:
        stop_server(srv)


def test_decoding_counts_against_the_deadline_and_the_budget_refuses_what_never_fits(serve_bundle, tmp_path):
    # Room for one 16 MP RGBA PNG at a time (8 bytes a pixel while it decodes and while it waits).
    srv = start_server(tmp_path, str(serve_bundle), "--device", "cpu", "--decode-budget", "130M", "--deadline", "1")
    try:
        flat = Image.new("RGBA", (4000, 4000), (200, 30, 30, 255))
        png = (_encode(flat, "PNG"), "image/png")
        webp = (_encode(flat, "WEBP", lossless=True), "image/webp")
        res = srv.request("POST", "/v1/predict?text=x", webp[0], {"Content-Type": webp[1]})
        assert (res.status, res.code) == (503, "overloaded") and res.headers["retry-after"] == "1"
        assert "decode budget is 130 MiB" in res.json()["error"]["message"]

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda _: _post(srv, png), range(12)))
        answers = Counter((status, code) for status, code, _ in results)
        # One at a time, each decode well over 0.1 s: 12 of them cannot all finish within 1 s.
        assert set(answers) <= {(200, None), (503, "deadline_exceeded")} and answers[(503, "deadline_exceeded")]
        assert all(elapsed <= 1 + CLIENT_SLACK_S for *_, elapsed in results), results
        assert _budget_drains(srv)
        assert _post(srv, (png_bytes(), "image/png"))[0] == 200  # and the next one is served
    finally:
        stop_server(srv)


# --- the budget itself -----------------------------------------------------------------------------


def test_budget_grants_what_fits_in_arrival_order_within_the_deadline():
    async def scenario() -> None:
        budget = MemoryBudget(decode_budget=100)
        far = time.monotonic() + 30
        first = await budget.acquire(60, far)
        second = asyncio.ensure_future(budget.acquire(60, far))
        fourth = asyncio.ensure_future(budget.acquire(50, far))
        await asyncio.sleep(0.05)
        small = await budget.acquire(10, far)  # a cheap one never waits behind expensive ones
        assert budget.in_use == 70 and not second.done() and not fourth.done()
        first.shrink(20)  # decoded: only what the image keeps
        lease = await asyncio.wait_for(second, 5)  # the first that fits, in arrival order
        assert budget.in_use == 90 and not fourth.done()
        fourth.cancel()  # its client went away
        await asyncio.sleep(0)
        with pytest.raises(asyncio.TimeoutError):
            await budget.acquire(50, time.monotonic() + 0.05)
        assert budget.in_use == 90 and not budget._waiters  # a request that gave up holds nothing
        lease.add_holder()  # the batcher's share
        lease.release()
        assert budget.in_use == 90
        lease.release()
        lease.release()  # a holder too many changes nothing
        assert budget.in_use == 30
        for held in (first, small):
            held.release()
        assert budget.in_use == 0
        with pytest.raises(ApiError) as info:
            await budget.acquire(101, far)
        assert info.value.code == "overloaded" and info.value.headers == {"Retry-After": "1"}
        assert (await budget.acquire(0, far)).nbytes == 0

    asyncio.run(scenario())


def test_budget_is_derived_from_the_memory_limit_less_what_is_resident():
    budget = MemoryBudget(memory_max=3 * 2**30)
    assert 64 * MIB <= budget.capacity <= 1.5 * 2**30
    assert MemoryBudget(memory_max=10 * MIB).capacity == 64 * MIB  # never below the floor


def _cgroup_tree(root: Path, files: dict[str, str], cgroup: str) -> Path:
    for rel, text in files.items():
        (root / "fs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "fs" / rel).write_text(text)
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc" / "cgroup").write_text(cgroup)
    return root


def test_cgroup_memory_limit_of_this_process_and_its_ancestors(tmp_path):
    v2 = _cgroup_tree(tmp_path / "v2", {
        "memory.max": "max\n",
        "system.slice/memory.max": "4294967296\n",
        "system.slice/edgemm-serve.service/memory.max": "2147483648\n",
    }, "0::/system.slice/edgemm-serve.service\n")
    assert cgroup_memory_limit(v2 / "proc", v2 / "fs") == 2 * 2**30
    tighter_parent = _cgroup_tree(tmp_path / "parent", {
        "kiosk.slice/memory.max": "1073741824\n", "kiosk.slice/app.service/memory.max": "max\n"},
        "0::/kiosk.slice/app.service\n")
    assert cgroup_memory_limit(tighter_parent / "proc", tighter_parent / "fs") == 2**30
    v1 = _cgroup_tree(tmp_path / "v1", {
        "memory/memory.limit_in_bytes": "9223372036854771712\n",  # the root: no limit
        "memory/docker/abc/memory.limit_in_bytes": "1610612736\n",
    }, "9:name=systemd:/\n4:memory:/docker/abc\n0::/\n")
    assert cgroup_memory_limit(v1 / "proc", v1 / "fs") == 1536 * MIB
    unlimited = _cgroup_tree(tmp_path / "none", {"memory/memory.limit_in_bytes": "9223372036854771712\n"},
                             "4:memory:/\n0::/\n")
    assert cgroup_memory_limit(unlimited / "proc", unlimited / "fs") is None
    assert cgroup_memory_limit(tmp_path / "no-proc", tmp_path) is None


def test_sizes_are_read_like_systemds():
    assert parse_size("2G", "--memory-max") == 2 * 2**30
    assert parse_size("1500M", "--memory-max") == 1500 * MIB
    assert parse_size("1.5G", "--decode-budget") == 1536 * MIB
    assert parse_size("800000000", "--decode-budget") == 800_000_000
    for bad in ("2X", "", "-1G", "0", "G", "2 GB"):
        with pytest.raises(UsageError, match="is not a size"):
            parse_size(bad, "--memory-max")


def test_bad_sizes_are_usage_errors_on_the_command_line(tmp_path):
    from click.testing import CliRunner

    from edgemm.cli import cli

    for option in ("--memory-max", "--decode-budget"):
        result = CliRunner().invoke(cli, ["serve", str(tmp_path), option, "2 GB"])
        assert result.exit_code == 2, result.output
        assert f"Error: {option} '2 GB' is not a size such as 1500M or 2G." in result.output
        assert "Traceback" not in result.output


def test_allocator_is_bounded_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert bound_allocator()


def test_systemd_unit_passes_the_limit_and_bounds_the_allocator(tmp_path):
    from click.testing import CliRunner

    from edgemm.cli import cli

    unit = CliRunner().invoke(cli, ["serve", "--store", str(tmp_path), "--systemd-unit", "--memory-max", "1500M"]).output
    assert "MemoryMax=1500M" in unit and "MemoryHigh=1200M" in unit and "--memory-max 1500M" in unit
    assert "Environment=MALLOC_MMAP_THRESHOLD_=1048576" in unit and "Environment=MALLOC_ARENA_MAX=2" in unit
    default = CliRunner().invoke(cli, ["serve", "--store", str(tmp_path), "--systemd-unit"]).output
    assert "MemoryMax=2G" in default and "--memory-max 2G" in default
