"""`compress inspect MODEL`: layers, parameters, bytes per layer, and what each stage would touch."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from compressor.algorithms.basis.hierarchy import example_inputs, hierarchical_model
from compressor.algorithms.basis.stacks import detect_stacks
from compressor.core.layers import find_weights
from compressor.core.params import count_params
from compressor.io.data import load_dataset
from compressor.io.load import load_model, model_bytes_of
from compressor.registry import available_stages
from compressor.report.build import human_bytes


def stage_targets(weights, model) -> dict[str, list[str]]:
    """Which parameters each built-in stage would act on with its default options."""
    out = {}
    for name, cls in available_stages().items():
        targets = getattr(cls, "default_targets", None)
        if targets is not None:
            out[name] = targets(weights, model)
    return out


def inspect_model(path: Path, arch: str | None, trust_pickle: bool, data: Path | None, console: Console) -> None:
    loaded = load_model(path, arch, trust_pickle)
    encoder = loaded.data_encoder  # a Hugging Face directory's tokenizer or image processor
    example = load_dataset(data, loaded.input_names, loaded.input_dtypes, encoder).example() if data else None
    weights = find_weights(loaded.module, example, loaded.program)
    table = Table(title=f"{path} ({loaded.format}); inputs: {', '.join(loaded.input_names)}", title_justify="left")
    for col in ("parameter", "shape", "read by", "params", "bytes"):
        table.add_column(col, justify="left" if col in ("parameter", "shape", "read by") else "right")
    params = dict(loaded.module.named_parameters())
    for w in weights:
        p = params[w.name]
        table.add_row(w.name, "x".join(map(str, w.shape)), w.kind, f"{p.numel():,}",
                      human_bytes(p.numel() * p.element_size()))
    _add_rest(table, loaded.module, {id(params[w.name]) for w in weights})
    console.print(table)
    for stage, names in stage_targets(weights, loaded.module).items():
        console.print(f"[bold]{stage}[/bold] would touch {len(names)}: {', '.join(names) or '(nothing)'}",
                      highlight=False)
    _print_stacks(loaded, example, console)
    if example is None and loaded.program is None:
        console.print("[dim]no --data given: an eager model's layers were classified by module type[/dim]")


def _add_rest(table: Table, module, listed: set[int]) -> None:
    """Rows for the parameters no op reads as a weight and for the buffers (batch-norm statistics, ...), and the
    total the report counts as the model's bytes (`model_bytes_of`: every tensor once, parameters and buffers)."""
    rest = {id(p): p for p in module.parameters() if id(p) not in listed}
    buffers = {id(b): b for b in module.buffers()}
    if rest:
        table.add_row(f"other parameters ({len(rest)})", "", "", f"{sum(p.numel() for p in rest.values()):,}",
                      human_bytes(sum(p.numel() * p.element_size() for p in rest.values())))
    if buffers:
        table.add_row(f"buffers ({len(buffers)})", "", "", "",
                      human_bytes(sum(b.numel() * b.element_size() for b in buffers.values())))
    table.add_row("total (as the report counts)", "", "", f"{count_params(module)[0]:,}",
                  human_bytes(model_bytes_of(module)))


def _print_stacks(loaded, example, console: Console) -> None:
    """Stacks of same-shaped blocks applied one after another (what `basis` compresses)."""
    ex = example_inputs(loaded.module, example, loaded.program)
    try:
        module = hierarchical_model(loaded.module, ex[0], loaded.input_names, ex[1]) if ex else loaded.module
        stacks = detect_stacks(module, *(ex or (None, None)))
    except Exception as exc:  # inspection never fails on this section
        console.print(f"[dim]stacks: not traced ({type(exc).__name__})[/dim]")
        return
    if not stacks and not ex:
        console.print("[bold]stacks[/bold]: not traced without an example input: pass --data to find the runs of "
                      "same-shaped blocks basis compresses", highlight=False)
        return
    if not stacks:
        console.print("[bold]stacks[/bold]: none (no run of same-shaped blocks applied one after another)")
        return
    for s in stacks:
        how = "traced" if s.verified else "not traced: nn.Sequential order assumed"
        console.print(f"[bold]stack[/bold] {s.name}: {s.depth} blocks x {s.params_per_block:,} params "
                      f"({how})", highlight=False)
