"""The serving tokenizer as a SentencePiece model: the same ids as ``tokenizer.json``, a fifth of the memory.

The backbone's tokenizer is XLM-R's SentencePiece unigram model (250,002 pieces). Loaded through
``tokenizers`` from ``tokenizer.json`` it takes about 275 MB of RAM in every serving process (its
trie of 250k pieces is built from JSON strings); SentencePiece's own double-array trie takes about
50 MB and tokenizes several times faster. The export writes ``tokenizer.spm`` next to
``tokenizer.json`` when the tokenizer is such a model (unigram, SentencePiece's precompiled
normaliser, ``▁`` word boundaries) and SentencePiece reproduces its ids on the check texts; the
runtime prefers it when the ``sentencepiece`` package is installed, and falls back to
``tokenizer.json`` otherwise.

Same ids: the special tokens (``<s>``, ``</s>``, ``<unk>``, ``<pad>``, ``<mask>``) are matched in the
raw text as ``tokenizers`` does, every other stretch is encoded by SentencePiece, and the template
``<s> … </s>`` is added after truncating the content to ``max_length - 2``. On the 4,615 test and
benchmark texts the ids were identical except in four: three runs of repeated punctuation
(``??????``, ``。。。。``) where two segmentations score exactly the same and the two libraries break
the tie differently (same pieces, other order), and a text holding literal special-token strings
before that was handled.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Texts whose ids must come out the same from both tokenizers, or no ``tokenizer.spm`` is written.
CHECK_TEXTS = (
    "query: 你们的快递到现在还没到，已经等了一个星期了！",
    "query: 請問退款要多久才會到帳？ 謝謝",
    "query: 垃圾服务，再也不来了 😡😡",
    "query: Hello  WORLD 123 ！！ ｆｕｌｌｗｉｄｔｈ",
    "query: 好",
    "query:   多个   空格  \t 換行\n",
    "query: <unk> 我 <mask></s>",
)


def sentencepiece_available() -> bool:
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        return False
    return True


def build_spm(tokenizer_json: Path, out: Path) -> bool:
    """Write ``out`` (a SentencePiece ModelProto) from a unigram ``tokenizer.json``; False when it is not one."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        return False
    tj = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model, normalizer, pre = tj.get("model") or {}, tj.get("normalizer") or {}, tj.get("pre_tokenizer") or {}
    pre_types = {p.get("type") for p in pre.get("pretokenizers", [pre])}
    # SentencePiece's normaliser: its precompiled charsmap, optionally followed by squeezing runs of spaces
    # (which remove_extra_whitespaces does too); as saved by transformers, or as the bare Precompiled one
    steps = normalizer.get("normalizers", [normalizer])
    extra = [n for n in steps[1:] if n != {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]
    if (
        model.get("type") != "Unigram"
        or model.get("byte_fallback")
        or not steps
        or steps[0].get("type") != "Precompiled"
        or extra
        or pre_types != {"WhitespaceSplit", "Metaspace"}  # words split on whitespace first, as SentencePiece does
    ):
        return False
    normalizer = steps[0]
    specials = {t["content"]: t["id"] for t in tj.get("added_tokens", []) if t.get("special")}
    pb: Any = sentencepiece_model_pb2  # generated protobuf classes (no type information)
    proto = pb.ModelProto()
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.UNIGRAM
    spec.vocab_size = len(model["vocab"])
    for name, piece in (("unk", "<unk>"), ("bos", "<s>"), ("eos", "</s>"), ("pad", "<pad>")):
        setattr(spec, f"{name}_id", specials.get(piece, -1))
        setattr(spec, f"{name}_piece", piece)
    proto.normalizer_spec.name = "identity_with_charsmap"
    proto.normalizer_spec.precompiled_charsmap = base64.b64decode(normalizer["precompiled_charsmap"])
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True
    proto.normalizer_spec.escape_whitespaces = True
    kinds = pb.ModelProto.SentencePiece
    for i, (piece, score) in enumerate(model["vocab"]):
        p = proto.pieces.add()
        p.piece, p.score = piece, score
        if i == model.get("unk_id"):
            p.type = kinds.UNKNOWN
        elif piece in specials:
            p.type = kinds.CONTROL if specials[piece] < 4 else kinds.USER_DEFINED
        else:
            p.type = kinds.NORMAL
    out.write_bytes(proto.SerializeToString())
    (out.with_suffix(".specials.json")).write_text(json.dumps(specials, ensure_ascii=False))
    return True


@dataclass
class _Encoding:
    ids: list[int]


#: Loaded SentencePiece models by content: the customer model's export and the agent-turn encoder's carry the
#: same e5 tokenizer, and one processor (about 54 MB) serves both. Held while a tokenizer uses it.
_PROCESSORS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_PROCESSORS_LOCK = threading.Lock()


def _processor(model_file: Path) -> Any:
    """The ``SentencePieceProcessor`` of ``model_file``, shared by every tokenizer of the same model.

    Sharing is safe: tokenizers only call ``encode`` and ``piece_to_id``/``id_to_piece``, which read the
    model; truncation and special tokens are kept per ``SpmTokenizer``.
    """
    import sentencepiece

    data = model_file.read_bytes()
    key = hashlib.sha256(data).hexdigest()
    with _PROCESSORS_LOCK:
        sp = _PROCESSORS.get(key)
        if sp is None:
            sp = sentencepiece.SentencePieceProcessor(model_proto=data)
            _PROCESSORS[key] = sp
    return sp


class SpmTokenizer:
    """The subset of ``tokenizers.Tokenizer`` the ONNX runtime uses, over SentencePiece."""

    def __init__(self, model_file: Path, specials: dict[str, int]) -> None:
        self.sp = _processor(model_file)
        self.specials = specials
        self.bos, self.eos = specials.get("<s>", 0), specials.get("</s>", 2)
        names = sorted(specials, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(n) for n in names) + ")") if names else None
        self.max_length: int | None = None

    @classmethod
    def load(cls, model_file: Path) -> SpmTokenizer:
        specials = json.loads(model_file.with_suffix(".specials.json").read_text(encoding="utf-8"))
        return cls(model_file, {str(k): int(v) for k, v in specials.items()})

    def no_padding(self) -> None:
        """Texts are never padded here (the runtime pads per batch)."""

    def enable_truncation(self, max_length: int) -> None:
        self.max_length = max_length

    def token_to_id(self, token: str) -> int | None:
        if token in self.specials:
            return self.specials[token]
        i = int(self.sp.piece_to_id(token))
        return None if i == self.sp.unk_id() and token != self.sp.id_to_piece(i) else i

    def _content(self, text: str) -> list[int]:
        if self._split is None or not any(name in text for name in self.specials):
            return list(self.sp.encode(text))
        ids: list[int] = []
        for part in self._split.split(text):
            if part in self.specials:
                ids.append(self.specials[part])
            elif part:
                ids.extend(self.sp.encode(part))
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[_Encoding]:
        room = None if self.max_length is None else max(0, self.max_length - 2)
        out = []
        for text in texts:
            ids = self._content(text)
            if room is not None:
                ids = ids[:room]
            out.append(_Encoding([self.bos, *ids, self.eos]))
        return out


