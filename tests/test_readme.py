"""The README's code: every command line in a bash block names real commands, options and valid values (parsed by
the command's own Click parser, so a renamed flag or a dropped choice fails here), and every Python block runs as
written, on the CPU, in a fresh folder holding the files the README says the examples read (``model.pt``,
``video.mp4``, ``first.png``, ``obj4.png``). Commands that finish quickly on a CPU are also run for real by the
tests of their features (the quick start by test_demo.py, tracking by test_tracking_cli.py, ...)."""

import ast
import importlib
import os
import re
import shlex
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
import tomllib
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, re.S | re.M)


def _command(target: str) -> click.Command:
    """The Click command behind ``module:function`` or ``module`` (a ``main`` that wraps ``cli`` included)."""
    module = importlib.import_module(target.split(":")[0])
    for name in ("cli", "main"):
        obj = getattr(module, name, None)
        if isinstance(obj, click.Command):
            return obj
    raise AssertionError(f"{target}: no Click command")


def _command_lines(code: str) -> list[list[str]]:
    """Shell lines of a bash block as argument lists, continuation lines joined, comments and ``&&`` / ``|`` split."""
    code = re.sub(r"\\\n\s*", " ", code)
    lines = []
    for line in code.splitlines():
        tokens = shlex.split(line, comments=True)
        current: list[str] = []
        for tok in tokens:
            if tok in ("&&", "|", ";", "||"):
                lines.append(current)
                current = []
            else:
                current.append(tok)
        lines.append(current)
    return [t for t in lines if t]


def _siammae_invocation(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """(display name, module:function, arguments) when ``argv`` runs a siammae command, else None."""
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if not argv:
        return None
    if argv[0] in SCRIPTS:
        return argv[0], SCRIPTS[argv[0]], argv[1:]
    if argv[0] in ("python", "python3", "torchrun") and "-m" in argv:
        i = argv.index("-m")
        if argv[i + 1].startswith("siammae.cli."):
            return argv[i + 1], argv[i + 1], argv[i + 2 :]
    return None


def _invocations():
    for lang, code in BLOCKS:
        if lang in ("bash", "sh", "shell", "console"):
            for argv in _command_lines(code):
                found = _siammae_invocation(argv)
                if found:
                    yield found


INVOCATIONS = list(_invocations())
PYTHON_BLOCKS = [code for lang, code in BLOCKS if lang == "python"]


def test_the_readme_has_commands_and_python():
    names = {name for name, _, _ in INVOCATIONS}
    assert {"siammae-track", "siammae-train", "siammae-eval", "siammae-export", "siammae-demo"} <= names
    assert len(PYTHON_BLOCKS) >= 3


@pytest.mark.parametrize("name,target,args", INVOCATIONS, ids=[" ".join([n, *a])[:80] for n, _, a in INVOCATIONS])
def test_command_lines_parse(name, target, args):
    command = _command(target)
    if isinstance(command, click.Group):
        assert args and args[0] in command.commands, f"{name}: unknown subcommand in {args}"
        command, args, name = command.commands[args[0]], args[1:], f"{name} {args[0]}"
    try:
        command.make_context(name, list(args))  # parses and converts every value; runs nothing
    except click.exceptions.Exit:  # --help
        pass
    except click.ClickException as e:
        pytest.fail(f"README: `{name} {' '.join(args)}`: {e.format_message()}")


def _siammae_names(tree: ast.AST):
    """(module, attribute) pairs a snippet takes from siammae: imports, and ``siammae.x`` attribute uses."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "siammae":
                    aliases[a.asname or a.name.split(".")[0]] = a.asname and a.name or "siammae"
                    yield a.name, None
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "siammae":
            for a in node.names:
                yield node.module, a.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            yield aliases[node.value.id], node.attr


@pytest.mark.parametrize("code", PYTHON_BLOCKS, ids=[c.strip().splitlines()[0][:60] for c in PYTHON_BLOCKS])
def test_python_blocks_compile_and_name_real_things(code):
    tree = ast.parse(code)
    compile(tree, "README.md", "exec")
    for module, attr in _siammae_names(tree):
        mod = importlib.import_module(module)
        if attr is not None and not hasattr(mod, attr):
            importlib.import_module(f"{module}.{attr}")  # `from package import submodule`


# --------------------------------------------------------------------------------------- the blocks, run
@pytest.fixture(scope="module")
def example_files(tmp_path_factory) -> Path:
    """What the README says its Python examples read: a tiny checkpoint, a 20-frame synthetic clip with two objects
    (the second entering at frame 13), the first frame's mask and the entering object's mask as id 4."""
    import siammae
    from siammae.data.masks import write_mask
    from siammae.data.video import write_video

    root = tmp_path_factory.mktemp("readme-files")
    torch.manual_seed(0)
    siammae.save_checkpoint(root / "model.pt", siammae.create_model("tiny"))
    frames, truth = siammae.make_synthetic_clip(20, size=(96, 128), num_objects=2, appear=(0, 13))
    write_video(root / "video.mp4", frames)
    write_mask(root / "first.png", truth[0])
    write_mask(root / "obj4.png", ((truth[13] == 2) * 4).astype(np.uint8))
    return root


def test_the_readme_describes_the_example_files():
    assert "(20 frames of `siammae.make_synthetic_clip(20, size=(96, 128), num_objects=2, appear=(0, 13))`)" in README


@pytest.mark.parametrize("code", PYTHON_BLOCKS, ids=[c.strip().splitlines()[0][:60] for c in PYTHON_BLOCKS])
def test_python_blocks_run_as_written(code, example_files, tmp_path, monkeypatch, capsys):
    for f in example_files.iterdir():
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIAMMAE_OFFLINE", "1")  # no block may need the network
    before = set(os.listdir(tmp_path))
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})  # noqa: S102
    assert {f.name for f in example_files.iterdir()} <= before and before <= set(os.listdir(tmp_path))
    printed = capsys.readouterr().out
    if "print(report.status, report.frames)  # complete 20" in code:  # what the README says it prints
        assert printed.splitlines()[-1] == "complete 20"
