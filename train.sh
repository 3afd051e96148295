#!/usr/bin/env bash
# The papers' training protocols, read from configs/ (see docs/protocols.md).
#   PROTOCOL=zero_shot (default): the training runs of configs/zero_shot_suite.yaml for METHOD:
#     anomalyclip: VisA -> checkpoint for MVTec AD; MVTec AD -> checkpoint for every other dataset.
#     aaclip:      VisA -> every other dataset; MVTec AD -> VisA; SHOT=0 (full), 2, 16 or 64.
#   PROTOCOL=tn3k: fine-tune an MVTec-AD-trained AnomalyCLIP (INIT_CKPT) on TN3K's training split.
# Dataset roots come from the environment (each holding its metadata file, see docs/datasets.md):
#   MVTEC_ROOT and VISA_ROOT (zero_shot), TN3K_ROOT (tn3k).
# Optional: METHOD (anomalyclip|aaclip), SHOT, CKPT_DIR (./checkpoints), WEIGHTS (local CLIP file),
#   DEVICE, TRAIN_ARGS (extra train.py flags, e.g. "--epoch 5").
set -euo pipefail
cd "$(dirname "$0")"
ARGS="${TRAIN_ARGS:-}"
[ -n "${WEIGHTS:-}" ] && ARGS="--weights $(printf %q "$WEIGHTS") $ARGS"
[ -n "${DEVICE:-}" ] && ARGS="--device $DEVICE $ARGS"
exec python -m anomaly_clip protocol train --args "$ARGS"
