#!/usr/bin/env bash
# The papers' evaluation protocol: MVTec AD with the VisA-trained checkpoint, every other dataset
# with the MVTec-AD-trained one; one results table per run at the end.
# Dataset roots come from the environment; a dataset whose root is unset is skipped with a message:
#   MVTEC_ROOT VISA_ROOT MPDD_ROOT BTAD_ROOT SDD_ROOT DAGM_ROOT DTD_ROOT ISIC_ROOT CLINICDB_ROOT
#   COLONDB_ROOT KVASIR_ROOT ENDO_ROOT TN3K_ROOT HEADCT_ROOT BRAINMRI_ROOT BR35H_ROOT COVID_ROOT
# Checkpoints: CKPT_VISA (trained on VisA) and CKPT_MVTEC (trained on MVTec AD); by default the
# last epoch written by train.sh under ./checkpoints. Optional: METHOD, OUT (./results), WEIGHTS,
# DEVICE, EXTRA_ARGS (passed to test.py, e.g. "--aupro exact").
set -euo pipefail
cd "$(dirname "$0")"
METHOD=${METHOD:-anomalyclip}
OUT=${OUT:-./results}
WEIGHTS_ARGS=()
[ -n "${WEIGHTS:-}" ] && WEIGHTS_ARGS=(--weights "$WEIGHTS")

# the file that holds a finished model: epoch_N.pth (AnomalyCLIP), image_epoch_N.pth (AA-CLIP stage 2)
if [ "$METHOD" = "anomalyclip" ]; then FINAL_PREFIX=epoch_; else FINAL_PREFIX=image_epoch_; fi
last_checkpoint() {  # highest-numbered final checkpoint of a train.sh output folder
  ls "$1"/${FINAL_PREFIX}*.pth 2>/dev/null | sort -V | tail -n 1
}
CKPT_VISA=${CKPT_VISA:-$(last_checkpoint "./checkpoints/${METHOD}_visa" || true)}
CKPT_MVTEC=${CKPT_MVTEC:-$(last_checkpoint "./checkpoints/${METHOD}_mvtec" || true)}

datasets=(mvtec:MVTEC_ROOT visa:VISA_ROOT mpdd:MPDD_ROOT btad:BTAD_ROOT sdd:SDD_ROOT dagm:DAGM_ROOT
          dtd:DTD_ROOT isic:ISIC_ROOT clinicdb:CLINICDB_ROOT colondb:COLONDB_ROOT kvasir:KVASIR_ROOT
          endo:ENDO_ROOT tn3k:TN3K_ROOT headct:HEADCT_ROOT brainmri:BRAINMRI_ROOT br35h:BR35H_ROOT
          covid:COVID_ROOT)
done_dirs=()
for entry in "${datasets[@]}"; do
  name=${entry%%:*}; var=${entry##*:}
  if [ -z "${!var:-}" ]; then
    echo "test.sh: skipping $name: set $var to its dataset root to evaluate it." >&2
    continue
  fi
  if [ "$name" = "mvtec" ]; then ckpt=$CKPT_VISA; else ckpt=$CKPT_MVTEC; fi
  if [ -z "$ckpt" ]; then
    echo "test.sh: no checkpoint for $name: run train.sh or set CKPT_VISA / CKPT_MVTEC." >&2
    exit 1
  fi
  python test.py --method "$METHOD" --dataset "$name" --data_path "${!var}" --checkpoint_path "$ckpt" \
    --save_path "$OUT/$METHOD/$name" --device "${DEVICE:-auto}" "${WEIGHTS_ARGS[@]}" ${EXTRA_ARGS:-}
  done_dirs+=("$OUT/$METHOD/$name")
done
if [ ${#done_dirs[@]} -eq 0 ]; then
  echo "test.sh: no dataset root set; nothing evaluated." >&2
  exit 1
fi
python -m anomaly_clip summarize "${done_dirs[@]}" --output "$OUT/$METHOD/summary.md"
