"""The root settings: profile, data directory, servers, and the groups of `settings.*`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from settings.auth import AuthSettings
from settings.monitoring import MonitoringSettings
from settings.promotion import PromotionSettings
from settings.serving import ServingSettings
from settings.stream import StreamSettings

ProfileName = Literal["local", "prod", "cluster"]
PROFILES: tuple[ProfileName, ...] = get_args(ProfileName)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "FRAUDPIPE_"

SERVER_URLS = ("bus_url", "online_url", "mlflow_pg_url", "feast_pg_url", "dagster_pg_url")
"""What the prod and cluster profiles need from outside: their servers' URLs."""


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variables and the fix."""


class Settings(BaseSettings):
    """Everything configurable, read from `FRAUDPIPE_*` variables; see `docs/configuration.md`.

    Nested groups take a double underscore: `FRAUDPIPE_STREAM__BATCH_SIZE=500`.
    URLs that may hold a password are `SecretStr`: they print as stars.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=PROJECT_ROOT / ".env",
        extra="ignore",
        frozen=True,
    )

    profile: ProfileName = Field(
        "local", description="local (files, SQLite), prod (servers) or cluster (+ Ray)"
    )
    data_dir: Path = Field(PROJECT_ROOT / "data", description="the lake, source data and local stores")
    source: Literal["files", "stream"] = Field(
        "files", description="where ingestion reads raw events: the source files or the stream's landing"
    )
    feast_project: str = Field("fraudpipe", min_length=1, description="Feast project name")
    model_name: str = Field("fraud_model", min_length=1, description="registered model (and experiment) name")
    bus_url: SecretStr | None = Field(None, description="prod: kafka://host:9092,... or redis://host:6379/1")
    online_url: SecretStr | None = Field(None, description="prod: online event buffers, redis://host:6379/0")
    mlflow_pg_url: SecretStr | None = Field(None, description="prod: MLflow tracking and registry database")
    feast_pg_url: SecretStr | None = Field(None, description="prod: Feast registry database")
    dagster_pg_url: SecretStr | None = Field(None, description="prod: Dagster instance database")
    pg_admin_url: SecretStr | None = Field(
        None,
        description="prod-init only: a PostgreSQL role that may create roles and databases; it gives "
        "each service's role its own database and nothing else (never set for the services)",
    )
    ray_address: str | None = Field(None, description="cluster: host:port of the Ray head")
    ray_auth_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("RAY_AUTH_TOKEN"),
        description="Ray's own RAY_AUTH_TOKEN: the cluster's token, when not in a token file",
    )
    ray_auth_token_path: Path = Field(
        Path.home() / ".ray" / "auth_token",
        validation_alias=AliasChoices("RAY_AUTH_TOKEN_PATH"),
        description="Ray's own RAY_AUTH_TOKEN_PATH: where a local Ray keeps its token",
    )
    dagster_port: int = Field(3000, ge=1, le=65535, description="Dagster UI (make dev) on 127.0.0.1")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="MLflow UI (make mlflow) on 127.0.0.1")
    stream: StreamSettings = StreamSettings()
    serving: ServingSettings = ServingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    promotion: PromotionSettings = PromotionSettings()
    auth: AuthSettings = AuthSettings()

    @model_validator(mode="after")
    def _servers_of_the_profile(self) -> Settings:
        if self.profile == "local":
            return self
        needed = [*SERVER_URLS, *(("ray_address",) if self.profile == "cluster" else ())]
        missing = [f"{ENV_PREFIX}{name.upper()}" for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"the {self.profile} profile needs {', '.join(missing)}: copy .env.prod.example to .env "
                "and fill it in (or export them)"
            )
        return self

    def to_env(self) -> dict[str, str]:
        """These settings as the `FRAUDPIPE_*` variables that reproduce them in a child process.

        Secrets are included (a child needs them; the environment, unlike argv, is not public).
        Ray's own token variables are not: Ray reads them itself.
        """
        env: dict[str, str] = {}

        def put(prefix: str, values: dict[str, object]) -> None:
            for name, value in values.items():
                if isinstance(value, dict):
                    put(f"{prefix}{name.upper()}__", value)
                elif value is not None:
                    env[f"{prefix}{name.upper()}"] = (
                        json.dumps(value) if isinstance(value, list | tuple | bool) else str(value)
                    )

        # Nor the PostgreSQL admin's URL: prod-init needs it, no child process ever does.
        fields = self.model_dump(
            mode="json", exclude={"ray_auth_token", "ray_auth_token_path", "pg_admin_url"}
        )
        _reveal_secrets(self, fields)
        fields["data_dir"] = str(self.data)
        put(ENV_PREFIX, fields)
        return env

    def ray_token(self) -> str | None:
        """The Ray cluster's token, as Ray itself looks it up: the variable, then the token file."""
        if self.ray_auth_token is not None:
            return self.ray_auth_token.get_secret_value()
        path = self.ray_auth_token_path.expanduser()
        return path.read_text().strip() if path.exists() else None

    @property
    def ray_dashboard_url(self) -> str:
        """Ray's dashboard, where Serve's REST API answers: the local one, or the cluster head's."""
        host = self.ray_address.rpartition(":")[0] if self.ray_address else "127.0.0.1"
        return f"http://{host}:{self.serving.ray_dashboard_port}"

    @property
    def data(self) -> Path:
        """The data directory, absolute."""
        return self.data_dir.expanduser().resolve()

    def resolved_bus_url(self) -> str:
        if self.bus_url is None:
            return f"kafka-local://{self.data / 'stream' / 'broker.json'}"
        return self.bus_url.get_secret_value()

    def resolved_online_url(self) -> str:
        if self.online_url is None:
            return f"sqlite:///{self.data / 'online' / 'event_buffers.db'}"
        return self.online_url.get_secret_value()

    def mlflow_tracking_uri(self) -> str:
        if self.mlflow_pg_url is None:
            return f"sqlite:///{self.data / 'mlflow' / 'mlflow.db'}"
        return self.mlflow_pg_url.get_secret_value()

    @property
    def mlflow_artifact_root(self) -> Path:
        return self.data / "mlflow" / "artifacts"

    @property
    def landing_path(self) -> Path:
        return self.data / "stream" / "landing"

    @property
    def lake_root(self) -> Path:
        return self.data / "lake"

    @property
    def source_path(self) -> Path:
        return self.data / "source"


