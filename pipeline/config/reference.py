"""params.yaml as a reference: each key with its default as written and its comment, the one description of a param.
docs/entry-points.md's param tables and `--help` are made from it, so they cannot drift from the defaults.

A key's description is the comment on its line and the comment-only lines under it, joined into one line.
Text in, text out: `main()` alone reads and writes files.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.tasks import PARAMS_FILE
from pipeline.core.provenance import PROJECT_ROOT

PAGE = PROJECT_ROOT / "docs" / "entry-points.md"
_SECTION = re.compile(r"([A-Za-z_]\w*):\s*(?:#.*)?")
_KEY = re.compile(r"\s+([A-Za-z_]\w*):(.*)")
_BLOCK = re.compile(r"(<!-- params:(\w+) -->)(.*?)(<!-- /params:\2 -->)", re.DOTALL)


@dataclass(frozen=True)
class Param:
    """One key of a params.yaml section: its name, its default as written there, and its description."""

    key: str
    default: str
    description: str


def _value_and_comment(rest: str) -> tuple[str, str]:
    """`value  # comment` -> (value, comment); a '#' inside quotes or glued to a word is part of the value."""
    quote = None
    for index, char in enumerate(rest):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or rest[index - 1].isspace()):
            return rest[:index].strip(), rest[index + 1:].strip()
    return rest.strip(), ""


def read_params(text: str) -> dict[str, list[Param]]:
    """Every section of params.yaml text -> its params in file order, each with its joined comment lines."""
    sections: dict[str, list[Param]] = {}
    current: list[Param] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or line.startswith("#"):  # a comment at the margin belongs to no key
            continue
        if not line[0].isspace():
            header = _SECTION.fullmatch(line.rstrip())
            current = sections.setdefault(header.group(1), []) if header else None
        elif current is not None and stripped.startswith("#"):
            if current:  # a comment line under a key continues its description
                last = current[-1]
                current[-1] = Param(last.key, last.default, f"{last.description} {stripped[1:].strip()}".strip())
        elif current is not None and (found := _KEY.fullmatch(line)):
            current.append(Param(found.group(1), *_value_and_comment(found.group(2))))
    return sections


def _cell(text: str) -> str:
    """Text as a table cell: outside `code` spans, <name> would be taken for HTML and ** for bold."""
    parts = text.replace("|", "\\|").split("`")
    for index in range(0, len(parts), 2):
        parts[index] = parts[index].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    return "`".join(parts)


def render_section(section: str, text: str | None = None) -> str:
    """One section's params as a markdown table: param, default, description."""
    sections = read_params(PARAMS_FILE.read_text(encoding="utf-8") if text is None else text)
    if section not in sections:
        raise KeyError(f"params.yaml has no section {section!r}; sections: {', '.join(sections)}")
    rows = [f"| `{p.key}` | `{p.default}` | {_cell(p.description)} |" for p in sections[section]]
    return "\n".join(["| param | default | description |", "|---|---|---|", *rows])


def regenerate(text: str, params_text: str | None = None) -> str:
    """`text` with the content between each `<!-- params:S -->` and `<!-- /params:S -->` replaced by S's table."""
    params_text = PARAMS_FILE.read_text(encoding="utf-8") if params_text is None else params_text
    return _BLOCK.sub(lambda m: f"{m.group(1)}\n{render_section(m.group(2), params_text)}\n{m.group(4)}", text)


def main(page: Path = PAGE) -> None:
    """Rewrite the param tables of docs/entry-points.md from params.yaml (`make docs`)."""
    before = page.read_text(encoding="utf-8")
    after = regenerate(before)
    if after != before:
        page.write_text(after, encoding="utf-8")
    print(f"{page.relative_to(PROJECT_ROOT)}: {len(_BLOCK.findall(after))} param tables from "
          f"{PARAMS_FILE.name}{'' if after != before else ' (unchanged)'}")
