#!/usr/bin/env bash
# Train the offline demo model from nothing and ship it to assets/demo-tiny/.
#
#   bash scripts/train_demo.sh            # phantoms + stage 1 + stage 2 (about 40 min on a 2-core CPU)
#   bash scripts/train_demo.sh --all      # also the ablation and data-fraction runs and docs/results.md
#
# Every step is seeded; the settings are the recipe files in configs/demo/ (docs/training.md).
# EPOCHS / ABLATION_EPOCHS, when set, override the recipe's epochs (e.g. EPOCHS=1 for a smoke run).
set -euo pipefail
cd "$(dirname "$0")/.."
MEDCLIPSEG=${MEDCLIPSEG:-.venv/bin/medclipseg}
DATA=${DATA:-data/phantoms}
RUNS=${RUNS:-runs/demo}
RECIPE=configs/demo
STAGE2=(--config "$RECIPE/stage2.toml" ${EPOCHS:+--epochs "$EPOCHS"})

[ -f "$DATA/phantoms.json" ] || "$MEDCLIPSEG" phantoms --out "$DATA" --per-modality 400 --seed 0
[ -f "$RUNS/stage1/config.json" ] || "$MEDCLIPSEG" pretrain --config "$RECIPE/stage1.toml" --data "$DATA" \
    --out "$RUNS/stage1"
"$MEDCLIPSEG" train "${STAGE2[@]}" --data "$DATA" --init "$RUNS/stage1" --out "$RUNS/pct100"
"$MEDCLIPSEG" ship "$RUNS/pct100/best" assets/demo-tiny --stage1 "$RUNS/stage1" --data "$DATA"

if [ "${1:-}" = "--all" ]; then
    for pct in 10 25 50; do
        "$MEDCLIPSEG" train "${STAGE2[@]}" --data "$DATA" --init "$RUNS/stage1" --out "$RUNS/pct$pct" --pct "$pct"
    done
    for ablation in reference means_only no_contrastive head_only; do
        "$MEDCLIPSEG" train --config "$RECIPE/stage2.toml" --config "$RECIPE/ablations/$ablation.toml" \
            ${ABLATION_EPOCHS:+--epochs "$ABLATION_EPOCHS"} --data "$DATA" --init "$RUNS/stage1" \
            --out "$RUNS/$ablation"
    done
    "$MEDCLIPSEG" benchmark --weights demo --runs "$RUNS" --out docs/results.md
fi
