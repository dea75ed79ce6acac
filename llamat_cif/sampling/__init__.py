"""Crystal generation with a small language model under a grammar-constrained decoder.

Entry points: :class:`SampleConfig` (one run's settings), :func:`generate` (sample a run into a
folder, resumable; returns the rows) and :func:`generate_structures` (the same, returning pymatgen
``Structure`` objects). The modules, top to bottom (arrows point down only):

* :mod:`~llamat_cif.sampling.sample` — :func:`generate`, ``BatchSampler`` (one seeded batch per
  index), ``draw_batch`` and ``decode_sample`` (also used by alignment);
* :mod:`~llamat_cif.sampling.config` — :class:`SampleConfig`, checks and resolution of its values;
* :mod:`~llamat_cif.sampling.rows` — the samples table (``samples.parquet``; legacy
  ``samples.csv``), its one reader ``read_samples``, and resuming a run from it;
* :mod:`~llamat_cif.sampling.jump` — ``sample_constrained``: constrained decoding that feeds
  the text a grammar fixes at once and asks the model only at choices (the default decoder);
* :mod:`~llamat_cif.sampling.lean` — the forward pass over a model's own weights (step by step, or
  packed for ragged rows);
* :mod:`~llamat_cif.sampling.processor` — ``GrammarLogitsProcessor``, a ``transformers``
  logits processor that walks every row through its grammar;
* :mod:`~llamat_cif.sampling.grammars` — the CIF and LLaMat document grammars;
* :mod:`~llamat_cif.sampling.fields` — ``Conditions`` and the conditioning header (formula, space
  group) both grammars share;
* :mod:`~llamat_cif.sampling.placement` — the look-ahead: can the rest of the composition still
  be placed?
* :mod:`~llamat_cif.sampling.lattice` — periodic distances and the lattice window;
* :mod:`~llamat_cif.sampling.engine` — field specs and the per-sequence ``Decoder``.

Space-group maths lives in :mod:`llamat_cif.symmetry`, physical scales in :mod:`llamat_cif.physics`,
the canonical text format in :mod:`llamat_cif.cif`.
"""

from llamat_cif.sampling.config import SampleConfig
from llamat_cif.sampling.sample import generate, generate_structures

__all__ = ["SampleConfig", "generate", "generate_structures"]
