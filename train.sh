#!/usr/bin/env bash
# The papers' training protocols, read from configs/ (see docs/protocols.md).
#   PROTOCOL=zero_shot (default): the training runs of configs/zero_shot_suite.yaml for each method:
#     anomalyclip, coop: VisA -> checkpoint for MVTec AD; MVTec AD -> checkpoint for every other dataset.
#     vand:        the same, with the official train.sh settings (VisA 15 epochs; MVTec AD 3, mosaics).
#     aaclip:      VisA -> every other dataset; MVTec AD -> VisA; SHOT=0 (full), 2, 16 or 64.
#     clip, clip_ac, winclip: training-free, nothing to train.
#   PROTOCOL=tn3k: AnomalyCLIP trained on TN3K's training split; PROTOCOL=FILE: a protocol file.
# Dataset roots come from the environment (each holding its metadata file, see docs/datasets.md):
#   MVTEC_ROOT and VISA_ROOT (zero_shot), TN3K_ROOT (tn3k).
# Optional: METHOD (default anomalyclip) or METHODS ("vand coop anomalyclip": each in turn), SHOT,
#   CKPT_DIR (./checkpoints), WEIGHTS (local CLIP file), DEVICE, TRAIN_ARGS (extra train.py flags,
#   e.g. "--epoch 5").
# Run it from any folder: relative paths (roots, CKPT_DIR, WEIGHTS, PROTOCOL) are the caller's, and
# outputs go under the caller's folder; the code and configs/ are this checkout's.
set -euo pipefail
CHECKOUT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$CHECKOUT${PYTHONPATH:+:$PYTHONPATH}"
ARGS="${TRAIN_ARGS:-}"
if [ -n "${WEIGHTS:-}" ]; then
  case "$WEIGHTS" in /*) ;; *) WEIGHTS="$PWD/$WEIGHTS" ;; esac
  ARGS="--weights $(printf %q "$WEIGHTS") $ARGS"
fi
[ -n "${DEVICE:-}" ] && ARGS="--device $(printf %q "$DEVICE") $ARGS"
exec python -m anomaly_clip protocol train --extra="$ARGS"
