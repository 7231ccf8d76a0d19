"""Recipes (commands/recipes.py): a command's settings from a file, the command line winning,
mistakes named, and the recipe recorded by the run."""
from __future__ import annotations

from click.testing import CliRunner

from cli import cli
from commands.recipes import SHIPPED, read_recipe
from models.runs import RunPaths, read_json
from tests.fixtures.corpora import make_corpus
from tests.fixtures.ser import ser_source
from tests.fixtures.stores import write_ser_store


def _store(tmp_path):
    corpus = make_corpus(n_groups=2, per_class=3)
    write_ser_store(tmp_path, corpus, ser_source(corpus))
    return str(tmp_path)


def test_a_recipe_sets_the_commands_options_and_the_line_wins(tmp_path):
    work = _store(tmp_path / "w")
    recipe = tmp_path / "quick.toml"
    recipe.write_text('name = "quick"\n[train.ser]\nconfig = "head-linear"\nbatch-size = 4\n'
                      'steps = 3\nclass-balance = "off"\n')
    out = CliRunner().invoke(cli, ["train", "ser", "--recipe", str(recipe), "--steps", "2",
                                   "--device", "cpu", "-w", work])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "SER head-linear: 2 steps × batch 4 per fold" in text and "class balance off" in text
    config = read_json(RunPaths(work, "ser", "head-linear").config)
    assert config["train"]["steps"] == 2 and config["train"]["class_balance"] == "off"
    assert config["recipe"].startswith("quick@") and len(config["recipe"]) == len("quick@") + 12


def test_recipe_mistakes_name_the_file_and_the_key(tmp_path):
    work = _store(tmp_path / "w")
    bad = tmp_path / "bad.toml"
    bad.write_text('[train.ser]\nbatch_size = 4\n')
    out = CliRunner().invoke(cli, ["train", "ser", "--recipe", str(bad), "-w", work])
    assert out.exit_code == 1 and f"recipe {bad}: [train.ser] has no option 'batch_size'" in \
        " ".join(out.output.split()), out.output
    broken = tmp_path / "broken.toml"
    broken.write_text("[train.ser\n")
    out = CliRunner().invoke(cli, ["train", "ser", "--recipe", str(broken), "-w", work])
    assert out.exit_code == 1 and f"recipe {broken} cannot be read" in out.output, out.output
    out = CliRunner().invoke(cli, ["train", "ser", "--recipe", "nosuch", "-w", work])
    assert out.exit_code == 2 and "neither a recipe file nor a shipped recipe" in out.output


def test_extract_prints_the_parameters_it_applies_first(tmp_path):
    from tests.fixtures.corpora import tone_corpus
    work = tone_corpus(tmp_path, n=2, seconds=(0.3, 0.4))
    recipe = tmp_path / "mel.toml"
    recipe.write_text('name = "mel40"\n[extract]\nparam = ["mel.n_mels=40"]\n')
    out = CliRunner().invoke(cli, ["extract", "-s", "mel", "--workers", "1", "--recipe", str(recipe),
                                   "-w", work])
    assert out.exit_code == 0, out.output
    first = out.output.strip().splitlines()[0]
    assert first.startswith("parameters: mel.n_mels=40 (recipe mel40@"), out.output


def test_every_shipped_recipe_names_real_options():
    """Each shipped recipe's tables apply to their commands without an unknown key."""
    from commands.recipes import default_map
    from commands.cache import extract
    from commands.results import demo
    from commands.train import train_ser_cmd, train_ter_cmd
    commands = {("extract",): extract, ("train", "ser"): train_ser_cmd, ("train", "ter"): train_ter_cmd,
                ("demo",): demo}
    shipped = sorted(SHIPPED.glob("*.toml"))
    assert {p.stem for p in shipped} >= {"paper", "cpu", "gpu"}
    for path in shipped:
        recipe = read_recipe(path)
        for parts, command in commands.items():
            node = recipe
            for p in parts:
                node = node.get(p, {})
            section = {k: v for k, v in node.items() if not isinstance(v, dict)}
            default_map(command, section, path, ".".join(parts))  # raises on an unknown key
