"""``calmfirst train``, ``evaluate``, ``calibrate``, ``soup`` and ``compare``, registered through entry points."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _columns(text: str | None) -> dict[str, Any]:
    """``--columns``: a JSON object mapping the project's field names to the file's column names."""
    from training.data import DataError

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f'--columns: not valid JSON ({e.msg}); e.g. \'{{"text": "content"}}\'') from e
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DataError('--columns: expected a JSON object of column names, e.g. \'{"text": "content"}\'')
    return value


def _cmd_train(args: argparse.Namespace) -> int:
    from training.config import ConfigError, load_config
    from training.data import DataError
    from training.run import run_training

    overrides = list(args.overrides)
    if args.output:
        overrides.append(f"output_dir={json.dumps(args.output)}")
    try:
        cfg = load_config(args.config, overrides)
        result = run_training(cfg)
    except (ConfigError, DataError, FileNotFoundError) as e:  # FileNotFoundError: model.init_from is not there
        print(f"calmfirst train: {e}", file=sys.stderr)
        return 2
    summary = {
        "best": str(result.best_dir),
        "last": str(result.last_dir),
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 1),
        "test": {k: v for k, v in (result.test or {}).items() if isinstance(v, int | float)},
    }
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from training.data import DataError
    from training.run import run_evaluation

    try:
        columns = _columns(args.columns)
        metrics = run_evaluation(
            args.model,
            args.data,
            split=args.split,
            fit_temperature_on=args.fit_temperature_on,
            report_dir=args.report_dir,
            columns=columns,
            device=args.device,
        )
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"calmfirst evaluate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2, ensure_ascii=False))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from training.calibration import calibrate_folder
    from training.data import DataError
    from training.run import load_eval_examples

    try:
        columns = _columns(args.columns)
        examples = load_eval_examples(args.data, split=args.split, columns=columns)
        result = calibrate_folder(args.model, examples, output=args.output)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"calmfirst calibrate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def _cmd_soup(args: argparse.Namespace) -> int:
    from training.soup import SoupError, soup_folders

    try:
        result = soup_folders(args.models, args.output, version=args.version)
    except (SoupError, FileNotFoundError) as e:
        print(f"calmfirst soup: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def register_train(sub: Any) -> None:
    p = sub.add_parser("train", help="fine-tune a model from a YAML/TOML config")
    p.add_argument("config", help="config file (see training/configs/default.yaml)")
    p.add_argument("--output", default=None, help="output folder (model-best, model-last, metrics.json)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. epochs=2 model.lora.r=8")
    p.set_defaults(func=_cmd_train)


def register_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="metrics of a model on labelled data (JSON to stdout)")
    p.add_argument("--model", required=True)
    p.add_argument("data", help="'annotations' or a .csv/.jsonl file with labels")
    p.add_argument("--split", default="test", help="train/dev/test or 'all' (default: test)")
    p.add_argument("--fit-temperature-on", default=None, help="split to fit temperature scaling on, e.g. dev")
    p.add_argument("--report-dir", default=None, help="write report.md, report.png and metrics.json here")
    p.add_argument("--columns", default=None, help='JSON column mapping, e.g. {"text": "content"}')
    p.add_argument(
        "--device", default="auto", help="where the model runs: auto (a GPU when there is one), cpu, cuda, cuda:N"
    )
    p.set_defaults(func=_cmd_evaluate)


def register_calibrate(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate", help="fit the anger temperature jointly and per script on labelled data; writes the model config"
    )
    p.add_argument("--model", required=True, help="model folder (its calmfirst_config.json is rewritten)")
    p.add_argument("data", help="'annotations' or a .csv/.jsonl file with labels")
    p.add_argument("--split", default="dev", help="split to fit on (default: dev; never the split you report)")
    p.add_argument("--output", default=None, help="write a calibrated copy here instead of changing --model")
    p.add_argument("--columns", default=None, help='JSON column mapping, e.g. {"text": "content"}')
    p.set_defaults(func=_cmd_calibrate)


def register_soup(sub: Any) -> None:
    p = sub.add_parser(
        "soup",
        help="average runs of one recipe from the same start into one model (then: calmfirst calibrate)",
    )
    p.add_argument("output", help="folder for the souped model")
    p.add_argument("models", nargs="+", help="two or more model folders (runs from the same init_from)")
    p.add_argument("--version", default=None, help="version of the souped model (default: the first run's)")
    p.set_defaults(func=_cmd_soup)


def _cmd_compare(args: argparse.Namespace) -> int:
    from training.compare import run

    return run(args)


def register_compare(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="candidates side by side as the mean of their seeds; --rule judges a rule written before the runs",
    )
    p.add_argument("candidates", nargs="+", help="NAME=PATH[,PATH...]: metrics.json files or report folders")
    p.add_argument("--rule", default=None, help="a rule file (YAML/JSON) to judge; exit 1 when it fails")
    p.set_defaults(func=_cmd_compare)
