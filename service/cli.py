"""The ``calmfirst`` console script: a thin layer over plain functions.

Subcommands from other packages (``train``, ``evaluate``) register through the
``calmfirst.commands`` entry-point group, so the service never imports training.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import IO, Any

from service.io.readers import SCORE_CHUNK

logger = logging.getLogger("calmfirst")


def _cmd_score(args: argparse.Namespace) -> int:
    from service.analyzer import Analyzer
    from service.io.readers import InputFormatError, check_source
    from service.io.writers import open_output, output_format
    from service.score import score_file

    try:  # before the model loads
        check_source(args.input)
        if args.output not in (None, "-"):
            output_format(args.output)
    except InputFormatError as e:
        print(f"calmfirst score: {e}", file=sys.stderr)
        return 2
    settings = batch_settings(args)
    if (problem := lang_problem(args.lang, settings)) is not None:
        print(f"calmfirst score: {problem}", file=sys.stderr)
        return 2
    if args.output not in (None, "-") and getattr(args, "engine", "local") == "local":
        return _score_to_file(args, settings)  # complete or absent; a re-run resumes
    try:
        out, fmt = open_output(args.output)
    except InputFormatError as e:
        print(f"calmfirst score: {e}", file=sys.stderr)
        return 2
    if args.engine == "ray":
        return _score_ray(args, settings, out, fmt)
    analyzer = Analyzer.from_settings(settings, model_path=args.model)
    return _stream_scores(
        args,
        out,
        lambda: score_file(
            analyzer,
            args.input,
            out,
            out_format=fmt,
            text_field=args.text_field,
            id_field=args.id_field,
            chunk_size=args.chunk,
            lang=args.lang,
            progress=False if args.no_progress else None,
        ),
        (InputFormatError,),
    )


def _stream_scores(
    args: argparse.Namespace, out: IO[str], run: Callable[[], Any], errors: tuple[type[Exception], ...]
) -> int:
    """Score to a stream (stdout, or a file opened for it): close it whatever happens, report, exit code."""
    try:
        report = run()
    except errors as e:
        print(f"calmfirst score: {e}", file=sys.stderr)
        return 2
    finally:
        out.flush()
        if args.output not in (None, "-"):
            out.close()
    print(f"calmfirst score: {report.scored} scored, {len(report.bad)} skipped", file=sys.stderr)
    return 0 if report.scored > 0 else 1


def _score_ray(args: argparse.Namespace, settings: Any, out: IO[str], fmt: str) -> int:
    from service.io.readers import InputFormatError
    from service.ray_engine import RayOptions, score_file_ray

    options = RayOptions(address=args.ray_address, progress=not args.no_progress and sys.stderr.isatty())
    return _stream_scores(
        args,
        out,
        lambda: score_file_ray(
            settings,
            args.input,
            out,
            model_path=args.model,
            out_format=fmt,
            text_field=args.text_field,
            id_field=args.id_field,
            chunk_size=args.chunk,
            lang=args.lang,
            options=options,
        ),
        (InputFormatError, RuntimeError),
    )


def positive_int(text: str) -> int:
    """An argparse type: 1 or more (``--chunk 0`` behaved as 1, silently)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def lang_problem(lang: str | None, settings: Any) -> str | None:
    """``--lang`` that the playbook in force has no texts for, said before the model loads (it was a KeyError
    after scoring had started)."""
    from service.routing.playbook import Playbook

    if lang is None:
        return None
    problem = Playbook.load(settings.playbook_path).lang_problem(lang)
    return None if problem is None else f"--lang {lang}: {problem}"


def batch_settings(args: argparse.Namespace) -> Any:
    """Settings of a batch command (``score``, ``qa``): whole batches per forward, so no micro-batcher
    and none of its one-thread lanes (``service.microbatch``) to load."""
    from service.settings import Settings

    extra = {"batch_size": args.batch_size} if args.batch_size else {}
    return Settings(microbatch_max_size=1, **extra)


def _score_to_file(args: argparse.Namespace, settings: Any) -> int:
    from service.analyzer import Analyzer
    from service.io.readers import InputFormatError
    from service.score import score_to_file

    analyzer = Analyzer.from_settings(settings, model_path=args.model)
    try:
        report = score_to_file(
            analyzer,
            args.input,
            args.output,
            text_field=args.text_field,
            id_field=args.id_field,
            chunk_size=args.chunk,
            lang=args.lang,
            model=str(args.model or settings.model_path),
            progress=False if args.no_progress else None,
        )
    except InputFormatError as e:
        print(f"calmfirst score: {e}", file=sys.stderr)
        return 2
    done = f", {report.resumed} already done (resumed)" if report.resumed else ""
    print(f"calmfirst score: {report.scored} scored, {len(report.bad)} skipped{done}", file=sys.stderr)
    return 0 if report.scored + report.resumed > 0 else 1


