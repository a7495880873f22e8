"""The sweep driver's small pieces, without Ray: where a sweep's paths go on a storage URI."""
from __future__ import annotations

from search.spec import parse_spec
from search.sweep import join_path, sweep_dir


def test_join_path_keeps_a_uri_query_string_at_the_end() -> None:
    assert join_path("s3://bucket/x?endpoint_override=127.0.0.1:9000&scheme=http", "sweep") == \
        "s3://bucket/x/sweep?endpoint_override=127.0.0.1:9000&scheme=http"
    assert join_path("s3://bucket/x/?region=eu-west-1", "sweep", "study") == "s3://bucket/x/sweep/study?region=eu-west-1"
    assert join_path("gs://bucket/sweeps", "a") == "gs://bucket/sweeps/a"
    assert join_path("/tmp/runs", "a", "b") == "/tmp/runs/a/b"


def test_sweep_dir_puts_the_name_before_the_query_string() -> None:
    spec = parse_spec({"name": "small", "family": "dann", "config": {"epochs": 1}})
    assert sweep_dir(spec, "s3://b/sweeps?endpoint_override=localhost:9000", None) == \
        "s3://b/sweeps/small?endpoint_override=localhost:9000"
    assert sweep_dir(spec, "s3://b/sweeps?endpoint_override=localhost:9000", "other") == \
        "s3://b/sweeps/other?endpoint_override=localhost:9000"
