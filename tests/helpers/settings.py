"""Settings as the process reads them: from environment variables set for one test."""

from __future__ import annotations

import pytest

from bullwait.errors import SettingsError
from bullwait.settings import Settings, load_settings


def load(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """The message of the SettingsError these variables raise; it must be one line."""
    with pytest.raises(SettingsError) as err:
        load(monkeypatch, **env)
    message = str(err.value)
    assert "\n" not in message
    return message
