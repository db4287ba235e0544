"""Tables that fit the terminal: the columns that matter in full, the others wrapped, or dropped when
even wrapped they would not fit. Piped, every column as tab-separated lines, for scripts.

rich alone shrinks every column of a wide table to fit, so that in 80 columns each cell is cut short
("digit…", "@cham…"): a name or an alias cut short cannot be copied into the next command.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], full: Sequence[str], drop: Sequence[str]
) -> None:
    """A table on a terminal (rich's test: a tty, or TTY_COMPATIBLE=1 / FORCE_COLOR); tab-separated
    lines (a header, then one per row) otherwise, every column, nothing cropped.

    Args:
        full: the columns that matter (names, versions, aliases): never cut, never dropped.
        drop: every other column, least important first: dropped in this order while the table does
            not fit the terminal's width with the remaining ones wrapped at spaces.
    """
    console = Console()
    if not console.is_terminal:
        for row in (columns, *rows):
            print("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row))
        return
    widths = fit(columns, rows, full, drop, console.width)
    dropped = [c for c in columns if c not in widths]
    caption = f"not shown at this width: {', '.join(dropped)} (a wider terminal, or a pipe, shows them)" if dropped else None
    table = Table(title=title, caption=caption)
    for name, width in widths.items():
        # fold: a cell wider than its column (even a name, on a very narrow terminal) wraps onto more lines, whole.
        table.add_column(name, width=width, overflow="fold")
    keep = [columns.index(name) for name in widths]
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    console.print(table)


def fit(
    columns: Sequence[str], rows: Sequence[Sequence[str]], full: Sequence[str], drop: Sequence[str], width: int
) -> dict[str, int | None]:
    """The columns shown in `width` cells, in their order, each with its width (None: rich's own, as all fits).

    rich would shrink every column alike, names included, so the widths are set here: the `full`
    columns at their widest cell, the others at least at their longest word, the spare width given
    to them most important first.
    """
    assert set(full) | set(drop) == set(columns), "every column is either shown in full or droppable"
    cells = {name: [name, *(row[i] for row in rows)] for i, name in enumerate(columns)}
    natural = {name: max(cell_len(text) for text in texts) for name, texts in cells.items()}
    need = {
        name: natural[name] if name in full else max(cell_len(word) for text in texts for word in text.split() or [""])
        for name, texts in cells.items()
    }  # fmt: skip

    def spare(shown: list[str]) -> int:
        # Each cell has a space of padding on each side and a rule after it; one more rule opens the row.
        return width - sum(need[c] + 3 for c in shown) - 1

    shown = list(columns)
    for name in drop:
        if spare(shown) >= 0:
            break
        shown.remove(name)
    left = spare(shown)
    widths: dict[str, int | None] = dict.fromkeys(shown)
    if 0 <= left < sum(natural[c] - need[c] for c in shown):
        for name in [*(c for c in shown if c in full), *(c for c in reversed(drop) if c in shown)]:
            widths[name] = need[name] + min(left, natural[name] - need[name])
            left -= widths[name] - need[name]
    return widths
