#!/usr/bin/env bash
# The papers' evaluation protocols, read from configs/; ends with one table: ours | published | delta.
#   PROTOCOL=zero_shot (default): every dataset of configs/zero_shot_suite.yaml whose root variable
#     is set (MVTEC_ROOT VISA_ROOT MPDD_ROOT BTAD_ROOT SDD_ROOT DAGM_ROOT DTD_ROOT ISIC_ROOT
#     CLINICDB_ROOT COLONDB_ROOT KVASIR_ROOT ENDO_ROOT TN3K_ROOT HEADCT_ROOT BRAINMRI_ROOT BR35H_ROOT
#     COVID_ROOT BMAD_BRAIN_ROOT BMAD_LIVER_ROOT BMAD_RETINA_ROOT CVC300_ROOT), each with the
#     checkpoint the protocol names; unset roots are skipped with a message.
#   PROTOCOL=tn3k: TN3K's test split with the fine-tuned checkpoint.
# Checkpoints: the last epoch train.sh wrote under CKPT_DIR (./checkpoints), or CKPT_VISA / CKPT_MVTEC /
# CKPT_TN3K. Optional: METHOD, SHOT, RESULTS_DIR (./results), WEIGHTS, DEVICE, REFERENCE (published
# table to compare with), TEST_ARGS (extra test.py flags, e.g. "--aupro exact").
set -euo pipefail
cd "$(dirname "$0")"
ARGS="${TEST_ARGS:-}"
[ -n "${WEIGHTS:-}" ] && ARGS="--weights $(printf %q "$WEIGHTS") $ARGS"
[ -n "${DEVICE:-}" ] && ARGS="--device $DEVICE $ARGS"
exec python -m anomaly_clip protocol test --args "$ARGS"
