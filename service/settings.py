"""Service settings; every field can be set as ``CALMFIRST_<NAME>`` in the environment."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.onnx.runtime import SpinMode
from service.routing.playbook import DEFAULT_PLAYBOOK
from service.routing.policy import Policy

#: The model shipped in the repository, used when no other is configured.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "model" / "default"


def _string_list(value: Any) -> Any:
    """A list setting from the environment: a JSON list (``["https://a.example"]``) or comma-separated values
    (``https://a.example,https://b.example``); anything else goes to pydantic, which names the setting."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not a JSON list ({e.msg}); or give comma-separated values") from e
    return [part.strip() for part in text.split(",") if part.strip()]


#: a list of strings that a CALMFIRST_* variable may give as JSON or as comma-separated values
StringList = Annotated[list[str], NoDecode, BeforeValidator(_string_list)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CALMFIRST_", extra="ignore")

    model_path: Path = DEFAULT_MODEL_DIR
    playbook_path: Path = DEFAULT_PLAYBOOK
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    # routing policy
    calm_first_level: int = Field(2, ge=1, le=3, description="anger level at or above which to calm first")
    calm_first_prob: float | None = Field(
        None, ge=0.0, le=1.0, description="if set, calm_first when P(anger >= calm_first_level) reaches it"
    )
    threat_threshold: float = Field(0.5, ge=0.0, le=1.0)
    escalate_on_furious: bool = False
    default_script: str = "hans"

    # limits
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_batch_items: int = Field(256, ge=1)
    max_text_chars: int = Field(5000, ge=1)

    # inference
    batch_size: int = Field(32, ge=1)
    torch_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    backend: Literal["auto", "onnx", "torch"] = Field(
        default="auto", description="auto: ONNX Runtime when installed (falls back to PyTorch), else PyTorch"
    )
    quantize: bool = Field(
        default=True, description="int8 weights on the ONNX path (checked against PyTorch in make bench)"
    )
    intra_op_threads: int | None = Field(
        default=None, ge=1, description="threads per forward pass; default: torch_threads (= cores) / workers"
    )
    ort_spin: SpinMode = Field(
        default="forward",
        description="how ONNX Runtime's threads wait between the ops of a forward pass "
        "(model.onnx.runtime.SPIN_MODES); default: forward (spin during a forward only, for batch scoring "
        "and the server); never: on a host whose other processes need the cores during forwards",
    )
    microbatch_wait_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=1000.0,
        description="how long concurrent single-text requests may wait to share a forward; 0 (default): "
        "never wait, batch only what is already queued",
    )
    microbatch_concurrency: int = Field(
        default=1,
        ge=1,
        description="with lanes off (microbatch_lanes=0): forwards over all threads that may run at once "
        "(service.microbatch); 1 (default): a forward's spinning threads have the cores to themselves, and "
        "requests that arrive meanwhile share the next forward",
    )
    microbatch_lanes: int | None = Field(
        default=None,
        ge=0,
        description="one-thread forwards that run side by side while requests wait (service.microbatch, "
        "ONNX backend); a lone request still gets one forward over all the process's threads. Default: one "
        "lane per thread when micro-batching is on and the process has 2 or more; 0: off (forwards one at a "
        "time over all threads, or microbatch_concurrency of them); always none with micro-batching off",
    )
    microbatch_max_size: int = Field(
        default=16,
        ge=1,
        description="most texts in one micro-batch (service.microbatch); 1 turns it off (make bench measures "
        "both at 8 concurrent clients: bench/RESULTS.md); it pays with more cores, and on a host crowded with "
        "other jobs 1 can be faster",
    )
    workers: int = Field(default=1, ge=1, description="server processes for `calmfirst serve` (each loads the model)")
    conversation_cache: int = Field(
        default=1024,
        ge=0,
        description="customer and agent turns the server keeps (each, per process) so a live chat sent again with "
        "one more message costs only its new turns (service.live_cache); about 5 KB a turn, so 1,024 is ~10 MB "
        "and ~100 chats of 20 turns; 0: every call scores every turn",
    )
    metrics: bool = Field(
        default=True, description="GET /metrics in the Prometheus format (service.api.metrics); false: off"
    )

    # the HTTP edge (service.api.middleware)
    drain_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="an early answer (413, 401, 415) first reads and discards up to this much of the unread "
        "body, so the client can read the answer instead of a connection reset",
    )
    drain_timeout_s: float = Field(10.0, ge=0.0, description="and for at most this long")
    max_inflight: int = Field(
        64,
        ge=0,
        description="POST requests one server process answers at once; the next one gets 503 with Retry-After "
        "at once (service.api.middleware.LoadShedder) instead of joining a queue that only grows while "
        "traffic exceeds what the cores can score; a load balancer can send it elsewhere; 0: no limit. "
        "bench/OVERLOAD.md: at 1.5x the capacity of 2 cores, 64 keeps p99 at 0.5 s, no limit lets p50 reach 4 s",
    )
    max_bulk_texts: int = Field(
        256,
        ge=0,
        description="texts of batch requests and explanations one server process scores at once; a further "
        "batch waits its turn (service.api.admission.BulkBudget), so bulk work cannot slow the live single "
        "messages; a batch is always admitted when no other is in scoring; 0: no limit. bench/OVERLOAD.md: "
        "more batches at once score no more texts per second, they only add latency",
    )
    bulk_queue: int = Field(
        8,
        ge=0,
        description="batches that may wait for max_bulk_texts, first come first served; the next one gets 503 "
        "with Retry-After at once (waiting requests count against max_inflight); 0: no waiting",
    )
    bulk_chat_turns: int = Field(
        32,
        ge=0,
        description="a chat with more turns than this still to score (not kept from an earlier call) is a "
        "transcript rather than a live chat (which sends one or two new turns): bulk work that takes the whole "
        "max_bulk_texts budget, as a full batch does",
    )
    bulk_wait_s: float = Field(
        30.0, ge=0.0, description="how long a batch waits in that queue before it gets 503 with Retry-After"
    )
    retry_after_s: int = Field(1, ge=0, description="the Retry-After of those 503s, in seconds")
    graceful_shutdown_s: int = Field(
        30,
        ge=1,
        description="on SIGTERM `calmfirst serve` refuses new connections at once and lets the requests in "
        "progress finish for at most this long, then stops (a rolling deploy loses no admitted request)",
    )

    # access
    api_key: str | None = Field(None, description="with a key, every path but public_paths wants it in x-api-key")
    public_paths: StringList = Field(
        default_factory=lambda: ["/healthz", "/readyz", "/"],
        description="paths served without the API key (a JSON list or comma-separated; an entry ending in * is "
        "a prefix); "
        "default: the probes and the console page",
    )
    cors_origins: StringList = Field(
        default_factory=list,
        description="origins allowed to call the API from a browser (a JSON list, e.g. "
        '["https://console.example.com"], or comma-separated); empty (default): CORS off',
    )

    @field_validator("default_script")
    @classmethod
    def _script(cls, v: str) -> str:
        if v not in {"hant", "hans"}:
            raise ValueError("default_script must be 'hant' or 'hans'")
        return v

    def threads(self) -> int:
        """Intra-op threads for one process: cores are split between the serving workers."""
        return self.intra_op_threads or max(1, self.torch_threads // self.workers)

    def lanes(self) -> int:
        """One-thread forward lanes of the micro-batcher (``microbatch_lanes``, or its default); none without it."""
        if self.microbatch_max_size <= 1:
            return 0
        if self.microbatch_lanes is not None:
            return self.microbatch_lanes
        threads = self.threads()
        return threads if threads > 1 else 0

    def policy(self, *, default_level: int | None = None) -> Policy:
        """The routing policy of these settings. ``default_level`` (the playbook's
        ``thresholds.calm_first_level``) applies unless ``CALMFIRST_CALM_FIRST_LEVEL`` (or the caller)
        set the level explicitly. Built here, not in ``service.routing``: routing may not import the
        settings, which import the playbook from routing."""
        explicit = "calm_first_level" in self.model_fields_set
        return Policy(
            calm_first_level=self.calm_first_level if explicit or default_level is None else default_level,
            calm_first_prob=self.calm_first_prob,
            threat_threshold=self.threat_threshold,
            escalate_on_furious=self.escalate_on_furious,
        )


def settings_problems(error: ValidationError) -> list[str]:
    """One line per invalid setting, naming it as the user set it: ``CALMFIRST_MAX_INFLIGHT=-1: ...``."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    lines = []
    for problem in error.errors():
        name = ".".join(str(part) for part in problem["loc"]) or "settings"
        env = f"{prefix}{name.split('.')[0].upper()}"
        given = problem.get("input")
        shown = f"={given}" if isinstance(given, str | int | float) else ""
        lines.append(f"setting {env}{shown}: {problem['msg']}")
    return lines
