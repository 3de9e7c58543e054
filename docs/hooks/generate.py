"""MkDocs hook: the pages made from the code at build time, so they cannot drift from it.

- ``reference/cli.md``: every command's ``--help``, from `cam_infer.cli.arguments.build_parser`;
- ``methods/*.md``: one page per registered method (`cam_infer.methods.METHODS`): its summary, the
  formula and paper of its module docstring, its options, cost and measured speed;
- ``benchmarks/<table>.md``: each ``bench/*.md`` with how it was measured (its script's docstring);
- ``<!-- methods-table -->`` in a page: the method table (`methods_table`), with the benchmark figures
  (`measured_ratios`); ``python docs/hooks/generate.py bench/*.md`` prints it;
- ``<!-- include: FILE -->`` in a page: that file of the repository, without its title (CONTRIBUTING.md).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
MEASURED_FROM = ("methods.md", "seed_methods.md", "gradients.md", "rollout.md",
                 "transformers.md")                                # as CONTRIBUTING's table command
TOKEN_MODEL = "vit-s"      # the model whose rows give the figures of methods of transformers only (rollout)
TOKEN_MODEL_SHOWN = "ViT-S"
TOKENS_ONLY = {"vit-recipro"}      # methods of transformers only besides those reading the attention (docs/pictures.py)
SCRIPT_OF = {"gradients": "methods", "torchcam": "seed_methods",
             "transformers_small": "transformers"}     # tables written by another script
TABLE_MARKER = "<!-- methods-table -->"
INCLUDE = re.compile(r"<!-- include: (\S+) -->")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def methods():
    from cam_infer.methods import METHODS
    return METHODS


def method_page(name: str) -> str:
    return f"methods/{name.replace('+', 'p')}.md"


def bench_tables() -> list[Path]:
    return sorted(BENCH.glob("*.md"))


def on_config(config):
    """Put the generated method and benchmark pages into the navigation, under their sections."""
    for entry in config["nav"]:
        if isinstance(entry, dict) and "Methods" in entry:
            entry["Methods"] = ["methods/index.md"] + [{name: method_page(name)} for name in methods()]
        if isinstance(entry, dict) and "Benchmarks" in entry:
            entry["Benchmarks"] = ["benchmarks/index.md"] + [
                {table.stem.replace("_", " "): f"benchmarks/{table.name}"} for table in bench_tables()]
    return config


def on_files(files, config):
    pages = {"reference/cli.md": cli_reference(), "methods/index.md": methods_index()}
    pages.update({method_page(name): method_reference(spec) for name, spec in methods().items()})
    pages.update({f"benchmarks/{table.name}": benchmark_page(table) for table in bench_tables()})
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown, page, config, files):
    if TABLE_MARKER in markdown:
        markdown = markdown.replace(TABLE_MARKER, measured_table())
    return INCLUDE.sub(lambda m: untitled((ROOT / m.group(1)).read_text()), markdown)


def untitled(text: str) -> str:
    """A Markdown file without its first-level title."""
    return re.sub(r"\A# .*\n+", "", text)


# --- the CLI ------------------------------------------------------------------------------------------------

def cli_reference() -> str:
    from cam_infer.cli.arguments import build_parser
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "110"                  # argparse wraps help to the terminal's width: fixed for the page
    try:
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        helps = {choice.dest: choice.help or "" for choice in sub._choices_actions}
        lines = ["# Command line", "",
                 "Generated from the argument definitions (`cam_infer/cli/arguments.py`) each time the site is built.",
                 "", "```text", parser.format_help().rstrip(), "```", ""]
        for name, command in sub.choices.items():
            lines += [f"## `cam-infer {name}`", "", sentence(helps.get(name, "")), "",
                      "```text", command.format_help().rstrip(), "```", ""]
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(lines)


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


# --- the methods ---------------------------------------------------------------------------------------------

def measured() -> dict[str, str]:
    return measured_ratios((BENCH / name).read_text() for name in MEASURED_FROM if (BENCH / name).is_file())


def measured_table() -> str:
    return methods_table(measured())


def methods_table(measured: dict[str, str] | None = None) -> str:
    """The table of methods (in the docs' classifiers guide), from the registry; with `measured` (method → ratio, from
    `measured_ratios`), a column of benchmark figures."""
    extra = measured is not None
    lines = ["| method | needs | map depends on the class | cost per image | what it computes | options (default "
             "first) |" + (f" {MEASURED_COLUMN} |" if extra else ""),
             "|---|---|---|---|---|---|" + ("---|" if extra else "")]
    for spec in methods().values():
        options = ", ".join(o.describe() for o in spec.options.values()) or "—"
        summary = spec.summary.replace("|", "\\|")
        figure = f" {measured.get(spec.name, '—')} |" if extra else ""
        depends = "yes" if spec.class_specific else "no: one class-agnostic map per image"
        lines.append(f"| `{spec.name}` | {spec.needs.replace('_', ' ')} | {depends} | {spec.cost} | {summary} | "
                     f"{options} |" + figure)
    return "\n".join(lines)


MEASURED_COLUMN = "measured: time ÷ forward (ResNet-50, OpenVINO, 2 cores)"


def measured_ratios(texts, model: str = "resnet50", backend: str = "openvino") -> dict[str, str]:
    """method → its ratio to a forward pass, read from benchmark tables (`cam_infer.tools.bench` rows under a
    ``**<model>**`` heading); for methods of full passes, also the ratio to those passes. The first row of a
    method's default case wins; cases with other options say which."""
    out: dict[str, str] = {}
    for text in texts:
        current = None
        for line in text.splitlines():
            if line.startswith("**"):
                current = line.split("**")[1]
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 5 or not cells[0].startswith(backend):
                continue
            case, ratio = cells[1], cells[4]
            name, _, variant = case.partition(" ")
            if name not in methods() or name in out or variant.startswith("("):
                continue
            tokens_only = methods()[name].needs == "attention" or name in TOKENS_ONLY
            if current != (TOKEN_MODEL if tokens_only else model):
                continue
            total, _, rest = ratio.partition(" ")
            passes = rest.split(" its")[0].strip("(") if "its" in rest else None
            out[name] = total + (f" ({passes} its passes{', ' + variant if variant else ''})" if passes else
                                 f" ({TOKEN_MODEL_SHOWN})" if tokens_only else "")
    return out


