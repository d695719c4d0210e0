"""One settings layer: the only reader of the environment, every knob once, every config file in step."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from serving.deploy import serve_config
from settings import PROJECT_ROOT, Settings, SettingsError, StreamSettings, load_settings
from settings.base import ENV_PREFIX
from settings.serving import ServingSettings
from settings.stream import KafkaSecurity, RedisTls

MACHINERY_AND_ABOVE = (
    "feature_repo",
    "serving",
    "streaming",
    "monitoring",
    "modeling",
    "expectations",
    "simulator",
    "orchestration",
    "assets",
    "demo",
    "infra",
)


def env_names(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> set[str]:
    """Every FRAUDPIPE_* variable the settings read, nested groups with a double underscore."""
    names = set()
    for name, field in model.model_fields.items():
        if field.validation_alias is not None:
            continue  # Ray's own variables (RAY_AUTH_TOKEN...), read under Ray's names
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= env_names(annotation, f"{prefix}{name.upper()}__")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def test_defaults_need_nothing_and_name_the_local_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in env_names():
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(data_dir=PROJECT_ROOT / "data")
    assert settings.profile == "local" and settings.data == PROJECT_ROOT / "data"
    assert settings.resolved_bus_url() == f"kafka-local://{PROJECT_ROOT / 'data' / 'stream' / 'broker.json'}"
    assert settings.mlflow_tracking_uri() == f"sqlite:///{PROJECT_ROOT / 'data' / 'mlflow' / 'mlflow.db'}"
    assert settings.serving.url == "http://127.0.0.1:8000"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"FRAUDPIPE_PROFILE": "test"}, "FRAUDPIPE_PROFILE: Input should be 'local', 'prod' or 'cluster'"),
        ({"FRAUDPIPE_STREAM__BATCH_SIZE": "0"}, "FRAUDPIPE_STREAM__BATCH_SIZE: Input should be greater than"),
        (
            {"FRAUDPIPE_SERVING__RUNTIME__THRESHOLD": "2"},
            "FRAUDPIPE_SERVING__RUNTIME__THRESHOLD: Input should",
        ),
        ({"FRAUDPIPE_PROFILE": "prod"}, "the prod profile needs FRAUDPIPE_BUS_URL, FRAUDPIPE_ONLINE_URL"),
        (
            {"FRAUDPIPE_STREAM__KAFKA__SECURITY_PROTOCOL": "SASL_SSL"},
            "security protocol SASL_SSL needs FRAUDPIPE_STREAM__KAFKA__SASL_MECHANISM, "
            "FRAUDPIPE_STREAM__KAFKA__SASL_USERNAME, FRAUDPIPE_STREAM__KAFKA__SASL_PASSWORD",
        ),
        (
            {"FRAUDPIPE_STREAM__KAFKA__SASL_PASSWORD": "hunter2"},
            "FRAUDPIPE_STREAM__KAFKA__SASL_PASSWORD: only for security protocol SASL_PLAINTEXT or SASL_SSL",
        ),
        (
            {"FRAUDPIPE_STREAM__REDIS__CA_FILE": "/nonexistent/ca.pem"},
            "FRAUDPIPE_STREAM__REDIS__CA_FILE: Path does not point to a file",
        ),
        (
            {
                "FRAUDPIPE_PROFILE": "cluster",
                **{
                    f"FRAUDPIPE_{n}": "x"
                    for n in ("BUS_URL", "ONLINE_URL", "MLFLOW_PG_URL", "FEAST_PG_URL", "DAGSTER_PG_URL")
                },
            },
            "the cluster profile needs FRAUDPIPE_RAY_ADDRESS",
        ),
    ],
)
def test_a_bad_or_missing_variable_is_named_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings()


def test_a_url_with_a_password_never_reaches_a_message_or_a_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "postgresql://app:hunter2@db:5432/mlflow"
    monkeypatch.setenv("FRAUDPIPE_PROFILE", "prod")
    monkeypatch.setenv("FRAUDPIPE_MLFLOW_PG_URL", secret)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "hunter2" not in str(refused.value)
    settings = load_settings(
        bus_url="redis://:hunter2@r:6379/1", online_url="redis://r", feast_pg_url="x", dagster_pg_url="x"
    )
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())
    assert settings.mlflow_tracking_uri() == secret


def test_the_environment_a_child_gets_reproduces_the_settings(tmp_path: Path) -> None:
    """Secrets too, nested ones included: a child must reach the servers its parent reaches."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed by the settings")
    kafka = KafkaSecurity(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="fraudpipe",
        sasl_password="hunter2",
        ssl_ca_location=ca,
    )
    settings = load_settings(
        data_dir=tmp_path,
        bus_url="kafka://broker:9093",
        stream=StreamSettings(
            topic_prefix="t.", batch_size=7, online_prefix="p_", kafka=kafka, redis=RedisTls(ca_file=ca)
        ),
        monitoring={"ignored_features": ("A", "B"), "cooldown_days": 2},
        serving={
            "port": 8123,
            "access_log": True,
            "runtime": {"threshold": 0.7, "rollout": {"mode": "shadow"}},
        },
    )
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from settings import load_settings; settings = load_settings(); "
            "print(settings.model_dump_json()); print(json.dumps(settings.to_env()))",
        ],
        env={"PATH": "/usr/bin:/bin", **settings.to_env()},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    dumped, env = child.stdout.splitlines()
    assert json.loads(dumped) == json.loads(settings.model_dump_json())  # secrets as stars
    assert json.loads(env) == settings.to_env()  # secrets in clear
    assert settings.to_env()["FRAUDPIPE_STREAM__KAFKA__SASL_PASSWORD"] == "hunter2"


