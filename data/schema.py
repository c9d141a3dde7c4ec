"""The label schema (``../shared/LABELS.md`` v1.2) as code: one place for names and checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from data.vocab import AngerLabel, ComplaintType, values

SCHEMA_VERSION = "1.2"

ANGER_LABELS: tuple[str, ...] = values(AngerLabel)
COMPLAINT_TYPES: tuple[str, ...] = values(ComplaintType)
SCRIPTS: tuple[str, ...] = ("hant", "hans")
REGIONS: tuple[str, ...] = ("tw", "hk", "cn")
#: the project's own written messages (never mixed with real text in reports)
WRITTEN_SOURCE: Final = "calmfirst_written"


def kind_of(source: str) -> str:
    """``written`` for the project's own messages, ``real`` for text read from a source."""
    return "written" if source == WRITTEN_SOURCE else "real"


SPLITS: tuple[str, ...] = ("train", "dev", "test")

#: Fields every annotation record carries.
RECORD_FIELDS: tuple[str, ...] = (
    "id",
    "source",
    "anger_level",
    "complaint_type",
    "types",
    "threat",
    "script",
    "region",
    "schema",
)


class LabelError(ValueError):
    """A record breaks the schema; the message names the field and the value."""


def validate_record(rec: Mapping[str, Any], *, where: str = "record") -> None:
    """Raise ``LabelError`` naming the first bad field of an annotation record."""
    for field in RECORD_FIELDS:
        if field not in rec:
            raise LabelError(f"{where}: missing field {field!r}")
    level = rec["anger_level"]
    if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 3:
        raise LabelError(f"{where}: anger_level must be an integer 0-3, got {level!r}")
    ctype = rec["complaint_type"]
    if ctype not in COMPLAINT_TYPES:
        raise LabelError(f"{where}: complaint_type {ctype!r} is not one of {list(COMPLAINT_TYPES)}")
    types = rec["types"]
    if not isinstance(types, list) or not types or types[0] != ctype:
        raise LabelError(f"{where}: types must be a list starting with complaint_type {ctype!r}, got {types!r}")
    for t in types:
        if t not in COMPLAINT_TYPES:
            raise LabelError(f"{where}: types has unknown type {t!r}")
    if len(set(types)) != len(types):
        raise LabelError(f"{where}: types has duplicates {types!r}")
    if "none" in types and len(types) > 1:
        raise LabelError(f"{where}: 'none' cannot be combined with other types: {types!r}")
    if not isinstance(rec["threat"], bool):
        raise LabelError(f"{where}: threat must be true or false, got {rec['threat']!r}")
    # v1.2: a threat no longer implies level 3; anger is judged from the words alone
    if rec["script"] not in SCRIPTS:
        raise LabelError(f"{where}: script must be one of {list(SCRIPTS)}, got {rec['script']!r}")
    if rec["region"] not in REGIONS:
        raise LabelError(f"{where}: region must be one of {list(REGIONS)}, got {rec['region']!r}")
    if rec["schema"] != SCHEMA_VERSION:
        raise LabelError(f"{where}: schema must be {SCHEMA_VERSION!r}, got {rec['schema']!r}")
    if "split" in rec and rec["split"] not in SPLITS:
        raise LabelError(f"{where}: split must be one of {list(SPLITS)}, got {rec['split']!r}")
