"""The metrics object in process: private registries, every documented family, values read at scrape time."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from edgemm.serve.metrics import Metrics
from tests.serve.conftest import METRIC_FAMILIES


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) → value`` of everything :meth:`Metrics.render` exposes."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.render()) for s in family.samples}


def test_every_documented_family_is_exposed_and_parses():
    metrics = Metrics()
    metrics.watch_model(lambda: {"name": "kiosk", "device": "cpu"})
    families = {f.name: f.type for f in text_string_to_metric_families(metrics.render())}
    # This process keeps prometheus-client's ``*_created`` series; the server turns them off.
    assert {name: kind for name, kind in families.items() if not name.endswith("_created")} == METRIC_FAMILIES


def test_each_app_has_its_own_registry_and_the_global_one_stays_empty():
    first, second = Metrics(), Metrics()
    first.observe_response(200, 0.003)
    first.observe_response(415, 0.001, "unsupported_media")
    first.observe_batch(3)
    first.count_cancelled()
    first.count_reload("ok")
    got = samples(first)
    assert got[("edgemm_requests_total", (("status", "200"),))] == 1
    assert got[("edgemm_errors_total", (("code", "unsupported_media"),))] == 1
    assert got[("edgemm_request_duration_seconds_count", ())] == 2
    assert got[("edgemm_batch_size_bucket", (("le", "2.0"),))] == 0
    assert got[("edgemm_batch_size_bucket", (("le", "4.0"),))] == 1
    assert got[("edgemm_cancelled_total", ())] == 1
    assert got[("edgemm_reloads_total", (("result", "ok"),))] == 1
    assert samples(second)[("edgemm_cancelled_total", ())] == 0
    assert ("edgemm_requests_total", (("status", "200"),)) not in samples(second)
    assert not [family.name for family in REGISTRY.collect() if family.name.startswith("edgemm")]


def test_gauges_and_model_info_are_read_when_scraped():
    metrics = Metrics()
    depth = [0]
    metrics.watch("edgemm_queue_depth", lambda: depth[0])
    model = {}
    metrics.watch_model(lambda: model)
    assert samples(metrics)[("edgemm_queue_depth", ())] == 0
    assert not [key for key in samples(metrics) if key[0] == "edgemm_model_info"]
    depth[0] = 7
    model.update(name='a "quoted"\nname', version="2")
    got = samples(metrics)
    assert got[("edgemm_queue_depth", ())] == 7
    assert got[("edgemm_model_info", (("name", 'a "quoted"\nname'), ("version", "2")))] == 1