def _cmd_qa(args: argparse.Namespace) -> int:
    from service.analyzer import Analyzer
    from service.io.readers import InputFormatError
    from service.qa.readers import check_input
    from service.qa.run import run_qa
    from service.routing.agent_model import AGENT_MODEL_ENV, DEFAULT_MODEL_DIR, load_agent_detector

    try:
        check_input(args.input)  # fail before the model loads
    except InputFormatError as e:
        print(f"calmfirst qa: {e}", file=sys.stderr)
        return 2
    settings = batch_settings(args)
    if (problem := lang_problem(args.lang, settings)) is not None:
        print(f"calmfirst qa: {problem}", file=sys.stderr)
        return 2
    options = {
        "batch_conversations": args.chunk,
        "progress": False if args.no_progress else None,
        "keep_text": args.keep_text,
        "lang": args.lang,
        # what else decides the results: a folder written with other models is not resumed (service.qa.resume)
        "run": {
            "model": str(Path(args.model or settings.model_path).resolve()),
            "agent_model": os.environ.get(AGENT_MODEL_ENV) or str(DEFAULT_MODEL_DIR.resolve()),
        },
    }
    try:
        if args.engine == "ray":
            from service.ray_engine import RayOptions, run_qa_ray

            ray_options = RayOptions(address=args.ray_address, progress=False)
            report = run_qa_ray(
                settings, args.input, args.output, model_path=args.model, options=ray_options, **options
            )
        else:
            analyzer = Analyzer.from_settings(settings, model_path=args.model)
            detector = load_agent_detector(backend=settings.backend, threads=settings.threads())
            report = run_qa(args.input, args.output, analyzer=analyzer, detector=detector, **options)
    except (InputFormatError, RuntimeError) as e:
        print(f"calmfirst qa: {e}", file=sys.stderr)
        return 2
    print(
        f"calmfirst qa: {report.scored} conversations scored ({report.turns_scored} turns), "
        f"{report.resumed} already done, {len(report.bad)} problems skipped; "
        f"{report.conversations_total} conversations in {args.output}",
        file=sys.stderr,
    )
    # a fully resumed run scored nothing new but its output folder is complete: that is a success
    return 0 if report.conversations_total > 0 else 1


def _cmd_qa_validate(args: argparse.Namespace) -> int:
    from service.qa.validate import main as validate_main

    return validate_main(args.args, prog="calmfirst qa-validate")


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.api import create_app
    from service.api.logs import log_config
    from service.model_check import check_model_dir
    from service.settings import Settings

    overrides = {"host": args.host, "port": args.port, "workers": args.workers}
    if args.model:
        overrides["model_path"] = args.model
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    check_model_dir(settings.model_path)  # refuse to start, before the port is bound, rather than half-loaded
    if settings.workers > 1:
        # uvicorn starts fresh processes that build the app from the environment; each loads the model
        os.environ["CALMFIRST_MODEL_PATH"] = str(settings.model_path)
        os.environ["CALMFIRST_WORKERS"] = str(settings.workers)
        if settings.metrics:  # one /metrics over all workers: prometheus_client's multiprocess mode
            from service.api.metrics import prepare_multiprocess

            prepare_multiprocess()
        uvicorn.run(
            "service.api:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level="info",
            log_config=log_config(),  # request ids on every line
            timeout_graceful_shutdown=settings.graceful_shutdown_s,
        )
        return 0
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        log_config=log_config(),
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
    )
    return 0


