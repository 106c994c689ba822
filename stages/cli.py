"""`chatalign <stage|pipeline|eval|report|serve|lineage|verify|gc|path|recipe> …` (also `python -m stages …`).

Every error a user can act on is one line on stderr and exit code 2; Ctrl-C is exit code 130 with
where to --resume.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from data.records import DataError
from stages import catalogue
from stages.common import StageError, log, open_registry, setup_logging
from reward.server import ServerConfigError
from reward.server import add_arguments as add_server_arguments
from stages.recipe import RecipeError, describe, dump_recipe, load_recipe
from stages.registry import IntegrityError, Registry, RegistryError

EXIT_ERROR, EXIT_INTERRUPTED = 2, 130  # 130 = 128 + SIGINT, what shells report for Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatalign", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def recipe_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--recipe", "-r", default="recipes/smollm2-135m.yaml", help="recipe YAML")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override, e.g. --set sft.train.optim.lr=1e-5 (repeatable)")

    p = sub.add_parser("stage", help="run one stage")
    p.add_argument("name", help=f"one of {', '.join(s.name for s in catalogue.STAGES)} (or 0, 1, …)")
    recipe_args(p)
    p.add_argument("--force", action="store_true", help="run even if an identical version exists")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")

    p = sub.add_parser("pipeline", help="run every stage in order")
    recipe_args(p)
    p.add_argument("--until", default=None, help="last stage to run")
    p.add_argument("--force", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-eval", dest="evaluate", action="store_false",
                   help="skip the evaluation suite at the end (so does --until); the report is still written, from "
                        "the manifests")

    p = sub.add_parser("eval", help="the evaluation suite on a run's checkpoints (win rates, oracle, KL, RM "
                                    "accuracy); with --real-data instead, policies and RMs on data written by others")
    recipe_args(p)
    p.add_argument("--refs", nargs="*", default=None,
                   help="policy versions (default: every policy version of the run; with --real-data: base, sft, "
                        "every rs round)")
    p.add_argument("--prompts", type=int, default=None,
                   help="built-in held-out prompts every policy answers (default eval.suite_prompts)")
    p.add_argument("--real-data", default=None, metavar="DIR",
                   help="evaluate on the public sets in their published layouts in DIR (advbench/, xstest/, "
                        "llmbar/, pandalm-testset/, hh-rlhf-harmless/) instead, written to real_eval.json")
    p.add_argument("--limit", type=int, default=None, help="--real-data: at most this many prompts or pairs per set")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length cap (default eval.max_new_tokens)")
    p.add_argument("--out", default=None, help="results path (default <runs_dir>/<recipe>/eval.json, or "
                                               "real_eval.json with --real-data)")
    p.add_argument("--no-rm", dest="rms", action="store_false",
                   help="--real-data: policies only, skip the RMs' pair accuracy")
    p.add_argument("--ifeval-turns", type=int, default=0, metavar="N",
                   help="--real-data: also keep IFEval's checkable instructions (ifeval/ in DIR), given in the first "
                        "turn, over N turns (eval/ifeval.py); 0 = off")
    p.add_argument("--report", action="store_true", help="write the run report afterwards")

    p = sub.add_parser("report", help="write the run report: report.html (self-contained) and report.md")
    recipe_args(p)
    p.add_argument("--out", default=None, help="folder for report.html, report.md, report_files/ "
                                               "(default <runs_dir>/<recipe>/)")

    p = sub.add_parser("serve", help="the reward-model scoring HTTP API (docs/SERVER.md)")
    recipe_args(p)
    add_server_arguments(p)

    p = sub.add_parser("lineage", help="print a version's chain back to the base")
    p.add_argument("ref", help="e.g. sft@latest, sft@v2")
    recipe_args(p)

    p = sub.add_parser("verify", help="re-hash every file of versions and their ancestors against their manifests")
    p.add_argument("refs", nargs="*", metavar="REF", help="e.g. sft@latest (default: every version)")
    recipe_args(p)

    p = sub.add_parser("gc", help="remove abandoned work directories (never one a live process holds)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    recipe_args(p)

    p = sub.add_parser("path", help="print the directory of a version (for scripts)")
    p.add_argument("ref", help="e.g. base@latest")
    recipe_args(p)

    p = sub.add_parser("recipe", help="show or document recipes")
    p.add_argument("action", choices=["show", "validate", "docs"])
    recipe_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        return run_command(args)
    except (RecipeError, RegistryError, DataError, StageError, ServerConfigError) as err:
        print(one_line(f"error: {err}"), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as interrupt:
        # StageInterrupted names the work directory to resume; before a stage starts there is none
        print(one_line(f"interrupted: {interrupt}" if str(interrupt) else "interrupted"), file=sys.stderr)
        return EXIT_INTERRUPTED


def one_line(message: str) -> str:
    return " ".join(message.split())


def run_command(args: argparse.Namespace) -> int:
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
        problems: list[str] = []
        print(registry.format_lineage(args.ref, verify=True, problems=problems))
        if problems:
            more = f" (and {len(problems) - 1} more problems above)" if len(problems) > 1 else ""
            raise RegistryError(f"broken lineage of {args.ref}: {problems[0]}{more}")
        return 0
    if args.command == "eval":
        from stages.evaluation import evaluate_real, evaluate_run, write_run_report  # loads torch: only here

        if args.real_data:
            evaluate_real(recipe, registry, args.real_data, args.refs, args.limit, args.max_new_tokens,
                          out=args.out, rms=args.rms, ifeval_turns=args.ifeval_turns)
        else:
            evaluate_run(recipe, registry, args.refs, args.prompts, args.max_new_tokens, out=args.out)
        if args.report:
            print_report_paths(write_run_report(registry))
        return 0
    if args.command == "report":
        from stages.evaluation import write_run_report

        print_report_paths(write_run_report(registry, args.out))
        return 0
    if args.command == "serve":
        from reward.server import run_from_args

        threshold = recipe.rejection_sampling.safety_threshold if args.threshold is None else args.threshold
        run_from_args(args, version_dir(registry, args.helpful), version_dir(registry, args.safety), threshold)
        return 0
    if args.command == "verify":
        return verify(registry, args.refs)
    if args.command == "gc":
        report = registry.collect_garbage(dry_run=args.dry_run)
        print("\n".join(report) if report else f"{registry.root}: nothing to remove")
        return 0
    if args.command == "stage":
        for version in catalogue.stage(args.name).load().run(recipe, registry, force=args.force, resume=args.resume):
            print(json.dumps({"version": version.ref, "path": str(version.path)}))
        return 0
    if args.command == "pipeline":
        entries = catalogue.until(args.until)
        start, done = time.time(), []
        for i, entry in enumerate(entries, 1):
            stage_start = time.time()
            log.info("pipeline [%d/%d] %s (stage %d) · %s elapsed", i, len(entries), entry.name, entry.number,
                     clock(stage_start - start))
            for version in entry.load().run(recipe, registry, force=args.force, resume=args.resume):
                print(json.dumps({"stage": entry.name, "version": version.ref, "path": str(version.path)}))
                done.append((entry, version, version.manifest.get("created_at", "") >= iso_utc(stage_start)))
        log.info("pipeline: stages done in %s\n%s", clock(time.time() - start), time_table(done))
        from data.runtime import is_main_process
        from stages.evaluation import evaluate_run, write_run_report

        if not is_main_process():  # under torchrun / accelerate the first process evaluates and reports
            return 0
        if args.evaluate and recipe.eval.after_pipeline and args.until is None:  # a partial run: report only
            evaluate_run(recipe, registry)
        print_report_paths(write_run_report(registry))
        return 0
    return 1


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def iso_utc(t: float) -> str:
    """A time in the manifests' created_at format, for comparing which versions this run wrote."""
    import datetime

    return datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc).isoformat()


