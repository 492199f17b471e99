"""The benchmark table: one Row per measurement, printed fixed-width for terminals or as Markdown."""
from __future__ import annotations

from dataclasses import dataclass, field

COLUMNS = ("row", "ours", "baseline", "ratio", "target", "met?")


@dataclass(frozen=True)
class Row:
    """One line of the table; figures are already formatted, notes are printed under the table."""

    name: str
    ours: str
    baseline: str
    ratio: str  # e.g. "143.2x", or "-" where there is nothing to divide
    target: str
    met: str  # "yes", "NO" or "-" (no target, or nothing measured)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def cells(self) -> tuple[str, ...]:
        """The row's cells in COLUMNS order."""
        return (self.name, self.ours, self.baseline, self.ratio, self.target, self.met)


def unmeasured(name: str, reason: str, target: str, notes: tuple[str, ...] = ()) -> Row:
    """A row that could not be measured in this run, saying why."""
    return Row(name, f"unmeasured ({reason})", "-", "-", target, "-", notes)


def times(ratio: float) -> str:
    """A ratio as '143.2x'; more decimals near 1, where they matter (e.g. '1.004x' for an overhead)."""
    if ratio >= 10:
        return f"{ratio:.1f}x"
    return f"{ratio:.2f}x" if ratio >= 2 else f"{ratio:.3f}x"


def met(ok: bool) -> str:
    """The 'met?' cell."""
    return "yes" if ok else "NO"


def rate(value: float, unit: str) -> str:
    """A throughput with thousands separators and 3 significant figures, e.g. '4,130,000 point-steps/s'."""
    if value >= 100:
        return f"{float(f'{value:.3g}'):,.0f} {unit}"
    return f"{value:.3g} {unit}"


def _footnotes(rows: list[Row]) -> list[str]:
    """One '- row: note' line per note, in table order."""
    lines = []
    for row in rows:
        lines += [f"- {row.name}: {note}" for note in row.notes]
    return lines


def format_text(rows: list[Row], header: list[str]) -> str:
    """The header lines, the table with columns padded to their widest cell, then the notes."""
    table = [COLUMNS] + [row.cells() for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    rule = "-+-".join("-" * w for w in widths)
    out = list(header) + [""]
    out.append(" | ".join(cell.ljust(w) for cell, w in zip(COLUMNS, widths)))
    out.append(rule)
    out += [" | ".join(cell.ljust(w) for cell, w in zip(cells, widths)) for cells in table[1:]]
    notes = _footnotes(rows)
    if notes:
        out += ["", "Notes:"] + notes
    return "\n".join(out)


def format_markdown(rows: list[Row], header: list[str]) -> str:
    """The same table as GitHub Markdown: header as a list, then the table, then the notes."""
    escape = lambda text: text.replace("|", "\\|")  # noqa: E731 - a pipe inside a cell would split it
    out = [f"- {line}" for line in header] + [""]
    out.append("| " + " | ".join(COLUMNS) + " |")
    out.append("|" + "|".join("---" for _ in COLUMNS) + "|")
    out += ["| " + " | ".join(escape(cell) for cell in row.cells()) + " |" for row in rows]
    notes = _footnotes(rows)
    if notes:
        out += ["", "Notes:", ""] + notes
    return "\n".join(out) + "\n"
