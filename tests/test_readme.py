"""The README's command lines are the CLI's: the examples run as written, the synopsis is real.

* "A first run on the command line": every ``glnet`` line of its code block runs, in order,
  in an empty folder, with the installed ``glnet`` console script, exits 0 and writes what it
  names (about a minute and a half on two cores);
* "Command line" synopsis (the section's first code block): every subcommand exists and every
  option it shows appears in ``glnet SUB --help``;
* every concrete ``glnet`` line anywhere in the README (``sh`` blocks) parses with the CLI's own
  argument parser, so a renamed option or a wrong argument count fails here.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import fiona
import pytest
import rasterio

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = "A first run on the command line"
SYNOPSIS = "Command line"
TIMEOUT = 600


def sections(text: str) -> dict[str, str]:
    """Heading text (any level) -> the text up to the next heading of any level."""
    out, name, lines, fenced = {}, None, [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,6} ", line):
            if name is not None:
                out[name] = "\n".join(lines)
            name, lines = line.lstrip("#").strip(), []
        else:
            lines.append(line)
    if name is not None:
        out[name] = "\n".join(lines)
    return out


def code_blocks(text: str) -> list[tuple[str, list[str]]]:
    """``(language, lines)`` of every fenced code block."""
    blocks, lang, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                blocks.append((lang, lines))
                lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def command_lines(lines: list[str]) -> list[str]:
    """The ``glnet ...`` lines of a block, with indented continuation lines joined on."""
    out, inside = [], False
    for line in lines:
        if line.startswith("glnet "):
            out.append(line.rstrip().rstrip("\\").rstrip())
            inside = True
        elif inside and line.startswith((" ", "\t")) and line.strip():
            out[-1] += " " + line.strip().rstrip("\\").rstrip()
        else:
            inside = False
    return out


def readme() -> str:
    return README.read_text(encoding="utf-8")


def glnet_script() -> Path:
    """The installed console script (``pip install -e .`` puts it beside the venv's Python)."""
    for candidate in (Path(sys.executable).with_name("glnet"), ROOT / ".venv" / "bin" / "glnet"):
        if candidate.is_file():
            return candidate
    pytest.fail(f"no glnet console script beside {sys.executable}: pip install -e .")


def glnet_help(*args: str) -> str:
    """``glnet [ARGS] --help``."""
    proc = subprocess.run([str(glnet_script()), *args, "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"glnet {' '.join(args)} --help: {proc.stderr}"
    return proc.stdout


def subcommands() -> set[str]:
    """The subcommands ``glnet --help`` lists (planned ones, not in this version yet, left out)."""
    text = glnet_help()
    listing = text.split("COMMAND\n", 2)[-1].split("\n\n")[0]
    found = set()
    for match in re.finditer(r"(?m)^    ([a-z][\w-]*)(.*)$", listing):
        if "not in this version yet" not in match.group(2):
            found.add(match.group(1))
    assert {"synth", "train", "segment", "vectorize", "evaluate", "info"} <= found, text
    return found


# -- the examples run as written ----------------------------------------------------------


def example_lines() -> list[str]:
    section = sections(readme()).get(EXAMPLES)
    assert section is not None, f"README has no section {EXAMPLES!r}"
    lines = [line for lang, block in code_blocks(section) if lang in ("sh", "bash", "console")
             for line in command_lines(block)]
    assert len(lines) >= 5, lines
    return lines


def expected_outputs(argv: list[str]) -> list[str]:
    """The files a command line says it writes."""
    command = argv[1]
    if command == "synth":
        folder = argv[2]
        return [f"{folder}/{name}" for name in ("scene.tif", "labels.tif", "labels.gpkg",
                                                "classes.json")]
    outputs = [argv[i + 1] for i, a in enumerate(argv) if a in ("-o", "--output")]
    if command == "segment":
        outputs += [str(Path(o).with_suffix(".qml")) for o in outputs]
    return outputs


def test_examples_cover_the_main_job():
    commands = [shlex.split(line, comments=True)[1] for line in example_lines()]
    for needed in ("synth", "train", "segment", "vectorize", "evaluate", "info"):
        assert needed in commands, f"the README's first run has no `glnet {needed}`"
    assert commands.index("synth") < commands.index("train") < commands.index("segment") \
        < commands.index("vectorize")


@pytest.mark.slow
def test_examples_run_as_written(tmp_path):
    script = glnet_script()
    outputs: dict[str, str] = {}
    for line in example_lines():
        argv = shlex.split(line, comments=True)
        proc = subprocess.run([str(script), *argv[1:]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, f"{line}\nexit {proc.returncode}\n{proc.stderr[-3000:]}"
        outputs[argv[1]] = proc.stdout
        for name in expected_outputs(argv):
            path = tmp_path / name
            assert path.is_file() and path.stat().st_size > 0, f"{line}: no {name}"
    # What the commands printed and wrote is the real thing, not just files of the right name.
    files = {Path(argv[i + 1]).suffix: tmp_path / argv[i + 1]
             for argv in (shlex.split(line, comments=True) for line in example_lines())
             for i, a in enumerate(argv) if a == "-o"}
    with rasterio.open(files[".tif"]) as mask:
        assert mask.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        names = [c["name"] for c in json.loads(mask.tags()["GLNET_CLASSES"])]
    with fiona.open(files[".gpkg"]) as polygons:
        assert len(polygons) > 0
    assert re.search(r"mIoU\s*[:=]?\s*[0-9.]+", outputs["evaluate"]), outputs["evaluate"]
    assert all(name in outputs["info"] for name in names), outputs["info"]


# -- the synopsis names real subcommands and options ---------------------------------------


def synopsis_lines() -> list[str]:
    section = sections(readme()).get(SYNOPSIS)
    assert section is not None, f"README has no section {SYNOPSIS!r}"
    blocks = code_blocks(section)
    assert blocks, "the Command line section has no code block"
    lines = command_lines(blocks[0][1])
    assert len(lines) >= 7, lines
    return lines


def test_synopsis_subcommands_and_options_exist():
    available = subcommands()
    seen = set()
    for line in synopsis_lines():
        command = line.split()[1]
        assert command in available, \
            f"README synopsis: `glnet {command}` is not a subcommand in `glnet --help`"
        text = glnet_help(command)
        options = re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", line.split(None, 2)[2])
        assert options or command == "info", line
        for option in options:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), \
                f"README synopsis: `glnet {command} {option}` is not in `glnet {command} --help`"
        seen.add(command)
    assert available <= seen, \
        f"subcommands missing from the README synopsis: {sorted(available - seen)}"


def test_every_concrete_command_line_parses():
    from glnet.cli import _parser

    lines = [line for lang, block in code_blocks(readme()) if lang in ("sh", "bash", "console")
             for line in command_lines(block)]
    assert len(lines) >= 10, lines
    for line in lines:
        try:
            args = _parser().parse_args(shlex.split(line, comments=True)[1:])
        except SystemExit as exc:
            pytest.fail(f"README: `{line}` does not parse (exit {exc.code})", pytrace=False)
        assert callable(args.run), line
