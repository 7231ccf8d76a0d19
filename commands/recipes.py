"""Recipes: a command's settings in a file (``recipes/*.toml``), applied with ``--recipe FILE``.

A recipe has one table per command, keyed by the command's own option names::

    name = "cpu"
    [extract]
    param = ["speech.model=whisper-base", "speech.unpadded_whisper=true"]
    [train.ser]
    config = "head-mlp"
    batch-size = 32
    [train.ter]
    epochs = 30

The values become the command's defaults (click's ``default_map``): an option given on the
command line still wins. An unknown table or option is an error naming the file and the key.
The command records ``name@sha256[:12]`` of the file in what it writes (``ctx.meta["recipe"]``).
"""
from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any

import click

from core.errors import MMERError

#: The recipes that ship with the toolkit, by short name (``--recipe cpu``).
SHIPPED = Path(__file__).resolve().parents[1] / "recipes"


def recipe_path(value: str) -> Path:
    """A recipe file, or the short name of a shipped one."""
    path = Path(value)
    if path.is_file():
        return path
    shipped = SHIPPED / f"{value}.toml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in SHIPPED.glob("*.toml"))
    raise click.BadParameter(f"{value!r} is neither a recipe file nor a shipped recipe "
                             f"({', '.join(names)})", param_hint="--recipe")


def read_recipe(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise MMERError(f"recipe {path} cannot be read ({e})") from None


def _section(recipe: dict[str, Any], command_path: list[str], path: Path) -> dict[str, Any]:
    """The table of ``command_path`` (e.g. ["train", "ser"]); {} when the recipe has none."""
    node: Any = recipe
    for part in command_path:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    if not isinstance(node, dict):
        raise MMERError(f"recipe {path}: [{'.'.join(command_path)}] must be a table")
    return {k: v for k, v in node.items() if not isinstance(v, dict)}


def default_map(command: click.Command, section: dict[str, Any], path: Path, where: str) -> dict:
    """Option names (``batch-size``) → the command's parameter names (``batch_size``)."""
    by_option = {o.lstrip("-"): p for p in command.params for o in p.opts if o.startswith("--")}
    out = {}
    for key, value in section.items():
        param = by_option.get(key)
        if param is None or param.name == "recipe":
            known = ", ".join(sorted(k for k in by_option if k != "recipe"))
            raise MMERError(f"recipe {path}: [{where}] has no option {key!r}; known: {known}")
        out[param.name] = value
    return out


def apply_recipe(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """Eager ``--recipe`` callback: the recipe's table for this command becomes its defaults."""
    if not value:
        return
    path = recipe_path(value)
    recipe = read_recipe(path)
    parts = ctx.command_path.split()[1:]  # without the program name
    section = _section(recipe, parts, path)
    ctx.default_map = {**(ctx.default_map or {}),
                       **default_map(ctx.command, section, path, ".".join(parts))}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    ctx.meta["recipe"] = f"{recipe.get('name', path.stem)}@{digest}"
    ctx.meta["recipe_settings"] = section


RECIPE = click.option(
    "--recipe", type=str, default=None, is_eager=True, expose_value=False, callback=apply_recipe,
    metavar="FILE|NAME",
    help="Settings from a recipe file (recipes/*.toml; shipped: paper, cpu, gpu); options given "
         "on the command line win. The run records the recipe's name and checksum.")


def recipe_used() -> str:
    """``name@sha`` of the recipe this command runs with, or ""."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("recipe", "") if ctx is not None else ""
