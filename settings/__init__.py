"""The one reader of the environment: every knob of fraudpipe, with its unit and default, validated once.

`load_settings()` reads `FRAUDPIPE_*` variables (and `.env` at the project's
root, if present) into a `Settings`; every process calls it once at its entry
point (a command: `load_settings_or_exit()`, which ends it with the message and
exit status 2) and passes what it needs down. Nothing else reads the environment, and
this package imports no framework, so a Ray Serve replica or a stream
consumer loads only what it runs.
"""

from settings.auth import ApiKeyGuard, ApiKeys, AuthSettings
from settings.base import (
    PROFILES,
    PROJECT_ROOT,
    ProfileName,
    Settings,
    SettingsError,
    load_settings,
    load_settings_or_exit,
)
from settings.monitoring import MonitoringSettings
from settings.promotion import PromotionSettings
from settings.serving import Device, Rollout, RolloutMode, ServingConfig, ServingSettings
from settings.stream import StreamSettings

__all__ = [
    "PROFILES",
    "PROJECT_ROOT",
    "ApiKeyGuard",
    "ApiKeys",
    "AuthSettings",
    "Device",
    "MonitoringSettings",
    "ProfileName",
    "PromotionSettings",
    "Rollout",
    "RolloutMode",
    "ServingConfig",
    "ServingSettings",
    "Settings",
    "SettingsError",
    "StreamSettings",
    "load_settings",
    "load_settings_or_exit",
]