def time_table(done) -> str:
    """Per version the pipeline produced: reused or built, its wall time and where it went (data.runtime.phase)."""
    lines = ["| stage | version | this run | wall | where the time went |", "|---|---|---|---:|---|"]
    for entry, version, built in done:
        times = version.manifest.get("metrics", {}).get("time_s", {})
        wall = version.manifest.get("wall_time_s")
        parts = ", ".join(f"{k} {clock(v)}" for k, v in times.items() if k != "wall" and v >= 1)
        lines.append(f"| {entry.name} | {version.ref} | {'built' if built else 'reused'} | "
                     f"{clock(wall) if wall is not None else '?'} | {parts or '–'} |")
    return "\n".join(lines)


def print_report_paths(paths) -> None:
    html_path, md_path = paths
    print(json.dumps({"report": str(html_path), "markdown": str(md_path)}))


def version_dir(registry, ref_or_dir: str):
    """A registry ref (rm-helpful@latest) or a checkpoint directory, as a directory."""
    from pathlib import Path

    return Path(ref_or_dir) if Path(ref_or_dir).is_dir() else registry.resolve(ref_or_dir).path


def verify(registry: Registry, refs: list[str]) -> int:
    """Re-hash every file of the named versions and their ancestors (default: every version)."""
    if refs:
        versions = {v.id: v for ref in refs for v in registry.lineage(ref)}.values()
    else:
        versions = [v for stage in registry.stages() for v in registry.versions(stage)]
    failed = 0
    for version in versions:
        try:
            count = registry.verify(version, full=True)
            print(f"ok {version.id}: {count} files match its manifest")
        except IntegrityError as err:
            failed += 1
            print(one_line(f"FAILED {err}"))
    if failed:
        raise RegistryError(f"{failed} of {len(versions)} versions in {registry.root} differ from their manifests")
    if not versions:
        print(f"{registry.root}: no versions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