def _environment_reads(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("environ", "getenv")
            and getattr(node.value, "id", "") == "os"
        ):
            found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "EnvVar"
            and getattr(node.value, "id", "") == "dg"
        ):
            found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    return found


# Passing the environment on to a child process whole, which is not reading a setting.
PASSES_ENVIRONMENT_ON = {"orchestration/cli.py", "settings/__main__.py", "serving/deploy.py"}
"""Modules that set variables for child processes (serving.deploy: Ray's own, while it starts)."""


def test_only_the_settings_layer_reads_the_environment() -> None:
    reads = [
        read
        for package in MACHINERY_AND_ABOVE
        for path in sorted((PROJECT_ROOT / package).rglob("*.py"))
        for read in _environment_reads(path)
        if read.split(":")[0] not in PASSES_ENVIRONMENT_ON
    ]
    assert not reads, f"read the environment outside settings/: {reads}"


def test_the_serve_config_is_the_settings(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path, serving={"port": 8111, "max_queued_requests": 9, "replicas": 3}
    )
    config = serve_config(settings)
    deployment = config["applications"][0]["deployments"][0]
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8111, "request_timeout_s": 10.0}
    assert (deployment["num_replicas"], deployment["max_queued_requests"]) == (3, 9)
    assert deployment["user_config"] == settings.serving.runtime.model_dump(mode="json")
    assert config["applications"][0]["runtime_env"]["env_vars"] == {
        "FRAUDPIPE_PROFILE": "local",
        "FRAUDPIPE_DATA_DIR": str(tmp_path.resolve()),
    }


def test_autoscaling_is_a_setting_of_every_profile(tmp_path: Path) -> None:
    """Unset, only the cluster profile autoscales (with Serve's look-back and metrics interval); set,
    any profile does, with the settings' bounds, target and delays."""
    local = serve_config(load_settings(data_dir=tmp_path))["applications"][0]["deployments"][0]
    assert local["num_replicas"] == 1 and "autoscaling_config" not in local

    cluster = Settings.model_construct(profile="cluster", data_dir=tmp_path)
    deployment = serve_config(cluster)["applications"][0]["deployments"][0]
    assert "num_replicas" not in deployment
    assert deployment["autoscaling_config"] == {
        "min_replicas": 2,
        "max_replicas": 16,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 10,
        "downscale_delay_s": 300,
    }

    serving = {
        "autoscale": True,
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 3,
        "upscale_delay_s": 2,
        "downscale_delay_s": 15,
        "autoscaling_look_back_s": 4,
        "autoscaling_metrics_interval_s": 0.5,
    }
    with pytest.warns(DeprecationWarning, match="metrics_interval_s"):  # Serve's, about its own field
        config = serve_config(load_settings(data_dir=tmp_path, serving=serving))
    deployment = config["applications"][0]["deployments"][0]
    assert "num_replicas" not in deployment
    assert deployment["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 3,
        "upscale_delay_s": 2,
        "downscale_delay_s": 15,
        "look_back_period_s": 4,
        "metrics_interval_s": 0.5,
    }

    off = Settings.model_construct(
        profile="cluster", data_dir=tmp_path, serving=ServingSettings(autoscale=False)
    )
    assert serve_config(off)["applications"][0]["deployments"][0]["num_replicas"] == 1


def _placeholders(text: str) -> set[str]:
    return set(re.findall(r"\$\{(\w+)\}", text)) | set(re.findall(r"(?m)env: (\w+)", text))


@pytest.mark.parametrize(
    "path",
    [
        *sorted((PROJECT_ROOT / "feature_repo" / "profiles").glob("*/feature_store.yaml")),
        *sorted((PROJECT_ROOT / "orchestration" / "instance").glob("*/dagster.yaml")),
    ],
    ids=lambda p: str(p.relative_to(PROJECT_ROOT)),
)
def test_every_variable_a_config_file_reads_is_a_setting(path: Path) -> None:
    """Feast's yaml placeholders and Dagster's instance `env:` keys name settings, nothing else."""
    used = _placeholders(path.read_text())
    assert used <= env_names(), used - env_names()


def test_every_feast_placeholder_is_filled_for_each_profile(tmp_path: Path) -> None:
    from feature_repo.store import FeastStore

    for profile in ("local", "prod", "cluster"):
        store = FeastStore(profile, tmp_path, "p", "postgresql://x/y", "127.0.0.1:1")
        config: dict[str, Any] = store.repo_config().model_dump(mode="json")
        assert "${" not in yaml.safe_dump(config), profile


def test_the_configuration_reference_is_the_settings() -> None:
    from settings.docs import reference

    assert (PROJECT_ROOT / "docs" / "configuration.md").read_text() == reference(), (
        "docs/configuration.md is stale: python -m settings docs > docs/configuration.md"
    )
