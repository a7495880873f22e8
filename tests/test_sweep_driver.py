"""The sweep driver's small pieces, without Ray: where a sweep's paths go on a storage URI."""
from __future__ import annotations

from search.spec import parse_spec
from search.folder import sweep_dir
from trainables.storage import join as join_path


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


def test_resume_command_is_the_typed_line_plus_resume(monkeypatch) -> None:
    from search.cli import build_parser
    from search.commands.sweep import resume_command

    typed = ["sweep", "spec.yaml", "--set", "lr=0.01", "--address", "10.0.0.1:6379", "--set", "budget.trials=4",
             "--storage", "s3://b/x?endpoint_override=h:9000&scheme=http", "--tracking-uri", "http://head:5000", "--quiet"]
    monkeypatch.setattr("sys.argv", ["gentune", *typed])
    line = resume_command(build_parser().parse_args(typed))
    assert line == ("gentune sweep spec.yaml --set lr=0.01 --address 10.0.0.1:6379 --set budget.trials=4 --storage "
                    "'s3://b/x?endpoint_override=h:9000&scheme=http' --tracking-uri http://head:5000 --quiet --resume")
    monkeypatch.setattr("sys.argv", ["gentune", *typed, "--resume"])  # resumed once already: not twice
    assert resume_command(build_parser().parse_args([*typed, "--resume"])) == line


def test_resume_command_spells_out_options_when_called_in_process(monkeypatch) -> None:
    from search.cli import build_parser
    from search.commands.sweep import resume_command

    monkeypatch.setattr("sys.argv", ["pytest", "-q"])  # main(argv) from Python: sys.argv is someone else's
    args = build_parser().parse_args(["sweep", "s.yaml", "--set", "a=1", "--name", "n", "--address", "auto",
                                      "--tracking-uri", "http://h:5000", "--smoke"])
    assert resume_command(args) == ("gentune sweep s.yaml --set a=1 --name n --address auto --tracking-uri http://h:5000 "
                                    "--smoke --resume")
