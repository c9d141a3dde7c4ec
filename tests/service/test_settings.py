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


@pytest.mark.parametrize(
    "value, expected",
    [
        ("https://x.example", ["https://x.example"]),
        ("https://a.example, https://b.example", ["https://a.example", "https://b.example"]),
        ('["https://a.example", "https://b.example"]', ["https://a.example", "https://b.example"]),
        ("", []),
    ],
)
def test_list_settings_take_json_or_comma_separated_values(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    """A bare origin was a pydantic-settings traceback (found by an outside walkthrough)."""
    monkeypatch.setenv("CALMFIRST_CORS_ORIGINS", value)
    monkeypatch.setenv("CALMFIRST_PUBLIC_PATHS", value)
    assert Settings().cors_origins == expected and Settings().public_paths == expected


def test_a_broken_json_list_setting_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from service.cli import main

    monkeypatch.setenv("CALMFIRST_CORS_ORIGINS", '["https://x.example"')
    assert main(["serve", "--port", "8799"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("calmfirst serve: setting CALMFIRST_CORS_ORIGINS=") and "not a JSON list" in err
    assert "Traceback" not in err
