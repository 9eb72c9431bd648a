"""The `compress MODEL ...` command's work, once its arguments are parsed (cli.py): the recipe and the command line
merged into RunOptions, a relaunch under torchrun for `--nproc N`, the run, and what the terminal prints.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from compressor.errors import UsageError
from compressor.report.build import print_report, verdict_line
from compressor.run.launch import launch, without_option
from compressor.run.pipeline import RunOptions
from compressor.run.plan import plan_stages
from compressor.run.progress import Reporter
from compressor.run.recipe import is_recipe, load_recipe
from compressor.run.runner import compress
from compressor.run.settings import SETTINGS, merge_settings
from compressor.runtime.parallel import launched, start, world
from compressor.verify.gates import parse_floors
from compressor.verify.outputs import parse_output_metrics


def run_options(args: dict[str, Any]) -> RunOptions:
    """RunOptions from the command line's values over a recipe's (when --pipeline names one) over the defaults."""
    pipeline = args["pipeline"]
    names, recipe_options, settings = pipeline.split(","), {}, {}
    if is_recipe(pipeline):
        recipe = load_recipe(Path(pipeline))
        names = [n for n, _, _ in recipe.stages]
        recipe_options = {n: opts for n, opts, _ in recipe.stages}
        settings = recipe.settings
    rdata, gates = settings.get("data", {}), settings.get("gates", {})

    def pick_path(cli_value, key):
        value = cli_value if cli_value is not None else rdata.get(key)
        return None if value is None else Path(value)

    heldout = pick_path(args["data"], "heldout")
    if heldout is None:
        raise UsageError("--data (the held-out set) is required, on the command line or as data.heldout in a recipe")
    floors = {**{k: float(v) for k, v in (gates.get("floors") or {}).items()}, **parse_floors(args["floor"] or [])}
    return RunOptions(model=args["model"], pipeline=names, data=heldout, out=args["out_dir"],
                      overrides=args["set_"] or [], train_data=pick_path(args["train_data"], "train"),
                      val_data=pick_path(args["val_data"], "val"), calib_data=pick_path(args["calib_data"], "calib"),
                      arch=args["arch"], trust_pickle=args["trust_pickle"], trust_remote_code=args["trust_remote_code"],
                      force=args["force"], quiet=args["quiet"],
                      output_metrics={**settings.get("output_metrics", {}),
                                      **parse_output_metrics(args["output_metric"])},
                      floors=floors, recipe_options=recipe_options, resume=args["resume"],
                      keep_checkpoints=args["keep_checkpoints"],
                      **merge_settings({name: args[name] for name in SETTINGS}, settings))


def run_command(argv: list[str], args: dict[str, Any], out: Console, err: Console) -> int:
    """Run the command with the parsed `args` (`argv`: the words after `run`, for a relaunch), printing the report
    on `out` and progress on `err`; the exit code."""
    nproc = args["nproc"]
    if nproc is not None and launched() and nproc != int(os.environ["WORLD_SIZE"]):
        raise UsageError(f"--nproc {nproc} under a launcher of {os.environ['WORLD_SIZE']} processes: drop --nproc")
    if nproc is not None and nproc > 1 and not launched():
        plan_stages(run_options(args))  # the plan's usage errors said once, before N processes start
        return launch(nproc, without_option(argv, "--nproc"))
    options = run_options(args)
    quiet = options.quiet
    if launched():  # one rank of torchrun: join its process group; only rank 0 prints and writes
        options.device = start(options.device)
        quiet = options.quiet = quiet or world()[0] > 0
    report, code = compress(options, Reporter(err, quiet, args["verbose"]))
    if report is None:  # a rank > 0 of a data-parallel run, done once it left the process group (runtime/parallel.py)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no interpreter teardown, which raced gloo's threads ("terminate called without ...")
    if not quiet:
        print_report(report, out, args["verbose"])
        written = sorted(p.name for p in options.out.iterdir() if not p.name.startswith("."))
        out.print(f"wrote {options.out}/: {', '.join(written)}", highlight=False)
    print(verdict_line(report))
    return code
