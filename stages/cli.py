"""`chatalign <stage|pipeline|eval|lineage|recipe> …` (also `python -m stages …`)."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from data.records import DataError
from stages.recipe import RecipeError, describe, dump_recipe, load_recipe
from stages.registry import RegistryError

# Stage name -> module with run(recipe, registry, force, resume). Order is the pipeline's.
STAGES = {
    "base": "stages.base",
    "sft": "stages.sft",
    "reward": "stages.reward",
    "rejection_sampling": "stages.rejection_sampling",
}
ALIASES = {"0": "base", "1": "sft", "2": "reward", "rm": "reward", "3": "rejection_sampling",
           "rs": "rejection_sampling", "stage-0": "base", "stage-1": "sft", "stage-2": "reward",
           "stage-3": "rejection_sampling"}


def stage_module(name: str):
    name = ALIASES.get(name, name)
    if name not in STAGES:
        raise RecipeError(f"unknown stage '{name}': expected one of {', '.join(STAGES)} (or its number)")
    return importlib.import_module(STAGES[name])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatalign", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def recipe_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--recipe", "-r", default="recipes/smollm2-135m.yaml", help="recipe YAML")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override, e.g. --set sft.lr=1e-5 (repeatable)")

    p = sub.add_parser("stage", help="run one stage")
    p.add_argument("name", help=f"one of {', '.join(STAGES)} (or 0, 1, …)")
    recipe_args(p)
    p.add_argument("--force", action="store_true", help="run even if an identical version exists")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")

    p = sub.add_parser("pipeline", help="run every stage in order")
    recipe_args(p)
    p.add_argument("--until", default=None, help="last stage to run")
    p.add_argument("--force", action="store_true")
    p.add_argument("--resume", action="store_true")

    p = sub.add_parser("eval", help="policies and reward models on data written by others (refusals, false "
                                    "refusals, RM accuracy on human-labelled pairs)")
    recipe_args(p)
    p.add_argument("--real-data", required=True, metavar="DIR",
                   help="folder with the public sets in their published layouts (advbench/, xstest/, llmbar/, "
                        "pandalm-testset/, hh-rlhf-harmless/)")
    p.add_argument("--refs", nargs="*", default=None, help="policy versions (default: base, sft, every rs round)")
    p.add_argument("--limit", type=int, default=None, help="at most this many prompts or pairs per set")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length cap (default eval.max_new_tokens)")
    p.add_argument("--out", default=None, help="report path (default <runs_dir>/<recipe>/real_eval.json)")

    p = sub.add_parser("lineage", help="print a version's chain back to the base")
    p.add_argument("ref", help="e.g. sft@latest, sft@v2")
    recipe_args(p)

    p = sub.add_parser("path", help="print the directory of a version (for scripts)")
    p.add_argument("ref", help="e.g. base@latest")
    recipe_args(p)

    p = sub.add_parser("recipe", help="show or document recipes")
    p.add_argument("action", choices=["show", "validate", "docs"])
    recipe_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from stages.common import open_registry, setup_logging

    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        if args.command == "recipe" and args.action == "docs":
            print("\n".join(describe()))
            return 0
        recipe = load_recipe(args.recipe, args.overrides)
        if args.command == "recipe":
            print(dump_recipe(recipe) if args.action == "show" else f"{args.recipe}: valid")
            return 0
        registry = open_registry(recipe)
        if args.command == "path":
            print(registry.resolve(args.ref).path)
            return 0
        if args.command == "lineage":
            print(registry.format_lineage(args.ref))
            return 0
        if args.command == "eval":
            from stages.evaluation import evaluate_real

            evaluate_real(recipe, registry, args.real_data, args.refs, args.limit, args.max_new_tokens, out=args.out)
            return 0
        if args.command == "stage":
            result = stage_module(args.name).run(recipe, registry, force=args.force, resume=args.resume)
            for version in result if isinstance(result, list) else [result]:
                print(json.dumps({"version": version.ref, "path": str(version.path)}))
            return 0
        if args.command == "pipeline":
            names = list(STAGES)
            if args.until:
                last = ALIASES.get(args.until, args.until)
                names = names[:names.index(last) + 1]
            for name in names:
                result = stage_module(name).run(recipe, registry, force=args.force, resume=args.resume)
                for version in result if isinstance(result, list) else [result]:
                    print(json.dumps({"stage": name, "version": version.ref, "path": str(version.path)}))
            return 0
    except (RecipeError, RegistryError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
