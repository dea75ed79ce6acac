"""CHGNet as an ASE calculator with inference-only gradients: chgnet's numbers (to float32 rounding)
at about a third of the cost.

``chgnet`` (0.4.2) takes forces and stresses in ``CHGNet._compute`` with two ``torch.autograd.grad``
calls, each with ``create_graph=True``: two backward passes, each recording a graph for a second
derivative, which training on forces needs and a relaxation does not. On one CPU thread those two
passes are about 60 % of a call (``run_backward`` 7.1 of 12.3 s over 159 calls of a 12-structure
relaxation profile).

:class:`FastCHGNetCalculator` runs the model's own forward (``BatchedGraph.from_graphs`` with the
strain that gives the stress, then ``CHGNet._compute``) and takes both gradients in **one** backward
pass without a double-backward graph. Energies are identical (the forward is the same); forces and
stresses differ only by float32 summation order (measured on 30 MP-20 test structures: max 5e-5 eV/Å,
7e-5 GPa; ``tests/test_stability.py`` checks it), at 19-20 ms per call instead of 40 (one thread, 30
structures, median 9 sites). Site energies, or a task without forces and stress, go to chgnet's own
path.

It also computes with subnormal floats flushed to zero (``torch.set_flush_denormal``, for the call
only; torch's default, off, is restored after): CHGNet's smooth cutoffs and radial bases produce
subnormal float32 values, which the CPU handles in slow microcode. Measured on 40 MP-20 test
structures displaced by 0.03 Å: 23.5 -> 15.5 ms per call (median of 4 alternating rounds), energies
and stresses bit-for-bit the same. Both together: ~13.6 ms against chgnet's ~50 ms per call on 10
structures displaced 0.1 Å (3.6x); a relaxation pool of 2 workers 2.34x
(``benchmarks/stability/relax_ab.json``).

Long relaxations of far-from-equilibrium cells are chaotic, so the float32-order differences can end
some of them in another minimum: re-relaxing the 300 chosen samples of the default's protocol run moved
21/300 rows by more than 0.01 eV/atom, and chgnet's own calculator moves 15 of the same rows when only
its thread count changes (``benchmarks/stability/README.md``).
"""

from __future__ import annotations

import contextlib

from ase.calculators.calculator import Calculator, all_changes, all_properties
from chgnet.model.dynamics import CHGNetCalculator
from pymatgen.io.ase import AseAtomsAdaptor

#: eV/Å^3 -> GPa, the factor chgnet applies to the strain derivative (kept equal to chgnet's)
EV_A3_TO_GPA = 160.21766208


@contextlib.contextmanager
def _flush_denormal(torch):
    """Subnormal floats flushed to zero on this thread for the block; torch's default (off) after."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def fast_path_supported() -> bool:
    """Whether the installed chgnet has the internals :class:`FastCHGNetCalculator` calls (checked
    against 0.3-0.4: ``CHGNet._compute``'s keywords, ``BatchedGraph.from_graphs(compute_stress=...)``
    and the batched graph's positions, strains and volumes)."""
    import dataclasses
    import inspect

    from chgnet.model.model import BatchedGraph, CHGNet

    try:
        compute = set(inspect.signature(CHGNet._compute).parameters)
        batch = set(inspect.signature(BatchedGraph.from_graphs).parameters)
        fields = {f.name for f in dataclasses.fields(BatchedGraph)}
    except (AttributeError, TypeError, ValueError):
        return False
    return ({"compute_magmom", "return_crystal_feas"} <= compute and "compute_stress" in batch
            and {"atom_positions", "strains", "volumes"} <= fields)


class FastCHGNetCalculator(CHGNetCalculator):
    """:class:`chgnet.model.dynamics.CHGNetCalculator` whose forces and stress come from one
    backward pass (see the module docstring); same constructor, same results keys."""

    def calculate(self, atoms=None, properties=None, system_changes=None, task: str = "efsm") -> None:
        if self.return_site_energies or "f" not in task or "s" not in task:
            return super().calculate(atoms, properties, system_changes, task)
        import torch
        from chgnet.model.model import BatchedGraph

        Calculator.calculate(self, atoms, properties or all_properties, system_changes or all_changes)
        model = self.model
        if model.training:
            model.eval()
        structure = AseAtomsAdaptor.get_structure(atoms)
        graph = model.graph_converter(structure).to(self.device)
        with torch.enable_grad(), _flush_denormal(torch):
            g = BatchedGraph.from_graphs([graph], bond_basis_expansion=model.bond_basis_expansion,
                                         angle_basis_expansion=model.angle_basis_expansion, compute_stress=True)
            pred = model._compute(g, compute_magmom="m" in task, return_crystal_feas=True)
            e = pred["e"]  # per atom when the model is intensive (chgnet divides after its gradients)
            # d(total energy): the gradient of e/n seeded with n, as chgnet's grad of the total
            weight = pred["atoms_per_graph"].to(e.dtype) if model.is_intensive else torch.ones_like(e)
            force, strain = torch.autograd.grad(e, [g.atom_positions[0], g.strains[0]], grad_outputs=weight)
        comp = 0 if model.composition_model is None else model.composition_model([graph])
        energy = (e + comp)[0].detach().cpu().numpy()
        stress = strain * (1 / g.volumes * EV_A3_TO_GPA)[0]
        self.results |= {
            "energy": energy * (len(structure) if model.is_intensive else 1),
            "forces": (-1 * force).detach().cpu().numpy(),
            "stress": stress.detach().cpu().numpy() * self.stress_weight,
            "crystal_fea": pred["crystal_fea"][0].detach().cpu().numpy(),
        }
        if "m" in pred:
            self.results["magmoms"] = pred["m"][0].detach().cpu().numpy()
        self.results["free_energy"] = self.results["energy"]
        return None
