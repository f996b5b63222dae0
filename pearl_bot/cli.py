"""The `pearl-bot` command line (also `hf pearl` once installed, through `hf-pearl`).

Each subcommand is a thin call into the library. Known errors (`PearlBotError`) become one
message on stderr and exit code 1; set `PEARL_BOT_DEBUG=1` to see their tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from pearl_bot import __version__
from pearl_bot.errors import PearlBotError

logger = logging.getLogger(__name__)

DEBUG_ENV = "PEARL_BOT_DEBUG"


class Report(Protocol):
    """What a subcommand returns: a text summary for people and a dict for `--json`."""

    def summary(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.handler(args))
    except PearlBotError as err:
        _report_error(args, str(err))
        return 1
    except OSError as err:
        # Network, disk and offline-mode failures (huggingface_hub's errors are OSErrors too)
        # that no step turned into a PearlBotError: still one line, not a traceback.
        _report_error(args, f"{type(err).__name__}: {err}".splitlines()[0])
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _report_error(args: argparse.Namespace, message: str) -> None:
    """One line on stderr (and a JSON object on stdout under --json); the traceback on demand."""
    if os.environ.get(DEBUG_ENV):
        traceback.print_exc()
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": message}, indent=2))
    print(f"error: {message}", file=sys.stderr)


def configure_logging(verbosity: int) -> None:
    """-v shows info (one line per milestone), -vv debug (per tensor, file, request)."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pearl_bot").setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    invoked_as = Path(sys.argv[0]).name
    parser = argparse.ArgumentParser(
        prog="hf pearl" if invoked_as.startswith("hf-pearl") else "pearl-bot",
        description=(
            "Keep a merged model on the Hugging Face Hub up to date: watch the upstream models "
            "of a merge recipe, rerun the merge when one moves, render the card, publish."
        ),
    )
    parser.add_argument("--version", action="version", version=f"pearl-bot {__version__}")
    _add_common(parser)
    parser.set_defaults(verbose=0)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_check(sub)
    _add_merge(sub)
    _add_card(sub)
    _add_publish(sub)
    _add_run(sub)
    _add_demo(sub)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more output: -v for progress, -vv for debug details",
    )


def _subparser(sub: Any, name: str, help_: str, handler: Callable[[Any], int]) -> Any:
    parser = sub.add_parser(name, help=help_, description=help_)
    parser.set_defaults(handler=handler)
    _add_common(parser)
    return parser


def _add_check(sub: Any) -> None:
    p = _subparser(
        sub,
        "check",
        "Resolve every upstream to a commit sha and compare with the published lock.",
        _check,
    )
    p.add_argument("recipe", type=Path, help="the recipe file (YAML)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_merge(sub: Any) -> None:
    p = _subparser(sub, "merge", "Run the merge of a recipe into a model folder.", _merge)
    p.add_argument("recipe", type=Path, help="the recipe file (YAML)")
    p.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    p.add_argument(
        "--numerics",
        choices=["precise", "mergekit"],
        default=None,
        help="precise: float32 math, exact ties (default); mergekit: bit-identical to mergekit",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="compute device")
    p.add_argument("--shard-size", default=None, help="largest output shard, e.g. 5GB or 500MB")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept .bin (pickle) inputs, loaded with torch.load(weights_only=True)",
    )
    p.add_argument("--lock", type=Path, help="pin upstreams to the revisions of this lock file")


def _add_card(sub: Any) -> None:
    p = _subparser(sub, "card", "Render the model card of a recipe without merging.", _card)
    p.add_argument("recipe", type=Path, help="the recipe file (YAML)")
    p.add_argument("--lock", type=Path, help="a pearl.lock.json to take revisions from")
    p.add_argument(
        "--scores", action="append", default=[], help="lm-eval result JSON (repeatable, globs)"
    )
    p.add_argument("--out", type=Path, help="write the card to this file (default: print it)")


