"""Settings that choose how the model runs: defaults per kind of process, bad values named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_spin_default_depends_on_the_process_and_the_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALMFIRST_ORT_SPIN", raising=False)
    s = Settings()
    assert (s.spin(serving=False), s.spin(serving=True)) == ("forward", "never")
    monkeypatch.setenv("CALMFIRST_ORT_SPIN", "always")
    s = Settings()
    assert (s.spin(serving=False), s.spin(serving=True)) == ("always", "always")


def test_bad_spin_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALMFIRST_ORT_SPIN", "sometimes")
    with pytest.raises(ValidationError, match="ort_spin"):
        Settings()
