"""The `compress` command: `compress MODEL --pipeline a,b --data heldout.npz --out DIR`, plus sub-commands
`inspect` and `stages` beside it (a group whose default command is `run`, so the plain form keeps working).

Exit codes: 0 ok, 1 error, 2 usage, 3 gate failed, 130 interrupted (SIGINT), 143 terminated (SIGTERM: handled like
SIGINT, the staging directory removed). Each command imports what it runs when it runs (run/command.py for a run), so
`--help`, `--version` and `diff` start without torch or ONNX Runtime. Errors print one line, never a traceback
(`cli_errors.py`), and third-party warnings and logs stay off stderr (`--debug` or COMPRESSOR_DEBUG=1 shows them, and
the traceback).
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from compressor.cli_errors import err, framework_errors_as_one_line, guard
from compressor.errors import Terminated, request_stop
from compressor.report.diff import diff_markdown, diff_table
from compressor.run.settings import setting_help
from compressor.schema import describe
from compressor.version import __version__

DEFAULT_PIPELINE = "quantize"
ARGV = "compressor.argv"


def hide_flag_types(command, ctx) -> None:
    """A flag takes no value: no `<bool>` beside it in --help (typer shows the type of every option)."""
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class FlagsCommand(TyperCommand):
    def format_help(self, ctx, formatter) -> None:
        hide_flag_types(self, ctx)
        super().format_help(ctx, formatter)


class DefaultCommandGroup(TyperGroup):
    """Route `compress MODEL ...` to the `run` command when the first word is not a sub-command."""

    default_command = "run"
    main = framework_errors_as_one_line(TyperGroup.main)  # `--seed abc`: one `error:` line, exit 2

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_command, *args]
        ctx.meta[ARGV] = list(args)  # `run --nproc N` relaunches the same command under torchrun
        return super().parse_args(ctx, args)

    def format_help(self, ctx, formatter) -> None:
        """`compress --help` shows the sub-commands and then the options of the default form (`run`)."""
        hide_flag_types(self, ctx)
        super().format_help(ctx, formatter)
        run = self.commands[self.default_command]
        run.format_help(type(ctx)(run, info_name=ctx.info_name, parent=ctx.parent), formatter)


app = typer.Typer(cls=DefaultCommandGroup, add_completion=False, no_args_is_help=True,
                  help="Compress a PyTorch model and prove on held-out data what it cost. "
                       "Exit codes: 0 ok, 1 error, 2 usage, 3 gate failed, 130 interrupted, 143 terminated.",
                  context_settings={"help_option_names": ["-h", "--help"]}, pretty_exceptions_enable=False)
out = Console()


def _version(value: bool) -> None:
    if value:
        print(f"compressor {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """compress MODEL --pipeline a,b,c --data heldout.npz --out DIR"""


DEBUG_HELP = "Show tracebacks and third-party warnings and logs (same as COMPRESSOR_DEBUG=1)."


def _debug(on: bool) -> None:
    if on:
        os.environ["COMPRESSOR_DEBUG"] = "1"


def _on_sigterm(signum, frame) -> None:
    request_stop(Terminated)


def _on_sigint(signum, frame) -> None:
    request_stop(KeyboardInterrupt)


@app.command("run", cls=FlagsCommand)
@guard
def run(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Checkpoint: .pt2, TorchScript, state_dict (+ --arch), pickle "
                                 "(+ --trust-pickle), or a Hugging Face model directory (+ --task)."),
    pipeline: str = typer.Option(DEFAULT_PIPELINE, "--pipeline", "-p", help="Comma-separated stages, in order, "
                                 "or a recipe file (.yaml/.toml) with stages, options, data and gates."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Stage option: stage.key=value (repeatable)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Held-out set (.npz or .pt dict; .txt/.jsonl/.csv "
                                        "text or an image folder with a Hugging Face model): used only for "
                                        "reporting (required unless the recipe names it)."),
    train_data: Optional[Path] = typer.Option(None, "--train-data", help="Training set for stages that fine-tune."),
    val_data: Optional[Path] = typer.Option(None, "--val-data", help="Validation set for every stage decision "
                                            "(default: a seeded 10% split of the training set)."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="Calibration samples (default: training set)."),
    out_dir: Path = typer.Option(Path("out"), "--out", "-o", help="Output directory (must be empty unless --force)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture for a state_dict: package.module:factory "
                                       "or path/to/file.py:factory."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow unpickling a whole nn.Module "
                                      "(runs code from the file: only for files you trust)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run a Hugging Face directory's own "
                                           "modelling code (config.json auto_map): only for files you trust."),
    task: Optional[str] = typer.Option(None, "--task", help=setting_help("task")),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out as a whole (files you put there "
                                                      "are not kept)."),
    seed: Optional[int] = typer.Option(None, "--seed", help=setting_help("seed")),
    device: Optional[str] = typer.Option(None, "--device", help=setting_help("device")),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help=setting_help("max_drop")),
    confidence: Optional[float] = typer.Option(None, "--confidence", help=setting_help("confidence")),
    confirm: Optional[float] = typer.Option(None, "--confirm", help=setting_help("confirm")),
    min_recovery: Optional[float] = typer.Option(None, "--min-recovery", help=setting_help("min_recovery")),
    max_bytes: Optional[int] = typer.Option(None, "--max-bytes", help=setting_help("max_bytes")),
    floor: Optional[List[str]] = typer.Option(None, "--floor", help="Gate: metric=value floor on the final artifact "
                                              "(e.g. accuracy=95, cosine_min=0.99; repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out: finished stages are "
                                "restored from their checkpoints (same inputs and settings required)."),
    keep_checkpoints: bool = typer.Option(False, "--keep-checkpoints", help="Keep --out/.checkpoints after success."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the verdict line."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Every step's line (prune steps, epochs, sizes "
                                 "tried) kept on screen, and every note of each stage after the tables."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", help=setting_help("threads")),
    time_limit: Optional[str] = typer.Option(None, "--time-limit", help=setting_help("time_limit")),
    precision: Optional[str] = typer.Option(None, "--precision", help=setting_help("precision")),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="Data-parallel processes for the fine-tuning "
                                        "stages on this machine: relaunches the command under torchrun "
                                        "--standalone --nproc-per-node N (DDP; gloo on CPU, nccl on CUDA) "
                                        "\\[default: 1]."),
    metric: Optional[str] = typer.Option(None, "--metric", help=setting_help("metric")),
    output_metric: Optional[List[str]] = typer.Option(None, "--output-metric", help="A model with several "
                                                      "outputs: the metric of another output, "
                                                      "NAME=agreement|cosine|mse (names as the report's note "
                                                      "gives them; repeatable) \\[default: detected per output]."),
) -> None:
    """Compress MODEL with a pipeline of stages, verify on held-out data, write ONNX + safetensors + report."""
    _debug(debug)
    from compressor.run.command import run_command  # torch and ONNX Runtime load here, not for --help or diff

    args = dict(locals())
    args.pop("ctx")
    raise typer.Exit(run_command(ctx.meta[ARGV][1:], args, out, err))


@app.command("stages", cls=FlagsCommand)
@guard
def stages_cmd(markdown: bool = typer.Option(False, "--markdown", help="Print docs/options.md: every run setting "
                                              "and stage option as Markdown tables.")) -> None:
    """List every stage with its options: default, type, range and one line of help (from their declarations)."""
    from compressor.registry import available_stages  # loads every stage (and torch)
    from compressor.run.options_doc import options_markdown

    if markdown:
        print(options_markdown(), end="")
        return
    for name, cls in sorted(available_stages().items()):
        out.print(f"[bold]{name}[/bold] - {cls.summary}")
        follows = ", ".join(sorted(cls.follows)) or "nothing"
        out.print(f"  may follow: {follows}{'; export-time, always last' if cls.export_time else ''}", highlight=False)
        for o in describe(cls.Config):
            where = f", {o.range}" if o.range else ""
            out.print(f"  {name}.{o.name} = {o.default}  [{o.type}{where}]  {o.help}", highlight=False, markup=False)


@app.command("inspect", cls=FlagsCommand)
@guard
def inspect_cmd(
    model: Path = typer.Argument(..., help="Checkpoint to inspect."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture for a state_dict."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow unpickling a whole nn.Module."),
    data: Optional[Path] = typer.Option(None, "--data", help="A data file, to trace an eager model by its ops."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Layers, parameters, bytes per layer, and what each stage would touch."""
    _debug(debug)
    from compressor.inspect_model import inspect_model

    inspect_model(model, arch, trust_pickle, data, out)


