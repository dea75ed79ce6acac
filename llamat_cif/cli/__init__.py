"""The ``llamat-cif`` command line: click commands only, the work happens in the library.

Each command group lives in its own module of this package and is imported lazily, so that
``llamat-cif data list`` does not pay for importing torch or chgnet.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings

import click

# pymatgen sets a noble gas's missing Pauling electronegativity to NaN with a UserWarning the first
# time it is asked (e.g. for He in the hull's chemical systems); it changes no number we report
warnings.filterwarnings("ignore", message="No Pauling electronegativity for", category=UserWarning)

# command name -> "module:attribute" (module relative to this package)
COMMANDS: dict[str, str] = {
    "doctor": "doctor:doctor",
    "data": "data:data",
    "corpus": "corpus:corpus",
    "train": "train:train",
    "align": "align:align",
    "generate": "generate:generate",
    "validate": "validate:validate",
    "stability": "stability:stability",
    "screen": "screen:screen",
    "benchmark": "benchmark:benchmark",
    "text": "text:text",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n, target in COMMANDS.items() if _exists(target)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None or not _exists(target):
            return None
        mod, attr = target.split(":")
        return getattr(importlib.import_module(f"{__name__}.{mod}"), attr)


def _exists(target: str) -> bool:
    return importlib.util.find_spec(f"{__name__}.{target.split(':')[0]}") is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llamat-cif")
def main() -> None:
    """llamat-cif: generate crystals with language models and screen them for stability.

    \b
    Pipeline:  data -> corpus -> train [-> align] -> generate -> validate -> stability -> benchmark
    Main job:  llamat-cif screen -n 20   (generate, validate, relax, E_hull, S.U.N., funnel)

    Data and model locations come from $LLAMAT_CIF_DATA / $LLAMAT_CIF_MODELS or --data-dir.
    """