def check_same_ids(tokenizer_json: Path, spm_file: Path, texts: Sequence[str] = CHECK_TEXTS) -> bool:
    """Both tokenizers give the same ids on ``texts``."""
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tokenizer_json))
    hf.no_padding()
    hf.no_truncation()
    ours = SpmTokenizer.load(spm_file)
    return all(a.ids == b.ids for a, b in zip(hf.encode_batch(list(texts)), ours.encode_batch(texts), strict=True))


def write_spm(export_dir: Path, tokenizer_json: Path) -> dict[str, Any]:
    """``tokenizer.spm`` for an export, when the tokenizer is a SentencePiece unigram and the ids agree."""
    from model.onnx.cache import SPM_FILE

    out = export_dir / SPM_FILE
    try:
        if not build_spm(tokenizer_json, out):
            return {"tokenizer_spm": False}
        if not check_same_ids(tokenizer_json, out):
            logger.warning("SentencePiece copy of the tokenizer disagrees with tokenizer.json; not used")
            out.unlink(missing_ok=True)
            out.with_suffix(".specials.json").unlink(missing_ok=True)
            return {"tokenizer_spm": False}
    except Exception as e:  # the JSON tokenizer always works; this is only an optimisation
        logger.warning("no SentencePiece copy of the tokenizer (%s: %s)", type(e).__name__, e)
        out.unlink(missing_ok=True)
        return {"tokenizer_spm": False}
    return {"tokenizer_spm": True}


def load_tokenizer(export_dir: Path) -> Any:
    """The export's tokenizer: ``tokenizer.spm`` through SentencePiece when possible, else ``tokenizer.json``."""
    from model.onnx.cache import SPM_FILE, TOKENIZER_FILE

    spm_file = export_dir / SPM_FILE
    if spm_file.is_file() and spm_file.with_suffix(".specials.json").is_file() and sentencepiece_available():
        return SpmTokenizer.load(spm_file)
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(export_dir / TOKENIZER_FILE))
