#!/usr/bin/env bash
# Run on the device machine: build both corpora and the full round-trip measurement on 16 cores.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD LLAMAT_CIF_DATA=$PWD/.gpu/data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
cli() { python3 -c "from llamat_cif.cli import main; main()" "$@"; }
EXTRA="--extra mpts52:val --extra mpts52:test --extra wbm:val"
W=/tmp/work; mkdir -p $W
cli corpus build --format cif $EXTRA --jobs 6 --roundtrip-sample 1000 --out $W/corpus_cif > $OUT/cif.log 2>&1 &
cli corpus build --format llamat $EXTRA --translations 2 --permute --jobs 5 --roundtrip-sample 1000 --out $W/corpus_llamat > $OUT/llamat.log 2>&1 &
cli corpus roundtrip --dataset mp20 --split test --jobs 5 --out $OUT/roundtrip_mp20_test.json > $OUT/roundtrip.log 2>&1 &
wait
for f in $OUT/*.log; do echo "== $f"; tail -n 4 "$f"; done
cd $W && tar czf $OUT/corpus_cif.tgz corpus_cif && tar czf $OUT/corpus_llamat.tgz corpus_llamat; ls -la $OUT