def _add_publish(sub: Any) -> None:
    p = _subparser(sub, "publish", "Push a model folder to the Hub as one commit or PR.", _publish)
    p.add_argument("folder", type=Path, help="the model folder to publish")
    p.add_argument("--repo", required=True, help="target repo id (org/name)")
    p.add_argument("--create-pr", action="store_true", help="open or update a Hub pull request")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--message", help="commit title (default: derived from the lock)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_run(sub: Any) -> None:
    p = _subparser(
        sub,
        "run",
        "The nightly loop: check, and when an upstream moved, merge, card and publish.",
        _run,
    )
    p.add_argument("recipe", type=Path, help="the recipe file (YAML)")
    p.add_argument("--force", action="store_true", help="rebuild even if nothing moved")
    pr = p.add_mutually_exclusive_group()
    pr.add_argument(
        "--create-pr",
        dest="create_pr",
        action="store_true",
        default=None,
        help="release as a Hub pull request (default: the recipe's publish.create_pr)",
    )
    pr.add_argument(
        "--no-create-pr", dest="create_pr", action="store_false", help="commit to the branch"
    )
    p.add_argument("--dry-run", action="store_true", help="everything but the publish")
    p.add_argument("--out", type=Path, help="keep the built model in this folder")
    p.add_argument("--json", action="store_true", help="print the run report as JSON")


def _add_demo(sub: Any) -> None:
    p = _subparser(
        sub,
        "demo",
        "Run the whole nightly story offline against a local Hub on 127.0.0.1.",
        _demo,
    )
    p.add_argument("--workdir", type=Path, help="where to keep the demo's files (default: temp)")


def _print_report(report: Report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(report.summary())


# Handlers import their module when called, so `pearl-bot check` never loads torch.


def _check(args: argparse.Namespace) -> int:
    from pearl_bot.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    from pearl_bot.lock import check_upstreams

    report = check_upstreams(recipe)
    _print_report(report, args.json)
    return 0


def _merge(args: argparse.Namespace) -> int:
    from pearl_bot.download import fetch_models
    from pearl_bot.merge import merge_recipe, parse_size
    from pearl_bot.merge.writer import check_out_dir
    from pearl_bot.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    # Cheap checks first, so a bad flag never costs a download.
    check_out_dir(args.out)
    shard_size = parse_size(args.shard_size) if args.shard_size else None
    model_dirs = fetch_models(recipe, lock_path=args.lock, allow_pickle=args.allow_pickle)
    result = merge_recipe(
        recipe,
        args.out,
        model_dirs=model_dirs,
        numerics=args.numerics,
        device=args.device,
        shard_size=shard_size,
        allow_pickle=args.allow_pickle,
    )
    print(result.summary())
    return 0


def _card(args: argparse.Namespace) -> int:
    from pearl_bot.card import render_card_file
    from pearl_bot.recipe import load_recipe

    text = render_card_file(
        load_recipe(args.recipe), args.out, lock_path=args.lock, score_files=args.scores
    )
    print(f"wrote {args.out}" if args.out is not None else text, end="\n" if args.out else "")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from pearl_bot.publish import publish_folder

    result = publish_folder(
        args.folder,
        args.repo,
        create_pr=args.create_pr,
        private=args.private,
        commit_message=args.message,
    )
    _print_report(result, args.json)
    return 0


def _run(args: argparse.Namespace) -> int:
    from pearl_bot.recipe import load_recipe
    from pearl_bot.run import run

    report = run(
        load_recipe(args.recipe),
        force=args.force,
        create_pr=args.create_pr,
        dry_run=args.dry_run,
        out_dir=args.out,
    )
    _print_report(report, args.json)
    return 0 if report.ok else 1


def _demo(args: argparse.Namespace) -> int:
    from pearl_bot.demo import run_demo

    return run_demo(workdir=args.workdir)


if __name__ == "__main__":
    raise SystemExit(main())