@app.command("diff", cls=FlagsCommand)
@guard
def diff_cmd(
    report_a: Path = typer.Argument(..., help="report.json of the reference run."),
    report_b: Path = typer.Argument(..., help="report.json of the new run."),
    markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table (for a PR comment)."),
    allow_different: bool = typer.Option(False, "--allow-different-models",
                                         help="Compare runs of different source models (warned) instead of refusing."),
) -> None:
    """Compare two runs of one model: metrics, sizes, latency with its spread, sparsity and verdicts."""
    if markdown:
        print(diff_markdown(report_a, report_b, allow_different), end="")
        return
    table, warning = diff_table(report_a, report_b, allow_different)
    if warning:
        err.print(warning, style="bold yellow", highlight=False)
    out.print(table)


def entrypoint() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    try:  # unwind like Ctrl-C: staging removed, one line (only the main thread may set a handler)
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        previous_int = signal.getsignal(signal.SIGINT)
        if previous_int is signal.default_int_handler:  # an inherited SIG_IGN (a background job) is kept
            signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:
        previous = previous_int = None
    try:
        app()
    except SystemExit:
        raise
    except Terminated:
        print("error: terminated (SIGTERM)", file=sys.stderr)
        sys.exit(143)
    except Exception as exc:  # never a traceback for the user
        if os.environ.get("COMPRESSOR_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)


if __name__ == "__main__":
    entrypoint()
