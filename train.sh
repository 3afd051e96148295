#!/usr/bin/env bash
# The papers' training protocol.
#   AnomalyCLIP: train on VisA (its test split) -> checkpoint used to evaluate MVTec AD;
#                train on MVTec AD (its test split) -> checkpoint used for every other dataset.
#   AA-CLIP (METHOD=aaclip): the same pairing with its two-stage training.
# Dataset roots come from the environment (each holding its metadata file, see docs/datasets.md):
#   MVTEC_ROOT, VISA_ROOT. Optional: METHOD (anomalyclip|aaclip), OUT (default ./checkpoints),
#   WEIGHTS (local CLIP file), DEVICE, EXTRA_ARGS (passed to train.py).
set -euo pipefail
cd "$(dirname "$0")"
METHOD=${METHOD:-anomalyclip}
OUT=${OUT:-./checkpoints}
WEIGHTS_ARGS=()
[ -n "${WEIGHTS:-}" ] && WEIGHTS_ARGS=(--weights "$WEIGHTS")

missing=0
for var in MVTEC_ROOT VISA_ROOT; do
  if [ -z "${!var:-}" ]; then
    echo "train.sh: set $var to the dataset root (with its meta.json; see docs/datasets.md)." >&2
    missing=1
  elif [ ! -d "${!var}" ]; then
    echo "train.sh: $var=${!var} is not a directory." >&2
    missing=1
  fi
done
[ "$missing" -eq 0 ] || exit 1

if [ "$METHOD" = "anomalyclip" ]; then
  PROTOCOL_ARGS=(--features_list 24 --image_size 518 --batch_size 8 --epoch 15 --depth 9 --n_ctx 12 --t_n_ctx 4)
else
  PROTOCOL_ARGS=()
fi

python train.py --method "$METHOD" --dataset visa --train_data_path "$VISA_ROOT" \
  --save_path "$OUT/${METHOD}_visa" --device "${DEVICE:-auto}" "${PROTOCOL_ARGS[@]}" "${WEIGHTS_ARGS[@]}" ${EXTRA_ARGS:-}
python train.py --method "$METHOD" --dataset mvtec --train_data_path "$MVTEC_ROOT" \
  --save_path "$OUT/${METHOD}_mvtec" --device "${DEVICE:-auto}" "${PROTOCOL_ARGS[@]}" "${WEIGHTS_ARGS[@]}" ${EXTRA_ARGS:-}
echo "Checkpoints: $OUT/${METHOD}_visa (for MVTec AD) and $OUT/${METHOD}_mvtec (for all other datasets)."
