"""The invoker's settings: numbers are checked, and a bad value names its variable."""

from __future__ import annotations

import pytest

from lakehouse.config import load_settings


def test_invoker_settings_defaults_and_overrides(monkeypatch) -> None:
    settings = load_settings()
    assert (settings.invoker_dispatch_workers, settings.invoker_lease, settings.invoker_retry_base) == (8, 30.0, 2.0)
    monkeypatch.setenv("LAKEHOUSE_INVOKER_WORKERS", "2")
    monkeypatch.setenv("LAKEHOUSE_INVOKER_RETRY_MAX", "60")
    settings = load_settings()
    assert (settings.invoker_dispatch_workers, settings.invoker_retry_max) == (2, 60.0)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LAKEHOUSE_INVOKER_WORKERS", "eight", "LAKEHOUSE_INVOKER_WORKERS must be an integer, got 'eight'"),
        ("LAKEHOUSE_INVOKER_RETRY_BASE", "2s", "LAKEHOUSE_INVOKER_RETRY_BASE must be a number, got '2s'"),
        ("LAKEHOUSE_INVOKER_DB_POOL", "0", "LAKEHOUSE_INVOKER_DB_POOL must be at least 1"),
        ("LAKEHOUSE_INVOKER_WORKERS", "0", "LAKEHOUSE_INVOKER_WORKERS must be at least 1"),
        ("LAKEHOUSE_INVOKER_LEASE", "0", "LAKEHOUSE_INVOKER_LEASE must be at least 1"),
    ],
)
def test_bad_invoker_setting_is_an_error_naming_the_variable(monkeypatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        load_settings()
