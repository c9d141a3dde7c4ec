"""The experiment table of a model card: dev-split runs side by side, written from their metrics files.

Why a tool: the card's figures must be the ones ``calmfirst evaluate`` wrote, never typed by hand.
Each run is ``NAME=PATH`` (the JSON that ``calmfirst evaluate --split dev`` printed); the table
shows the real records overall and per region, the written records apart, and the contrast pairs.

    python -m training.ablations lora32=runs/abl-lora32/dev.json full=runs/abl-full/dev.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.breakdown import row_cells, table_head
from training.compare import CompareError, split_named

#: the breakdown groups a run is compared on (``source stc3``: the turns of real conversations, where context matters)
GROUPS: tuple[str, ...] = ("real", "real cn", "real tw", "real hk", "source stc3", "written")


def ablation_table(runs: Sequence[tuple[str, dict[str, Any]]], groups: Sequence[str] = GROUPS) -> list[str]:
    """Markdown rows: one per run and group (groups a run lacks are left out), then the contrast pairs."""
    lines = table_head("run", "group", "n")
    for name, metrics in runs:
        for g in groups:
            r = metrics.get("breakdown", {}).get(g)
            if r is not None:
                lines.append(f"| {name} | {g} | {r['n']} | {row_cells(r)} |")
    contrast = [(name, m["contrast"]) for name, m in runs if "contrast" in m]
    if contrast:
        lines += ["", "| run | contrast pairs right | contrast items right |", "|---|---|---|"]
        lines += [f"| {name} | {c['pair_accuracy']:.3f} | {c['item_accuracy']:.3f} |" for name, c in contrast]
    return lines


def parse_run(spec: str) -> tuple[str, dict[str, Any]]:
    try:
        name, path = split_named(spec, "run", "NAME=PATH")
    except CompareError as e:
        raise SystemExit(f"error: {e}") from e
    try:
        return name, json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: run {name!r}: cannot read {path}: {e}") from e


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.ablations", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="NAME=PATH of `calmfirst evaluate --split dev` metrics")
    args = p.parse_args(argv)
    print("\n".join(ablation_table([parse_run(s) for s in args.runs])))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