def methods_index() -> str:
    links = "\n".join(f"- [`{name}`]({Path(method_page(name)).name}): {spec.summary}"
                      for name, spec in methods().items())
    return ("# Methods\n\nOne page per method of the registry (`cam_infer/methods/`): adding a method module adds "
            "its page. Cheapest first.\n\n" + measured_table() + "\n\n" + links + "\n")


def option_row(option) -> str:
    if option.choices:
        accepted = ", ".join(f"`{c!r}`" for c in option.choices)
    else:
        accepted = " or ".join(k.__name__ for k in option.kind or ()) or "any"
        accepted += " or None" if option.optional else ""
    return f"| `{option.name}` | `{option.default!r}` | {accepted} |"


def method_reference(spec) -> str:
    module = inspect.getmodule(spec.fn)
    figure = measured().get(spec.name, "not measured")
    picture = ROOT / "docs" / "img" / "methods" / f"{spec.name}.jpg"
    lines = [f"# `{spec.name}`", "", spec.summary, "",
             "| | |", "|---|---|",
             f"| needs | {spec.needs.replace('_', ' ')} |",
             f"| cost per image | {spec.cost} |",
             f"| measured: time ÷ forward (ResNet-50, OpenVINO, 2 cores) | {figure} |",
             f"| in `--method all` | {'yes' if spec.in_all and not spec.gradient else 'no'} |",
             f"| `cam-infer fuse` | {'yes' if spec.fused else 'no'} |",
             f"| module | `{module.__name__}` |", ""]
    if picture.is_file():
        lines += [f"![{spec.name} overlay](../img/methods/{picture.name})", ""]
    lines += ["## Formula and paper", "", inspect.cleandoc(module.__doc__ or "(no module docstring)"), "",
              "## Options", ""] + options_table(spec.options)
    example = next(iter(spec.options.values()), None)
    flag = f" --option {example.name}={example.default}" if example else ""
    lines += ["", "## Use", "", "```bash", f"cam-infer explain bundle/ photos/ --method {spec.name}{flag} --out out/",
              "```", "", "```text", f'Explainer("bundle/").explain(images, method="{spec.name}"'
              + "".join(f", {o.name}={o.default!r}" for o in spec.options.values()) + ")", "```", ""]
    for task in spec.tasks[1:]:
        code = spec.implementation(task)
        lines += [f"## For {task} models", "", f"{code.cost}; in `--method all`: {'yes' if code.in_all else 'no'}. "
                  f"Code: `{code.fn.__name__}` in the same module. Options:", ""] + options_table(code.options) + [""]
    return "\n".join(lines)


def options_table(options: dict) -> list[str]:
    if not options:
        return ["None."]
    return ["| option | default | accepted |", "|---|---|---|"] + [option_row(o) for o in options.values()]


# --- the benchmarks ------------------------------------------------------------------------------------------

def benchmark_page(table: Path) -> str:
    script = BENCH / f"{SCRIPT_OF.get(table.stem, table.stem)}.py"
    how = ast.get_docstring(ast.parse(script.read_text())) if script.is_file() else None
    how = f"How it was measured (`bench/{script.name}`):\n\n" + "\n".join(
        "    " + line if line.startswith("python ") else line for line in (how or "").splitlines()) if how else (
        "Measured by hand; the page says how.")
    return f"# {table.stem.replace('_', ' ').capitalize()}\n\n{how}\n\n## The table (`bench/{table.name}`)\n\n" \
        + table.read_text()


if __name__ == "__main__":
    print(methods_table(measured_ratios(Path(f).read_text() for f in sys.argv[1:]) if sys.argv[1:] else None))
