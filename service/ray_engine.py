"""``calmfirst score|qa --engine ray``: the same work on Ray Data, on this machine or a cluster.

Why Ray Data and not a home-made pool: it schedules actors over every node of a cluster, moves
the data through its object store, and the cluster side (``ray start --head`` / ``--address``,
KubeRay on Kubernetes) is Ray's, not ours. What stays here is what makes the output *the same*
as the local engine's:

- **This process reads and writes.** The input is read by the same readers, with the same bad-line
  reports, duplicate checks and (for ``qa``) resuming, and cut into the same chunks as the local
  engine (``--chunk``: ``score`` 2,048 messages, ``qa`` 64 conversations or 512 customer turns, by default). Only the
  scoring of a chunk runs on the cluster: ``map_batches`` over a dataset of chunks, one chunk per
  batch, with the model loaded once per actor (``ScoreChunks``, ``QAChunks``) and one actor per CPU
  of the cluster, each running ONNX Runtime on one thread.
- **Same chunks, same numbers.** A chunk is sorted by length and padded per batch inside the actor
  exactly as the local engine does it; since int8 activations are scaled per forward pass, scoring
  the very same batches is what keeps the scores the same, not merely close.
- **Order.** Outputs are written in input order (``preserve_order`` plus a reorder buffer), so the
  output files are those of the local engine, and an interrupted ``qa`` resumes the same way: its
  commit log only ever holds a prefix of the input's conversations.
- **Bounded memory.** The driver reads ahead at most one *wave* of chunks (by default eight per
  actor, at least 64) and writes it as it comes back, so a file of ten million messages never sits
  in the driver's memory.

Without ``--ray-address`` a local Ray is started for the run (and stopped after it); with one, the
run joins that cluster as a driver. Every node needs CalmFirst installed (``pip install
'calmfirst[ray]'``; the same version) and the model folder at the same path (the shipped model is
inside the package, so that holds for it); each node builds its ONNX export once, under a lock.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from service.io.readers import SCORE_CHUNK, BadLine, Record, read_records
from service.io.writers import ResultWriter

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
#: Environment every Ray worker gets (no hub downloads, one thread per actor).
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


@dataclass
class RayOptions:
    """Where and how wide to run."""

    address: str | None = None
    #: actors (one CPU each); default: every CPU of the cluster
    actors: int | None = None
    #: chunks read ahead and in flight at once; default: max(64, 8 x actors)
    wave_chunks: int | None = None
    progress: bool = False


def ray_available() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def require_ray() -> None:
    if not ray_available():
        raise RuntimeError("--engine ray needs Ray Data: pip install 'calmfirst[ray]'")


def worker_settings(settings: Any) -> dict[str, Any]:
    """The settings a run was given explicitly (environment or command line), for the actors to use.

    Only what was set travels: defaults that are paths (the shipped model, the playbook) are
    resolved on each node, where the package may be installed elsewhere.
    """
    explicit = settings.model_dump(mode="json", exclude_unset=True)
    return {k: v for k, v in explicit.items() if k not in {"workers", "intra_op_threads", "microbatch_max_size"}}


class _Actor:
    """Loads the model once (per actor) with one inference thread; ``__call__`` scores a batch of chunks."""

    def __init__(self, settings: dict[str, Any], model_path: str | None) -> None:
        from service.analyzer import Analyzer
        from service.settings import Settings

        for key, value in WORKER_ENV.items():
            os.environ.setdefault(key, value)
        logging.basicConfig(level=logging.WARNING)
        full = Settings(**settings, intra_op_threads=1, workers=1, microbatch_max_size=1)
        self.analyzer = Analyzer.from_settings(full, model_path=model_path)
        self.analyzer_backend = full.backend

    def score(self, payload: str) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = [self.score(str(p)) for p in batch["payload"]]
        return {"index": batch["index"], "output": np.array(outs, dtype=object)}


class ScoreChunks(_Actor):
    """``score``: a chunk of ``[id, text]`` pairs -> ``{"n": results, "text": the chunk's output, as written}``."""

    def __init__(self, settings: dict[str, Any], model_path: str | None, *, lang: str | None, out_format: str):
        super().__init__(settings, model_path)
        self.lang = lang
        self.out_format = out_format

    def score(self, payload: str) -> str:
        pairs = json.loads(payload)
        results = self.analyzer.analyze([t for _, t in pairs], ids=[i for i, _ in pairs], lang=self.lang)
        buf = io.StringIO()
        writer = ResultWriter(buf, self.out_format, header=False)
        for r in results:
            writer.write(r)
        return json.dumps({"n": len(results), "text": buf.getvalue()}, ensure_ascii=False)


class QAChunks(_Actor):
    """``qa``: a chunk of conversations (``chunk_to_json``) -> its ``ChunkOutput`` as JSON."""

    def __init__(
        self,
        settings: dict[str, Any],
        model_path: str | None,
        *,
        keep_text: bool,
        lang: str | None,
        agent_model: str = "",
    ):
        super().__init__(settings, model_path)
        from service.analyzer import ConversationAnalyzer
        from service.routing.agent_model import load_agent_detector
        from service.routing.agent_steps import AgentStepDetector

        # the agent-turn detector the local engine would use (``agent_model``: the driver's CALMFIRST_AGENT_MODEL,
        # passed on because a worker of an existing cluster does not have the driver's environment)
        if agent_model.lower() == "tfidf":
            detector: Any = AgentStepDetector.from_data()
        else:
            detector = load_agent_detector(agent_model or None, backend=self.analyzer_backend, threads=1)
        self.conv_an = ConversationAnalyzer(self.analyzer, detector)
        self.keep_text = keep_text
        self.lang = lang

    def score(self, payload: str) -> str:
        from service.qa.run import chunk_from_json, score_chunk

        chunk = chunk_from_json(payload)
        return score_chunk(self.conv_an, chunk, keep_text=self.keep_text, lang=self.lang).to_json()


# ---------------------------------------------------------------------------- the cluster
@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[int]:
    """Ray for one run: join ``options.address``, or start a local Ray (stopped afterwards). Yields the CPUs."""
    require_ray()
    import ray

    started_here = not ray.is_initialized()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports from contact-center machines
    if started_here:
        kwargs: dict[str, Any] = {
            "logging_level": logging.WARNING,
            "log_to_driver": True,
            "runtime_env": {"env_vars": dict(WORKER_ENV)},
        }
        if options.address:
            ray.init(address=options.address, **kwargs)
        else:
            from model.onnx import available_cores

            # loopback only: a run's own Ray is nobody else's business
            ray.init(num_cpus=available_cores(), include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        logger.info("Ray: %d CPUs in the cluster (%s)", cpus, options.address or "local")
        yield max(1, cpus)
    finally:
        if started_here:
            ray.shutdown()


def ordered_map(
    payloads: Iterable[str],
    actor: type[_Actor],
    constructor_kwargs: dict[str, Any],
    *,
    cpus: int,
    options: RayOptions,
) -> Iterator[str]:
    """Each payload through ``actor`` on Ray Data (``map_batches``, one payload per batch), in input order."""
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = options.progress
    with contextlib.suppress(AttributeError):
        ctx.print_on_execution_start = False
    actors = options.actors or cpus
    wave = options.wave_chunks or max(64, 8 * actors)
    group: list[str] = []

    def run(items: list[str]) -> Iterator[str]:
        source = ray.data.from_items(
            [{"index": i, "payload": p} for i, p in enumerate(items)], override_num_blocks=len(items)
        )
        ds = source.map_batches(
            actor,
            fn_constructor_kwargs=constructor_kwargs,
            batch_size=1,
            batch_format="numpy",
            num_cpus=1,
            concurrency=min(actors, len(items)),
        )
        waiting: dict[int, str] = {}
        next_index = 0
        for row in ds.iter_rows():  # in order with preserve_order; the buffer makes sure of it
            waiting[int(row["index"])] = str(row["output"])
            while next_index in waiting:
                yield waiting.pop(next_index)
                next_index += 1
        if next_index != len(items):
            raise RuntimeError(f"Ray returned {next_index} of {len(items)} chunks")

    for payload in payloads:
        group.append(payload)
        if len(group) >= wave:
            yield from run(group)
            group = []
    if group:
        yield from run(group)


# ---------------------------------------------------------------------------- score
def score_file_ray(
    settings: Any,
    source: str,
    out: IO[str],
    *,
    model_path: str | None = None,
    out_format: str = "jsonl",
    text_field: str = "text",
    id_field: str = "id",
    chunk_size: int = SCORE_CHUNK,
    lang: str | None = None,
    options: RayOptions | None = None,
    err: IO[str] | None = None,
) -> Any:
    """``calmfirst score --engine ray``: the local engine's reading, chunks, reports and output, scored on Ray."""
    from service.score import ScoreReport

    options = options or RayOptions()
    err = err or sys.stderr
    report = ScoreReport()
    ResultWriter(out, out_format)  # the CSV header; the rows come from the actors
    started = time.perf_counter()

    def chunks() -> Iterator[str]:
        pending: list[Record] = []
        for item in read_records(source, text_field=text_field, id_field=id_field):
            if isinstance(item, BadLine):
                report.bad.append(item)
                err.write(item.report(source))
                continue
            pending.append(item)
            if len(pending) >= chunk_size:
                yield json.dumps([[r.id, r.text] for r in pending], ensure_ascii=False)
                pending = []
        if pending:
            yield json.dumps([[r.id, r.text] for r in pending], ensure_ascii=False)

    kwargs = {"settings": worker_settings(settings), "model_path": model_path, "lang": lang, "out_format": out_format}
    with ray_session(options) as cpus:
        for output in ordered_map(chunks(), ScoreChunks, kwargs, cpus=cpus, options=options):
            chunk = json.loads(output)
            out.write(chunk["text"])  # the actor wrote it with the same ResultWriter
            report.scored += chunk["n"]
    elapsed = time.perf_counter() - started
    logger.info(
        "scored %d messages in %.3f s (%.1f messages/s, Ray: start, model loads and scoring)",
        report.scored,
        elapsed,
        report.scored / elapsed if elapsed > 0 else 0.0,
    )
    return report


# ---------------------------------------------------------------------------- qa
class RayQAScorer:
    """A ``service.qa.run.ChunkScorer`` that scores the chunks on Ray (``run_qa(..., scorer=...)``)."""

    def __init__(
        self,
        settings: Any,
        *,
        model_path: str | None,
        keep_text: bool,
        lang: str | None,
        cpus: int,
        options: RayOptions,
    ) -> None:
        from service.routing.agent_model import AGENT_MODEL_ENV

        self.kwargs = {
            "settings": worker_settings(settings),
            "model_path": model_path,
            "keep_text": keep_text,
            "lang": lang,
            "agent_model": os.environ.get(AGENT_MODEL_ENV, "").strip(),
        }
        self.cpus = cpus
        self.options = options

    def score_chunks(self, chunks: Iterable[list[Any]]) -> Iterator[Any]:
        from service.qa.run import ChunkOutput, chunk_to_json

        payloads = (chunk_to_json(c) for c in chunks)
        for output in ordered_map(payloads, QAChunks, self.kwargs, cpus=self.cpus, options=self.options):
            yield ChunkOutput.from_json(output)


def run_qa_ray(
    settings: Any,
    input_path: str | Path,
    out_dir: str | Path,
    *,
    model_path: str | None = None,
    options: RayOptions | None = None,
    **kwargs: Any,
) -> Any:
    """``calmfirst qa --engine ray``: ``run_qa`` with its chunks scored on Ray."""
    from service.qa.run import run_qa

    options = options or RayOptions()
    with ray_session(options) as cpus:
        scorer = RayQAScorer(
            settings,
            model_path=model_path,
            keep_text=kwargs.get("keep_text", False),
            lang=kwargs.get("lang"),
            cpus=cpus,
            options=options,
        )
        return run_qa(input_path, out_dir, scorer=scorer, **kwargs)
