#!/usr/bin/env bash
# Train the offline demo model from nothing and ship it to assets/demo-tiny/.
#
#   bash scripts/train_demo.sh            # phantoms + stage 1 + stage 2 (about 40 min on a 2-core CPU)
#   bash scripts/train_demo.sh --all      # also the ablation and data-fraction runs and docs/results.md
#
# Every step is seeded; the commands are the ones documented in docs/training.md.
set -euo pipefail
cd "$(dirname "$0")/.."
MEDCLIPSEG=${MEDCLIPSEG:-.venv/bin/medclipseg}
DATA=${DATA:-data/phantoms}
RUNS=${RUNS:-runs/demo}
EPOCHS=${EPOCHS:-12}            # stage 2, full recipe
ABLATION_EPOCHS=${ABLATION_EPOCHS:-2}
STAGE2=(--batch-size 16 --lr 5e-4 --min-lr 5e-5 --seed 666)

[ -f "$DATA/phantoms.json" ] || "$MEDCLIPSEG" phantoms --out "$DATA" --per-modality 400 --seed 0
[ -f "$RUNS/stage1/config.json" ] || "$MEDCLIPSEG" pretrain --data "$DATA" --out "$RUNS/stage1" --epochs 20 \
    --batch-size 64 --lr 1e-3 --seed 0
"$MEDCLIPSEG" train --data "$DATA" --init "$RUNS/stage1" --out "$RUNS/pct100" --epochs "$EPOCHS" "${STAGE2[@]}"
.venv/bin/python -m medclipseg.weights.ship "$RUNS/pct100/best" assets/demo-tiny --stage1 "$RUNS/stage1" --data "$DATA"

if [ "${1:-}" = "--all" ]; then
    for pct in 10 25 50; do
        "$MEDCLIPSEG" train --data "$DATA" --init "$RUNS/stage1" --out "$RUNS/pct$pct" --pct "$pct" \
            --epochs "$EPOCHS" "${STAGE2[@]}"
    done
    "$MEDCLIPSEG" train --data "$DATA" --init "$RUNS/stage1" --out "$RUNS/reference" --epochs "$ABLATION_EPOCHS" "${STAGE2[@]}"
    "$MEDCLIPSEG" train --data "$DATA" --init "$RUNS/stage1" --out "$RUNS/means_only" --epochs "$ABLATION_EPOCHS" \
        --means-only "${STAGE2[@]}"
    "$MEDCLIPSEG" train --data "$DATA" --init "$RUNS/stage1" --out "$RUNS/no_contrastive" --epochs "$ABLATION_EPOCHS" \
        --contrastive-weight 0 "${STAGE2[@]}"
    "$MEDCLIPSEG" train --data "$DATA" --init "$RUNS/stage1" --out "$RUNS/head_only" --epochs "$ABLATION_EPOCHS" \
        --head-only "${STAGE2[@]}"
    "$MEDCLIPSEG" benchmark --weights demo --runs "$RUNS" --out docs/results.md
fi
