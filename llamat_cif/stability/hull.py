"""Energy above the convex hull on the Materials Project scale (or a user-supplied hull).

The reference hull (:meth:`Hull.from_data_dir`) is built from ``<data>/hull/``:

* ``mp20_formation_energy_reference.DERIVED.csv.gz``: MP formation energies of 39,283 MP-20 materials;
* ``2023-02-07-mp-elemental-reference-entries.json.gz``: MP's elemental ground states (uncorrected
  GGA/GGA+U energy per atom; the MP2020 scheme does not correct elements).

Formation energies are turned back into pseudo-total energies, ``E = N * (e_form + sum_i x_i mu_i)``
with ``mu_i`` the elemental reference energies, so that reference entries and predicted total energies
live in one space and a :class:`pymatgen.analysis.phase_diagram.PhaseDiagram` per chemical system
gives the energy above the hull directly. A potential's energy meets this hull only if it is on the MP
corrected scale: CHGNet's energies already are; an uncorrected MP-trained potential first goes through
:func:`mp2020_corrected_energy`.

Because MP phases with more than 20 atoms are missing from MP-20, this hull can only lie *above* MP's
own (it underestimates E_hull, worst seen -0.068 eV/atom); within 5 meV/atom of MP for 92% of rows.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from llamat_cif.paths import data_dir as resolve_data_dir

FORMATION_TABLE = "hull/mp20_formation_energy_reference.DERIVED.csv.gz"
ELEMENT_REFS = "hull/2023-02-07-mp-elemental-reference-entries.json.gz"


class HullError(RuntimeError):
    """The hull cannot score a composition (element without reference, missing files...)."""


def load_elemental_references(path: str | Path) -> dict[str, float]:
    """MP elemental reference energies, eV/atom, from the matbench-discovery entries file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as fh:
        data = json.load(fh)
    items = data.values() if isinstance(data, dict) else data
    mu = {}
    for d in items:
        comp = d["composition"]
        (el, amt), = comp.items()
        mu[el] = float(d["energy"]) / float(amt)
    return mu


