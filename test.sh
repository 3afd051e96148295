#!/usr/bin/env bash
# The papers' evaluation protocols, read from configs/; ends with one table laid out like the
# papers': rows = datasets (and metrics), columns = methods, each cell "ours (published)".
#   PROTOCOL=zero_shot (default): every dataset of configs/zero_shot_suite.yaml whose root variable
#     is set (MVTEC_ROOT VISA_ROOT MPDD_ROOT BTAD_ROOT SDD_ROOT DAGM_ROOT DTD_ROOT ISIC_ROOT
#     CLINICDB_ROOT COLONDB_ROOT KVASIR_ROOT ENDO_ROOT TN3K_ROOT HEADCT_ROOT BRAINMRI_ROOT BR35H_ROOT
#     COVID_ROOT BMAD_BRAIN_ROOT BMAD_LIVER_ROOT BMAD_RETINA_ROOT CVC300_ROOT), each with the
#     checkpoint the protocol names (training-free methods need none); unset roots are skipped.
#   PROTOCOL=tn3k: TN3K's test split with the model trained on it; PROTOCOL=FILE: a protocol file.
# METHOD (default anomalyclip) or METHODS="clip clip_ac winclip vand coop anomalyclip aaclip": the
# methods of the table, each evaluated in turn. PER_CLASS=1 adds one row per class.
# Checkpoints: the last epoch train.sh wrote under CKPT_DIR (./checkpoints), or CKPT_VISA / CKPT_MVTEC /
# CKPT_TN3K. Optional: SHOT, RESULTS_DIR (./results: <method>/<dataset>/, <method>/summary.md,
# comparison.md and comparison.csv), WEIGHTS, DEVICE, REFERENCE (published table to compare with),
# TEST_ARGS (extra test.py flags, e.g. "--aupro exact").
# Run it from any folder: relative paths are the caller's, outputs go under the caller's folder.
set -euo pipefail
CHECKOUT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$CHECKOUT${PYTHONPATH:+:$PYTHONPATH}"
ARGS="${TEST_ARGS:-}"
if [ -n "${WEIGHTS:-}" ]; then
  case "$WEIGHTS" in /*) ;; *) WEIGHTS="$PWD/$WEIGHTS" ;; esac
  ARGS="--weights $(printf %q "$WEIGHTS") $ARGS"
fi
[ -n "${DEVICE:-}" ] && ARGS="--device $(printf %q "$DEVICE") $ARGS"
exec python -m anomaly_clip protocol test --extra="$ARGS"
