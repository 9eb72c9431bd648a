"""One Markdown table per benchmark: written to bench/results/NAME.md and printed."""
from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_table(name: str, intro: str, header: list[str], rows: list[list[str]]) -> str:
    """`# bench/NAME.py`, the intro paragraph, then the table; returns the text."""
    text = (f"# bench/{name}.py\n\n{intro}\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
            + "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
    return text
