"""``python -m llamat_cif ...`` is ``llamat-cif ...`` (also ``accelerate launch -m llamat_cif train ...``)."""

from llamat_cif.cli import main

if __name__ == "__main__":
    main()