def _cmd_prepare_backbone(args: argparse.Namespace) -> int:
    from model.backbone import prepare_default_backbone

    path = prepare_default_backbone(force=args.force)
    print(path)
    if args.exports:  # built now, every server starts from the cache (service.exports says why)
        from model.onnx.runtime import onnxruntime_available
        from service.exports import MODEL, server_exports
        from service.settings import Settings

        if not onnxruntime_available():
            print("onnxruntime is not installed: no ONNX exports built", file=sys.stderr)
            return 0
        settings = Settings()
        for name, build in server_exports(
            settings.model_path, quantize=settings.quantize, threads=settings.threads()
        ).items():
            built = build()
            if name == MODEL:
                print(built)
    return 0


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from data.stats import format_stats, markdown, stats, write_card

    s = stats(Path(args.annotations))
    if args.markdown:
        if args.card:
            write_card(Path(args.card), markdown(s))
            print(f"count tables written into {args.card}")
        else:
            print(markdown(s), end="")
        return 0
    print(format_stats(s))
    return 0


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: Ray Data actors, one per CPU (needs calmfirst[ray]; same output)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="with --engine ray: an existing cluster (e.g. HEAD:6379 or auto); default: start a local Ray",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calmfirst", description="Anger, complaint type and next step for Chinese customer messages."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score messages from a .jsonl/.csv/.txt file, a folder or glob of them, or -")
    p.add_argument("input", help=".jsonl/.csv/.txt file, a folder or a quoted glob of them, or - (stdin)")
    p.add_argument("-o", "--output", help=".jsonl (default: stdout) or .csv")
    p.add_argument(
        "--text-field", default="text", help="the JSONL field or CSV column holding the text (default: text)"
    )
    p.add_argument("--id-field", default="id", help="the JSONL field or CSV column holding the id (default: id)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="texts per forward pass (default 32; an int8 ONNX model runs at most 32 per forward pass)",
    )
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--lang", choices=["zh-Hant", "zh-Hans", "en"], default=None, help="next-step language")
    p.add_argument(
        "--chunk",
        type=positive_int,
        default=SCORE_CHUNK,
        help=f"messages read, scored (sorted by length, in forward passes of --batch-size) and written together "
        f"(default {SCORE_CHUNK}; one Ray task with --engine ray); an interrupted -o FILE resumes per chunk",
    )
    p.add_argument("--no-progress", action="store_true")
    _engine_options(p)
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("qa", help="QA over transcripts: per-turn, per-conversation and per-agent scores + HTML report")
    p.add_argument(
        "input", help=".jsonl (one conversation a line) or .csv (one turn a row), or a folder or quoted glob of them"
    )
    p.add_argument("-o", "--output", required=True, help="output folder (re-running resumes where it stopped)")
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--batch-size", type=int, default=None, help="texts per forward pass (as for score)")
    p.add_argument(
        "--chunk",
        type=positive_int,
        default=64,
        help="conversations scored and written together (default 64; bounds memory)",
    )
    p.add_argument("--keep-text", action="store_true", help="store redacted message text in turns.* (default: none)")
    p.add_argument("--lang", choices=["zh-Hant", "zh-Hans", "en"], default=None, help="next-step language")
    p.add_argument("--no-progress", action="store_true")
    _engine_options(p)
    p.set_defaults(func=_cmd_qa)

    p = sub.add_parser(
        "qa-validate",
        help="how far to trust the handling score: fit it on STC-3 (id %% 5 != 0), measure it on the held-out ids",
        add_help=False,
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="options of python -m service.qa.validate (see --help)")
    p.set_defaults(func=_cmd_qa_validate)

    p = sub.add_parser("serve", help="run the HTTP API")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--workers", type=int, default=None, help="processes, one model each (threads split between them)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("prepare-backbone", help="convert the bundled multilingual-e5-small once (cached)")
    p.add_argument("--force", action="store_true")
    p.add_argument(
        "--exports",
        action="store_true",
        help="also build the ONNX exports the server loads (the shipped model's and the agent-turn encoder's)",
    )
    p.set_defaults(func=_cmd_prepare_backbone)

    p = sub.add_parser("data-stats", help="counts of the project's annotations")
    p.add_argument("--annotations", default=str(Path(__file__).resolve().parent.parent / "data" / "annotations"))
    p.add_argument("--markdown", action="store_true", help="the dataset card's count tables (Markdown)")
    p.add_argument("--card", default=None, help="with --markdown: replace the generated section of this card file")
    p.set_defaults(func=_cmd_data_stats)

    for name, load in _command_plugins():
        try:
            register = load()
        except ImportError as e:  # pragma: no cover - a broken plugin must not break scoring
            logger.warning("subcommand %s unavailable: %s", name, e)
            continue
        register(sub)
    return parser


def _command_plugins() -> list[tuple[str, Callable[[], Callable[[Any], None]]]]:
    """The ``calmfirst.commands`` entry points; in a checkout that was never installed (``python -m service.cli``
    on a machine that can install nothing) there are none, so the training package's ``register_*`` functions are
    found directly instead."""
    eps = list(entry_points(group="calmfirst.commands"))
    if eps:
        return [(ep.name, ep.load) for ep in eps]
    import importlib

    try:
        mod = importlib.import_module("training.cli")
    except ImportError:
        return []

    def loader(name: str) -> Callable[[], Callable[[Any], None]]:
        return lambda: getattr(mod, name)  # type: ignore[no-any-return]

    return [(name.removeprefix("register_"), loader(name)) for name in sorted(dir(mod)) if name.startswith("register_")]


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    words = list(sys.argv[1:] if argv is None else argv)
    if "qa-validate" in words[:2]:  # its options are service.qa.validate's own (--help included)
        return _cmd_qa_validate(argparse.Namespace(args=words[words.index("qa-validate") + 1 :]))
    parser = build_parser()
    # Dotted overrides may come after options (`train CONFIG --output DIR epochs=2`); argparse alone
    # would reject them, so unknown `key=value` words go to the command's overrides.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from pydantic import ValidationError

    from service.model_check import ModelFolderError
    from service.settings import settings_problems

    try:
        return int(args.func(args) or 0)
    except ModelFolderError as e:
        print(f"calmfirst {args.command}: model folder: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:
        if e.title != "Settings":  # another model's error is a bug or has its own handler: keep the traceback
            raise
        for line in settings_problems(e):  # a CALMFIRST_* variable the service cannot use: name it, no traceback
            print(f"calmfirst {args.command}: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
