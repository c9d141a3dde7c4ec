"""The label schema, policy and playbook in force."""

from __future__ import annotations

from fastapi import APIRouter

from data.schema import SCHEMA_VERSION
from data.vocab import AngerLabel, ComplaintType, Flag
from service.api.deps import AnalyzerDep, Auth
from service.api.schemas import ERROR_RESPONSES, AngerLevel, Labels, PolicyInfo

router = APIRouter(tags=["labels"])


@router.get("/v1/labels", response_model=Labels, responses=ERROR_RESPONSES)
def labels(a: AnalyzerDep, _: Auth) -> Labels:
    return Labels(
        schema_version=SCHEMA_VERSION,
        anger_levels=[AngerLevel(level=label.level, label=label) for label in AngerLabel],
        complaint_types=list(ComplaintType),
        flags=list(Flag),
        policy=PolicyInfo.model_validate(a.policy.to_dict()),
        playbook=a.playbook.to_dict(),
        model=a.model_info,
    )
