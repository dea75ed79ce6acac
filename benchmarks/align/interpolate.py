"""Weight interpolation between a reference generator and an aligned one (a "model soup" toward the
starting point): theta = (1 - alpha) * theta_reference + alpha * theta_aligned, written in fp32.

Usage:
    python benchmarks/align/interpolate.py REFERENCE_DIR ALIGNED_DIR ALPHA OUT_DIR

Both folders must hold the same architecture (same tensor names and shapes); the aligned folder's
config, tokenizer and training records are copied beside the mixed weights, and an
``interpolation.json`` says what was mixed. Used to test whether interpolating toward the reference
trades stability for diversity better than a warmer sampling temperature
(benchmarks/align/README.md).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    from safetensors.torch import load_file, save_file

    ref_dir, al_dir, alpha, out = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
    if not 0.0 <= alpha <= 1.0:
        sys.exit(f"ALPHA must lie in [0, 1], got {alpha}")
    ref, al = load_file(ref_dir / "model.safetensors"), load_file(al_dir / "model.safetensors")
    if ref.keys() != al.keys() or any(ref[k].shape != al[k].shape for k in al):
        sys.exit(f"{ref_dir} and {al_dir} do not hold the same architecture")
    out.mkdir(parents=True, exist_ok=True)
    for f in al_dir.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy(f, out / f.name)
    mixed = {k: ((1 - alpha) * ref[k].float() + alpha * al[k].float()).contiguous() for k in al}
    save_file(mixed, out / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "interpolation.json").write_text(json.dumps(
        {"reference": str(ref_dir), "aligned": str(al_dir), "alpha": alpha,
         "rule": "(1 - alpha) * reference + alpha * aligned, fp32"}, indent=2))
    print(f"wrote {out} (alpha {alpha})")


if __name__ == "__main__":
    main()
