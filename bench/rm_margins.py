"""The margin ablation of Llama 2's Table 28, in the layout of Table 8: both reward models trained with margin
none, small and large on one recipe's data, their test accuracy per preference rating.

Each margin is one run of the ordinary stage (`chatalign stage reward --set reward.margin=X`), so each gives
new rm-helpful / rm-safety versions (a margin already run, e.g. by `chatalign pipeline` with the recipe's own
margin, is reused). All margins must start from the same parent: the recipe's `reward.parent` (sft@latest by
default) is resolved once, and every version made is checked against it (the recipe's ref is passed on
unchanged, so that versions made by the pipeline match). The numbers are read back from the versions'
manifests (metrics eval_<test set>: accuracy overall and per rating).

    python bench/rm_margins.py --recipe recipes/smollm2-135m.yaml --append-to docs/REWARD_MODELS.md
    python bench/rm_margins.py --recipe recipes/smollm2-rm-real.yaml --margins small --prepare \\
        --append-to docs/REWARD_MODELS.md

With --append-to FILE, a block between `<!-- results:<recipe name> -->` and `<!-- /results:<recipe name> -->`
in FILE is replaced (docs/REWARD_MODELS.md keeps one per recipe); a file without that block gets the section
appended (docs/BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

MARGINS = ("none", "small", "large")
RM_LABELS = {"rm-helpful": "Helpfulness RM", "rm-safety": "Safety RM"}


def cli(args, *command: str, overrides: list[str] = ()) -> list[dict]:
    """Run `chatalign <command> --recipe R --set ...`; its logs go to the terminal, its JSON lines come back."""
    cmd = [sys.executable, "-m", "stages", *command, "--recipe", args.recipe]
    for item in list(args.overrides) + list(overrides):
        cmd += ["--set", item]
    print("$ chatalign " + shlex.join(cmd[3:]), flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"chatalign {' '.join(command)} failed with exit status {done.returncode}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def pinned_parent(args):
    """The recipe's reward.parent resolved to one version (e.g. sft@latest -> sft/v3)."""
    from stages.common import open_registry
    from stages.recipe import load_recipe
    from stages.registry import RegistryError

    recipe = load_recipe(args.recipe, args.overrides)
    try:
        return open_registry(recipe).resolve(recipe.reward.parent)
    except RegistryError as err:
        stage = recipe.reward.parent.split("@")[0]
        raise SystemExit(f"reward.parent '{recipe.reward.parent}' of {args.recipe}: {err}. Run `chatalign pipeline "
                         f"--until {stage} --recipe {args.recipe}` first, or pass --prepare") from err


def test_set_labels(args) -> dict[str, str]:
    """What each test set is, for the table: built-in, or the files it comes from."""
    from stages.recipe import load_recipe

    section = load_recipe(args.recipe, args.overrides).reward
    labels = {}
    for kind in ("helpful", "safety"):
        sources = getattr(section, kind).test
        names = sorted({"built-in" if s.source == "builtin" else Path(s.source).name for s in sources})
        labels[kind] = f"{kind} ({', '.join(names)})" if names else kind
    return labels


def collect(runs: dict[str, list[dict]], labels: dict[str, str]) -> tuple[dict, list[str]]:
    """Per RM: {row name: {test set: metrics as format_accuracy_table reads them}}; plus the version list."""
    tables: dict[str, dict] = {}
    versions = []
    for margin, outputs in runs.items():
        for out in outputs:
            manifest = json.loads((Path(out["path"]) / "manifest.json").read_text())
            stage, metrics = manifest["stage"], manifest["metrics"]
            sets = {}
            for name in ("helpful", "safety"):
                m = metrics.get(f"eval_{name}")
                if m:
                    per_rating = {rating: {"accuracy": value} for rating, value in m["per_rating"].items()}
                    label = f"{labels.get(name, name)}, n={m['n']}"
                    sets[label] = {"accuracy": m["accuracy"], "per_rating": per_rating}
            tables.setdefault(stage, {})[f"margin {margin}"] = sets
            versions.append(f"{out['version']} (margin {margin}, {manifest.get('wall_time_s', 0):.0f} s)")
    return tables, versions


def section(args, tables: dict, versions: list[str], parent: str) -> str:
    import platform

    import torch

    from eval.rm import format_accuracy_table

    cwd = os.getcwd().rstrip("/") + "/"
    command = "python bench/rm_margins.py " + shlex.join(a.replace(cwd, "") for a in sys.argv[1:])
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    lines = [f"### Margin ablation, recipe `{args.recipe}` ({datetime.date.today().isoformat()})", "",
             f"- machine: {cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}",
             f"- parent: `{parent}`; versions: {', '.join(versions)}",
             f"- command: `{command}`", ""]
    for stage, rows in tables.items():
        lines += [f"{RM_LABELS.get(stage, stage)}: test accuracy (%) per preference rating", "",
                  format_accuracy_table(rows), ""]
    return "\n".join(lines)


def write(path: Path, text: str, block: str) -> str:
    """Replace the results block named ``block`` in ``path``, or append when there is none."""
    begin, end = f"<!-- results:{block} -->", f"<!-- /results:{block} -->"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        path.write_text(pattern.sub(lambda _: f"{begin}\n{text}\n{end}", old, count=1))
        return "replaced the results block in"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(("\n" if old and not old.endswith("\n\n") else "") + text + "\n")
    return "appended to"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", "-r", default="recipes/smollm2-135m.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for every run (repeatable), e.g. runs_dir=/tmp/x")
    parser.add_argument("--margins", nargs="+", choices=MARGINS, default=list(MARGINS))
    parser.add_argument("--prepare", action="store_true",
                        help="first run the stages up to the RMs' parent (reused when unchanged)")
    parser.add_argument("--force", action="store_true", help="train again even when a margin's versions exist")
    parser.add_argument("--append-to", action="append", default=[], metavar="FILE",
                        help="write the tables into FILE (repeatable): docs/REWARD_MODELS.md, docs/BENCHMARKS.md")
    args = parser.parse_args()

    from stages.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.prepare:
        cli(args, "pipeline", "--until", recipe.reward.parent.split("@")[0])
    parent = pinned_parent(args)
    runs = {}
    for margin in args.margins:
        runs[margin] = cli(args, "stage", "reward", *(["--force"] if args.force else []),
                           overrides=[f"reward.margin={margin}"])
        for out in runs[margin]:
            parents = json.loads((Path(out["path"]) / "manifest.json").read_text())["parents"]
            if [p["id"] for p in parents] != [parent.id]:
                raise SystemExit(f"{out['version']} was trained from {[p['id'] for p in parents]}, not {parent.id}: "
                                 f"'{recipe.reward.parent}' moved while the margins ran; run the script again")
    tables, versions = collect(runs, test_set_labels(args))
    text = section(args, tables, versions, parent.ref)
    print(text)
    for target in args.append_to:
        print(f"{write(Path(target), text, recipe.name)} {target}")


if __name__ == "__main__":
    main()
