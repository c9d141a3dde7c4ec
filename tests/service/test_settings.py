"""Settings that choose how the model runs: defaults per kind of process, bad values named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_spin_and_slots_default_to_low_latency_and_the_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALMFIRST_ORT_SPIN", raising=False)
    monkeypatch.delenv("CALMFIRST_MICROBATCH_CONCURRENCY", raising=False)
    s = Settings()
    assert (s.ort_spin, s.microbatch_concurrency) == ("forward", 1)
    monkeypatch.setenv("CALMFIRST_ORT_SPIN", "never")
    monkeypatch.setenv("CALMFIRST_MICROBATCH_CONCURRENCY", "2")
    s = Settings()
    assert (s.ort_spin, s.microbatch_concurrency) == ("never", 2)


def test_bad_spin_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALMFIRST_ORT_SPIN", "sometimes")
    with pytest.raises(ValidationError, match="ort_spin"):
        Settings()
