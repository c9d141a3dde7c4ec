"""``calmfirst score``: files of messages scored in chunks, streaming, order-preserving, bad lines skipped."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import IO

from tqdm import tqdm

from service.analyzer import Analyzer
from service.io.readers import BadLine, Record, count_lines, read_records
from service.io.writers import ResultWriter

logger = logging.getLogger(__name__)


@dataclass
class ScoreReport:
    scored: int = 0
    bad: list[BadLine] = field(default_factory=list)


def score_file(
    analyzer: Analyzer,
    source: str,
    out: IO[str],
    *,
    out_format: str = "jsonl",
    text_field: str = "text",
    id_field: str = "id",
    chunk_size: int = 2048,
    lang: str | None = None,
    progress: bool | None = None,
    err: IO[str] | None = None,
    stdin: IO[str] | None = None,
) -> ScoreReport:
    """Score a file in bounded chunks; output order equals input order.

    Each chunk is scored as one call, which sorts it by length and pads per batch: bigger chunks
    waste less padding (on real messages 512 -> 92%, 2048 -> 97% of tokens are real).
    """
    err = err or sys.stderr
    report = ScoreReport()
    writer = ResultWriter(out, out_format)
    total = count_lines(source) if source != "-" else None
    show = progress if progress is not None else (total is not None and total >= 1000)
    bar = tqdm(total=total, unit="msg", file=err, disable=not show, dynamic_ncols=True)
    pending: list[Record] = []
    started = time.perf_counter()

    def flush() -> None:
        if not pending:
            return
        for res in analyzer.analyze([r.text for r in pending], ids=[r.id for r in pending], lang=lang):
            writer.write(res)
        report.scored += len(pending)
        bar.update(len(pending))
        pending.clear()

    try:
        for item in read_records(source, text_field=text_field, id_field=id_field, stdin=stdin):
            if isinstance(item, BadLine):
                report.bad.append(item)
                err.write(item.report(source))  # names the file, also inside a folder or glob
                continue
            pending.append(item)
            if len(pending) >= chunk_size:
                flush()
        flush()
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    logger.info(
        "scored %d messages in %.3f s (%.1f messages/s, model load excluded)",
        report.scored,
        elapsed,
        report.scored / elapsed if elapsed > 0 else 0.0,
    )
    return report