class Hull:
    """A set of reference entries (total energies) with one phase diagram per chemical system.

    Args:
        entries: pymatgen ``PDEntry``-like objects with total energies on one scale. Every element
            that is to be scored needs an elemental entry.
        name: description recorded in results.
        element_refs: elemental reference energies (eV/atom) used to report formation energies.
    """

    def __init__(self, entries: list, name: str = "custom", element_refs: dict[str, float] | None = None):
        self.name = name
        self._by_sys: dict[frozenset, list] = defaultdict(list)
        for e in entries:
            self._by_sys[frozenset(el.symbol for el in e.composition.elements)].append(e)
        self._pd_cache: dict[frozenset, object] = {}
        if element_refs is None:
            element_refs = {}
            for key, es in self._by_sys.items():
                if len(key) == 1:
                    (el,) = key
                    element_refs[el] = min(x.energy_per_atom for x in es)
        self.element_refs = element_refs
        self.n_entries = len(entries)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_data_dir(cls, data_dir: str | Path | None = None) -> Hull:
        """The MP-20 reference hull from ``<data>/hull/`` (see module docstring)."""
        import pandas as pd
        from pymatgen.analysis.phase_diagram import PDEntry
        from pymatgen.core import Composition

        root = resolve_data_dir(data_dir)
        table, refs = root / FORMATION_TABLE, root / ELEMENT_REFS
        for p in (table, refs):
            if not p.exists():
                raise HullError(f"hull reference file missing: {p} (data dir from --data-dir or $LLAMAT_CIF_DATA)")
        mu = load_elemental_references(refs)
        df = pd.read_csv(table, usecols=["material_id", "composition", "formation_energy_per_atom"])
        entries = [PDEntry(Composition({el: 1}), e, name=f"{el}-ref") for el, e in mu.items()]
        for mid, comp_s, ef in df.itertuples(index=False):
            comp = Composition(comp_s)
            if not all(el.symbol in mu for el in comp.elements):
                continue
            n = comp.num_atoms
            e_tot = n * float(ef) + sum(amt * mu[el.symbol] for el, amt in comp.items())
            entries.append(PDEntry(comp, e_tot, name=str(mid)))
        return cls(entries, name=f"MP-20 formation energies ({len(df)} materials) + MP elemental refs (2023-02-07)",
                   element_refs=mu)

    @classmethod
    def from_file(cls, path: str | Path) -> Hull:
        """A user hull: a pymatgen ``PhaseDiagram`` JSON, or a JSON list of entry dicts (total energies).

        Entry energies must be on the same scale as the potential's energies that will be scored.
        """
        from monty.json import MontyDecoder
        from pymatgen.analysis.phase_diagram import PhaseDiagram

        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt") as fh:
            obj = json.load(fh, cls=MontyDecoder)
        if isinstance(obj, PhaseDiagram):
            entries = list(obj.all_entries)
        elif isinstance(obj, dict) and "entries" in obj:
            entries = list(obj["entries"])
        elif isinstance(obj, list):
            entries = obj
        else:
            raise HullError(f"{path}: expected a PhaseDiagram or a list of entries, got {type(obj).__name__}")
        if not entries or not hasattr(entries[0], "composition"):
            raise HullError(f"{path}: no pymatgen entries found")
        return cls(entries, name=f"user hull {Path(path).name} ({len(entries)} entries)")

    # ------------------------------------------------------------------ scoring
    def phase_diagram(self, elements):
        """The phase diagram of the chemical system spanned by ``elements`` (cached)."""
        from pymatgen.analysis.phase_diagram import PhaseDiagram

        key = frozenset(str(e) for e in elements)
        if key not in self._pd_cache:
            missing = [e for e in key if frozenset([e]) not in self._by_sys]
            if missing:
                raise HullError(f"no elemental reference for {', '.join(sorted(missing))} in hull {self.name!r}")
            entries = [e for sys, es in self._by_sys.items() if sys <= key for e in es]
            self._pd_cache[key] = PhaseDiagram(entries)
        return self._pd_cache[key]

    def formation_energy_per_atom(self, composition, energy_per_atom: float) -> float:
        """Formation energy per atom from a total energy per atom, against this hull's element refs."""
        from pymatgen.core import Composition

        comp = Composition(composition)
        missing = [el.symbol for el in comp.elements if el.symbol not in self.element_refs]
        if missing:
            raise HullError(f"no elemental reference for {', '.join(missing)}")
        ref = sum(comp.get_atomic_fraction(el) * self.element_refs[el.symbol] for el in comp.elements)
        return float(energy_per_atom - ref)

    def e_above_hull(self, composition, energy_per_atom: float) -> float:
        """Energy above the hull (eV/atom) of a phase with this composition and total energy per atom.

        Negative when the phase lies below the reference hull (it would be a new stable phase).
        """
        from pymatgen.analysis.phase_diagram import PDEntry
        from pymatgen.core import Composition

        if not np.isfinite(energy_per_atom):
            raise HullError(f"non-finite energy {energy_per_atom}")
        comp = Composition(composition)
        pd_ = self.phase_diagram([el.symbol for el in comp.elements])
        entry = PDEntry(comp, energy_per_atom * comp.num_atoms)
        _, e = pd_.get_decomp_and_e_above_hull(entry, allow_negative=True)
        return float(e)

    def protocol(self) -> dict:
        return {"hull": self.name, "hull_entries": self.n_entries}


def mp2020_corrected_energy(structure, energy: float) -> float:
    """Apply the MP2020 corrections to a raw (uncorrected GGA/GGA+U-like) total energy, eV.

    For potentials trained on uncorrected MP energies (``energy_scale="mp-uncorrected"``). The
    entry is labelled GGA+U with MP's U values when it contains O or F together with a U element,
    as the Materials Project calculation would have been.
    """
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility
    from pymatgen.entries.computed_entries import ComputedStructureEntry
    from pymatgen.io.vasp.sets import MPRelaxSet

    cfg = MPRelaxSet.CONFIG["INCAR"]
    u_table = cfg.get("LDAUU", {})
    els = {el.symbol for el in structure.composition.elements}
    hubbards: dict[str, float] = {}
    for anion in ("O", "F"):
        if anion in els and anion in u_table:
            for el in els:
                if el in u_table[anion]:
                    hubbards[el] = float(u_table[anion][el])
    entry = ComputedStructureEntry(
        structure, energy,
        parameters={"run_type": "GGA+U" if hubbards else "GGA", "is_hubbard": bool(hubbards), "hubbards": hubbards},
    )
    import warnings

    compat = MaterialsProject2020Compatibility(check_potcar=False)
    with warnings.catch_warnings():
        # "Failed to guess oxidation states ... anion correction to the most electronegative atom":
        # one line per intermetallic, and the fallback it names is what MP itself applies
        warnings.filterwarnings("ignore", message="Failed to guess oxidation states")
        processed = compat.process_entry(entry, clean=True)
    if processed is None:
        raise HullError(f"MP2020 compatibility rejected {structure.composition.reduced_formula}")
    return float(processed.energy)
