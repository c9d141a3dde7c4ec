"""The wheel a user installs carries what the service loads from the package, and not the local caches.

Why a test: ``service/routing/agent_model.py`` finds the agent-turn model next to the installed
packages (``model/agent_steps``); when the package data left it out, a plain ``pip install``
quietly fell back to the TF-IDF detector. The ONNX export cache under ``model/default/onnx/`` is
built locally (150 MB) and must never be packed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Files the service or the CLI read from the installed package.
REQUIRED = (
    "model/default/calmfirst_config.json",
    "model/default/calmfirst_heads.safetensors",
    "model/agent_steps/agent_model.json",
    "model/agent_steps/agent_heads.safetensors",
    "model/agent_steps/agent_ngrams.json",
    "model/templates/model_card.md.j2",
    "service/routing/playbook.yaml",
    "service/api/static/console.html",
    "data/contrast/contrast_v1.jsonl",
)


def _builds_wheels_offline() -> bool:
    """setuptools >= 70 builds wheels by itself, so this environment can build without the index."""
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 70


def test_wheel_carries_the_models_and_no_export_cache(tmp_path: Path) -> None:
    # built from the tracked files only, as a release is: a local build/ or export cache must not decide it
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    src = tmp_path / "src"
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    # a local export cache, as `make run` leaves one: it must stay out of the wheel
    (src / "model/default/onnx/cachekey").mkdir(parents=True)
    (src / "model/default/onnx/cachekey/model.onnx").write_bytes(b"x")
    # otherwise pip sets up an isolated build environment from the package index, as `pip install` does
    isolation = ["--no-build-isolation"] if _builds_wheels_offline() else []
    out = tmp_path / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (whl,) = out.glob("calmfirst-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    missing = [n for n in REQUIRED if n not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert not [n for n in names if n.startswith("model/default/onnx/")]
    assert not [n for n in names if n.startswith(("work/", "runs/", "tests/"))]
