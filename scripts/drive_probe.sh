#!/usr/bin/env bash
# Short DRIVE runs through the bundle's training command, one setting changed at a time, to rank
# settings before a full-budget run (docs/recipe.md, "Why main-output-only deep supervision").
# Prints each variant's validation Dice every 2 epochs.
#
#   bash scripts/drive_probe.sh authors_weights main_only      # runs under runs/drive_probe_<name>
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=(--dataset_dir ../shared/data/drive --image_pattern "*_training" --mask_pattern "*_manual1" --max_epochs 24 --val_interval 2)
run() {
  local name=$1; shift
  local root=runs/drive_probe_$name
  rm -rf "$root"; mkdir -p "$root"
  python -m monai.bundle run training --config_file configs/train.yaml "${DATA[@]}" --bundle_root "$root" "$@" > "$root/train.log" 2>&1
  echo "$name: $(grep -oE 'val_mean_dice: [0-9.]+' "$root/train.log" | awk '{print $2}' | tr '\n' ' ')"
}
for variant in "$@"; do
  case $variant in
    authors_weights) run authors_weights --deep_supervision_weights "[0.6, 0.2, 0.2]" ;;
    main_only) run main_only --deep_supervision_weights "[1.0, 0.0, 0.0]" ;;
    lr1e-3) run lr1e-3 --learning_rate 1.0e-3 ;;
    *) echo "unknown variant $variant (authors_weights, main_only, lr1e-3)" >&2; exit 2 ;;
  esac
done
