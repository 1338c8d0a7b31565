"""Search BreastMNIST with the Python API, then read the best configuration back.

    MEDAUTO_DATA_DIR=/path/to/medmnist python examples/search_breastmnist.py [--budget 3m]
    (or --trials N: N trials without a budget)

Writes its study (SQLite) and MLflow store to ./medauto-runs/ unless --run-dir is given;
running it again resumes the same study.
"""

from __future__ import annotations

import argparse

from medauto import AutoMLOptimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", default="3m", help="wall clock for the whole run")
    parser.add_argument("--trials", type=int, help="this many trials, without a budget")
    parser.add_argument("--run-dir", default="medauto-runs")
    parser.add_argument("--space", default=None, help="default: chosen from the data")
    args = parser.parse_args()

    optimizer = AutoMLOptimizer(
        "breastmnist",
        args.space,
        budget=None if args.trials else args.budget,
        n_trials=args.trials,
        run_dir=args.run_dir,
        seed=0,
    )
    result = optimizer.optimize()

    states = optimizer.trials_dataframe()["state"].value_counts().to_dict()
    print(f"trials by state: {states}")
    print(f"best validation AUC: {result.best_value:.4f} (trial {result.best_trial_number})")
    cfg = result.best_config
    print(f"best backbone: {cfg.model.backbone}, lr {cfg.optim.lr:.2e}, epochs {cfg.epochs}")
    print("best config as YAML, ready for `medauto train --config`:")
    print(cfg.to_yaml())
    if result.final is not None:  # the final ensemble, tested once on the test split
        print(result.final.summary())


if __name__ == "__main__":
    main()
