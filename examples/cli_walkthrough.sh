#!/usr/bin/env bash
# A CLI walk-through on BreastMNIST: search, inspect, export the best config, retrain it.
#   MEDAUTO_DATA_DIR=/path/to/medmnist bash examples/cli_walkthrough.sh [RUN_DIR]
set -euo pipefail
RUN_DIR=${1:-medauto-runs}
STUDY=walkthrough

# 1. A 3-minute search (BUDGET=...; or TRIALS=N for N trials without a budget). On a CPU
#    the data chooses the laptop-sized `fast` space (SPACE=... picks another); re-running
#    resumes the study.
if [ -n "${TRIALS:-}" ]; then LIMIT=(--trials "$TRIALS"); else LIMIT=(--budget "${BUDGET:-3m}"); fi
medauto search --data breastmnist ${SPACE:+--space "$SPACE"} "${LIMIT[@]}" \
  --study "$STUDY" --run-dir "$RUN_DIR" --no-progress

# 2. What happened: trials by state, the best trial, failure reasons.
medauto status --study "$STUDY" --run-dir "$RUN_DIR"

# 3. The best configuration as YAML ...
medauto best --study "$STUDY" --run-dir "$RUN_DIR" --output "$RUN_DIR/best.yaml"
cat "$RUN_DIR/best.yaml"

# 4. ... trains again without a search (checkpoints in $RUN_DIR/best).
medauto train --config "$RUN_DIR/best.yaml" --out "$RUN_DIR/best" --device cpu

# 5. Browse the study:  medauto dashboard --run-dir "$RUN_DIR"
#    and the MLflow runs: mlflow ui --backend-store-uri sqlite:///$RUN_DIR/mlflow.db
