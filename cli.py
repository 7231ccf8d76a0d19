"""Command line: ``mmer --help`` (or ``python cli.py --help``). The root group; the commands
are thin click layers over pipeline/ and models/ and live in commands/ (one module per area)."""
from __future__ import annotations

import logging

import click

from commands.cache import extract, gc, status, verify
from commands.common import ProjectGroup
from commands.predict import predict
from commands.prepare import prepare
from commands.results import demo, fuse, inspect, report
from commands.train import probe, train


def _setup_logging(verbose: bool, log_file: str | None = None) -> None:
    from rich.logging import RichHandler
    from commands.display import console
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    if log_file:  # every message with its time and origin, for unattended runs
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(to_file)
        root.setLevel(min(root.level or level, level))
        click.get_current_context().call_on_close(lambda: (root.removeHandler(to_file),
                                                           to_file.close()))
    for noisy in ("distributed", "urllib3", "numba", "h5py", "matplotlib", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _version_message() -> str:
    from models.provenance import code_version, project_version
    code = code_version()
    dirty = " (uncommitted changes)" if code["dirty"] else ""
    return f"mmer {project_version()}, commit {code['commit']}{dirty}"


def _print_version(ctx: click.Context, _param, value: bool) -> None:
    if value:
        click.echo(_version_message())
        ctx.exit()


@click.group(cls=ProjectGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Also write every log message, with time and origin, to this file.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and the code commit, then exit.")
def cli(verbose: bool, log_file: str | None) -> None:
    """Multimodal emotion recognition from high-level speech and text features
    (Makiuchi, Uto & Shinoda, ASRU 2021), re-implemented.

    Typical flow: prepare → extract → train ser / train ter → fuse → report.
    """
    _setup_logging(verbose, log_file)
    from core.bytecode import advice, uncached
    slow = uncached()
    if slow:
        logging.getLogger("mmer").warning(advice(slow))


for _command in (prepare, extract, status, verify, gc, train, probe, fuse, report, demo, predict, inspect):
    cli.add_command(_command)


def main() -> None:
    """The `mmer` console command (the same as `python cli.py`)."""
    cli()


if __name__ == "__main__":
    main()