def _reveal_secrets(model: BaseModel, dumped: dict[str, Any]) -> None:
    """Put the values of `model`'s secrets, nested groups' included, in its JSON dump, in place of stars."""
    for name in dumped:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            dumped[name] = value.get_secret_value()
        elif isinstance(value, BaseModel):
            _reveal_secrets(value, dumped[name])


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = "__".join(str(part) for part in item["loc"]).upper()
        variable = f"{ENV_PREFIX}{path}" if path else "settings"
        secret = any("url" in str(part) for part in item["loc"])  # never echo a URL: it may hold a password
        shown = (
            ""
            if secret or "input" not in item or item["type"] == "value_error"
            else f" (got {item['input']!r})"
        )
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{variable}: {message}{shown}")
    return "\n".join(lines)


def load_settings(**overrides: object) -> Settings:
    """The settings of this process: environment and `.env`, then `overrides` (tests, commands' options).

    Raises:
        SettingsError: naming each bad or missing variable, one line each.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


def load_settings_or_exit(**overrides: object) -> Settings:
    """`load_settings()` for a command's entry point: a bad or missing setting ends the process.

    The message (which variables, and what to do) goes to stderr, red on a terminal, and the
    process exits with status 2, no traceback. Plain `print` and `SystemExit`: this layer imports
    no command-line framework, and any command (typer's, argparse's, none) may call it.
    """
    try:
        return load_settings(**overrides)
    except SettingsError as err:
        message = str(err)
        if sys.stderr.isatty():
            message = f"\033[31m{message}\033[0m"
        print(message, file=sys.stderr)
        raise SystemExit(2) from None
