"""cluster.yaml passes Ray's own cluster-config validation (schema + launcher checks, no cloud calls),
and says what docs/cluster.md promises: CPU head, autoscaling GPU workers, gentune installed from the
repository, MLflow on the head's private address, no credentials."""
from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster.yaml"
DOC = REPO / "docs" / "cluster.md"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    """The config as `ray up` sees it: merged with the AWS defaults, then validated against ray-schema.json."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    return cfg


def test_ray_validation_accepts_cluster_yaml(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_ray_validation_would_catch_a_broken_config(raw):
    """The check above is real: the same validator refuses a typo'd key and a head type that is not defined."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(raw)
    bad["max_worker"] = 3  # typo of max_workers
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(raw)
    bad["head_node_type"] = "no.such.type"
    with pytest.raises(ValueError):
        validate_config(prepare_config(bad))


def test_cpu_head_and_autoscaling_gpu_workers(prepared):
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU") == 0, "trials must not be scheduled on the head"
    workers = {k: v for k, v in types.items() if k != prepared["head_node_type"]}
    assert workers and all(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    assert all(v.get("min_workers", 0) == 0 and v["max_workers"] >= 1 for v in workers.values()), "autoscaling from zero"
    assert any(v["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for v in workers.values())
    families = {v["node_config"]["InstanceType"].split(".")[0] for v in workers.values()}
    assert families & {"g5", "g6", "p4d", "p5"}
    assert prepared["provider"].get("cache_stopped_nodes") is False  # spot nodes cannot be stopped


def test_every_node_installs_gentune_from_the_repository(prepared):
    for key in ("head_setup_commands", "worker_setup_commands"):  # prepare_config merges setup_commands into both
        cmds = "\n".join(prepared[key])
        assert re.search(r"git clone \S+gentune\S*\.git", cmds), key
        assert re.search(r"pip install (-e|--editable) ~/gentune", cmds), key
        assert "ray[" in cmds and "==" in cmds, f"{key}: Ray pinned to the launcher's version"


def test_mlflow_server_on_the_head_binds_the_private_address(prepared):
    cmds = prepared["head_start_ray_commands"]
    server = [c for c in cmds if "mlflow server" in c]
    assert len(server) == 1
    argv = shlex.split(server[0].replace("$(", "(").replace("nohup ", ""))  # good enough to read the flags
    host = argv[argv.index("--host") + 1]
    assert "hostname -I" in host, f"MLflow must bind the head's private IP, got {host}"
    assert argv[argv.index("--port") + 1] == "5000"
    store = argv[argv.index("--backend-store-uri") + 1]
    assert store.startswith(("sqlite:///", "postgresql://"))
    ray_start = next(c for c in cmds if "ray start --head" in c)
    assert "--dashboard-host=127.0.0.1" in ray_start
    for key in ("head_start_ray_commands", "worker_start_ray_commands", "head_setup_commands", "worker_setup_commands"):
        assert not any("0.0.0.0" in c for c in prepared[key]), f"{key} opens something on every interface"


def test_shared_storage_is_an_s3_placeholder_explained_in_comments():
    text = CLUSTER.read_text()
    assert "s3://YOUR_BUCKET/" in text
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    assert "storage_path" in comments and "--storage s3://" in comments


def test_no_credentials_in_cluster_yaml(raw):
    text = CLUSTER.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "an AWS access key id"
    assert not re.search(r"(?i)(aws_secret_access_key|aws_session_token|password\s*[:=])\s*\S", text)
    assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text)
    assert "ssh_private_key" not in raw.get("auth", {})
    assert not re.search(r"postgresql://[^@\s]+:[^@\s]+@", text), "a password inside a database URI"
    assert "RAY_AUTH_MODE" not in text, "Ray's authentication must stay at its default"


def test_docs_give_the_commands_and_they_match_the_cli():
    doc = DOC.read_text()
    assert "ray up cluster.yaml" in doc
    assert re.search(r"gentune sweep search/specs/dann\.yaml --address auto\s*\\?\s*--storage s3://\S+ "
                     r"--tracking-uri http://<head-private-ip>:5000", doc)
    assert re.search(r"ssh .*-L 5000:<head-private-ip>:5000", doc, re.S)
    assert "ray attach cluster.yaml" in doc and "ray down cluster.yaml" in doc
    from search.cli import build_parser

    sweep = build_parser()._subparsers._group_actions[0].choices["sweep"]
    flags = {s for a in sweep._actions for s in a.option_strings}
    assert {"--address", "--storage", "--tracking-uri", "--resume"} <= flags
    assert "--resume" in doc
    assert (REPO / "search" / "specs" / "dann.yaml").exists()
