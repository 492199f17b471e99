"""The docs match the code: links and anchors resolve, the README stays one page that starts with the two commands,
the param tables are params.yaml's, every param is described (in the docs and in --help), and every test, module
and function the docs name exists. Fast: one process (`toy --help`), the rest reads files."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import reference
from pipeline.config.reference import Param, read_params, regenerate, render_section

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
DESCRIBED = read_params((ROOT / "params.yaml").read_text(encoding="utf-8"))
FILE_SUFFIXES = (".md", ".csv", ".db", ".png", ".json", ".gif")  # `bench.md` is a file the bench writes
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(page: Path) -> list[str]:
    """The page's lines outside fenced code blocks (where `#` starts a shell comment, not a heading)."""
    lines, fenced = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for line in _prose(page):
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            slug = _slug(heading.group(1))
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return found


def test_slugs_follow_githubs_rules():
    assert _slug("`cifar`: one optimizer trains a ResNet18 on CIFAR-10") == \
        "cifar-one-optimizer-trains-a-resnet18-on-cifar-10"
    assert _slug("What we fixed from the notebook") == "what-we-fixed-from-the-notebook"
    assert _slug("The test suite's wall time") == "the-test-suites-wall-time"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for line in _prose(page):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{target} (no file {file.relative_to(ROOT) if ROOT in file.parents else file})")
            elif anchor and (file.suffix != ".md" or anchor not in _anchors(file)):
                broken.append(f"{target} (no heading #{anchor} in {file.name})")
    assert not broken, f"{page.name}: {broken}"


def _code_blocks(page: Path) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S)


def test_the_readme_is_one_page_that_starts_with_the_two_commands():
    readme = ROOT / "README.md"
    assert len(readme.read_text(encoding="utf-8").splitlines()) <= 150
    assert [block.strip() for block in _code_blocks(readme)[:2]] == ["make demo", "make test"]


def test_the_exit_codes_table_lists_every_exit_code():
    from pipeline.core import errors

    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    assert {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)} == codes


def test_every_param_has_a_description():
    assert {section: [p.key for p in params] for section, params in DESCRIBED.items()} == \
        {section: list(values) for section, values in PARAMS.items()}
    assert not [(section, p.key) for section, params in DESCRIBED.items() for p in params if not p.description]


def test_the_entry_points_page_holds_params_yamls_tables_for_every_key():
    page = (ROOT / "docs" / "entry-points.md").read_text(encoding="utf-8")
    assert regenerate(page) == page, "docs/entry-points.md differs from params.yaml: run `make docs`"
    for section, values in PARAMS.items():
        block = page.split(f"<!-- params:{section} -->", 1)[1].split(f"<!-- /params:{section} -->", 1)[0]
        assert [row.split("`")[1] for row in block.strip().splitlines()[2:]] == list(values), section


def test_help_shows_each_toy_params_description():
    done = subprocess.run([sys.executable, "-m", "pipeline", "toy", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shown = " ".join(done.stdout.split())
    for param in DESCRIBED["toy"]:
        assert f"--{param.key} {param.default} {' '.join(param.description.split())}" in shown, param.key


def test_every_test_the_docs_name_exists():
    missing = []
    for page in PAGES:
        for file, name in re.findall(r"(test_\w+\.py)::(\w+)", page.read_text(encoding="utf-8")):
            source = ROOT / "tests" / file
            if not source.exists() or not re.search(rf"^def {name}\(", source.read_text(encoding="utf-8"), re.M):
                missing.append(f"{page.name}: {file}::{name}")
    assert not missing


def _defines(source: Path, name: str) -> bool:
    return bool(re.search(rf"^\s*(def|class) {name}\b|^{name}\s*[:=]", source.read_text(encoding="utf-8"), re.M))


def _resolves(dotted: str) -> bool:
    """`pipeline.a.b.name...`: the longest module prefix is a file of ours, and the next part is defined in it."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        for source in (base.with_suffix(".py"), base / "__init__.py"):
            if source.exists():
                return cut == len(parts) or _defines(source, parts[cut])
    return False


def test_every_module_and_function_the_docs_name_exists():
    missing = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        missing += [f"{page.name}: {path}" for path in re.findall(r"\b(pipeline/[\w/]+\.py)\b", text)
                    if not (ROOT / path).exists()]
        missing += [f"{page.name}: {name}" for name in re.findall(r"\b((?:pipeline|bench)(?:\.\w+)+)", text)
                    if not name.endswith(FILE_SUFFIXES) and not _resolves(name)]
    assert not missing


# ---- config/reference.py on small texts --------------------------------------------------------------------------

TEXT = """# a header comment, no key's
toy:
  steps: 500             # optimizer steps
                         # at most 1,000,000
  start: "x#y"  # a '#' inside quotes is the value's
  seed: 0
# a comment at the margin belongs to no key
cifar:
  model_uri: ""          # runs:/<run_id>/model | models:/<name>/<version>, 2**32
"""


def test_read_params_keeps_each_keys_comment_and_its_continuation_lines():
    assert read_params(TEXT) == {
        "toy": [Param("steps", "500", "optimizer steps at most 1,000,000"),
                Param("start", '"x#y"', "a '#' inside quotes is the value's"), Param("seed", "0", "")],
        "cifar": [Param("model_uri", '""', "runs:/<run_id>/model | models:/<name>/<version>, 2**32")]}


def test_render_section_escapes_what_markdown_would_take_for_html_or_a_column():
    assert render_section("cifar", TEXT).splitlines() == [
        "| param | default | description |", "|---|---|---|",
        r'| `model_uri` | `""` | runs:/&lt;run_id&gt;/model \| models:/&lt;name&gt;/&lt;version&gt;, 2\*\*32 |']
    with pytest.raises(KeyError, match="no section 'tune'"):
        render_section("tune", TEXT)


def test_regenerate_fills_empty_blocks_and_changes_nothing_twice():
    page = ("intro\n<!-- params:toy -->\n<!-- /params:toy -->\nmiddle\n"
            "<!-- params:cifar -->\nstale\n<!-- /params:cifar -->\n")
    once = regenerate(page, TEXT)
    assert once == ("intro\n<!-- params:toy -->\n" + render_section("toy", TEXT) + "\n<!-- /params:toy -->\nmiddle\n"
                    "<!-- params:cifar -->\n" + render_section("cifar", TEXT) + "\n<!-- /params:cifar -->\n")
    assert regenerate(once, TEXT) == once


def test_main_rewrites_only_the_tables(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(reference, "PROJECT_ROOT", tmp_path)
    page = tmp_path / "entry-points.md"
    page.write_text("# page\n<!-- params:predict -->\nold\n<!-- /params:predict -->\nend\n", encoding="utf-8")
    reference.main(page)
    assert page.read_text(encoding="utf-8") == \
        f"# page\n<!-- params:predict -->\n{render_section('predict')}\n<!-- /params:predict -->\nend\n"
    assert capsys.readouterr().out == "entry-points.md: 1 param tables from params.yaml\n"
