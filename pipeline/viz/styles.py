"""One look per optimizer in every figure: a colour and a line style of its own, the same in every plot. Plain
data (no matplotlib): every module of viz/ draws with it."""
from __future__ import annotations

from pipeline.optim.registry import optimizer_names

# Twelve colours told apart at a glance (matplotlib's tab10, then black and ochre); past the tenth, dashes too.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000000", "#a6761d")
LINESTYLES = ("-", "--", "-.", ":")


def look(index: int) -> tuple[str, str]:
    """(colour, line style) number `index`: every colour solid first, then each again dashed, and so on."""
    return PALETTE[index % len(PALETTE)], LINESTYLES[(index // 10) % len(LINESTYLES)]


def looks(labels: list[str]) -> dict[str, tuple[str, str]]:
    """label -> (colour, line style). A registered optimizer's is fixed by its place in the registry, so adam
    looks the same in every figure; other labels take the looks no optimizer in `labels` uses, in order."""
    order = optimizer_names()
    found = {label: look(order.index(label)) for label in labels if label in order}
    taken = {order.index(label) for label in labels if label in order}
    spare = (index for index in range(10_000) if index not in taken)
    for label in labels:
        if label not in found:
            found[label] = look(next(spare))
    return found
