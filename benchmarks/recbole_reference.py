"""Peer reference: RecBole 1.2.1's SASRec / GRU4Rec on MovieLens-100K, trained to convergence.

Why this exists: issue 23 judges our backbones against RecBole's on the same split. RecBole is
not a dependency of the project; this script runs in a venv of its own (RecBole pins old
packages: numpy-1 aliases are shimmed below, and `ray`, which only its hyper-parameter tuner
imports, is not needed):

    python3 -m venv /tmp/recbole && /tmp/recbole/bin/pip install torch==2.13.0
    /tmp/recbole/bin/pip install --no-deps recbole==1.2.1
    /tmp/recbole/bin/pip install numpy scipy pandas tqdm colorlog==4.7.2 colorama==0.4.4 \\
        scikit-learn pyyaml tabulate texttable psutil thop tensorboard
    /tmp/recbole/bin/python benchmarks/recbole_reference.py --model SASRec

The protocol is the one of ../shared/BASELINES.md: chronological leave-one-out
(`LS: valid_and_test`, order `TO`), full ranking over all items with the history kept among the
candidates, CE loss, train batch 2048, MAX_ITEM_LIST_LENGTH 50, seed 2020, early stopping on
validation NDCG@10 (patience `--patience`, up to `--epochs`). The result goes to
`benchmarks/results/recbole_<model>_ml-100k.json`; `benchmarks/backbones.py` reads it as the
reference of its ml-100k rows.

RecBole's SASRec takes ~225 s an epoch on 2 CPU cores here (every prefix of every history is a
training row of 50 positions: 97k rows, 35x the windows our SASRec trains on), so a run to
convergence outlasts a 3-hour session. The script checkpoints after every epoch into `--state`
(model, optimiser, early-stopping counters, RNG states, seconds spent) and a rerun with the same
`--state` resumes after the last finished epoch. Run it at `nice 19` to soak up idle CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

# RecBole 1.2.1 reads aliases that numpy 2 removed (its Config sets np.float = np.float_, ...).
for alias, target in [
    ("float_", "float64"),
    ("complex_", "complex128"),
    ("unicode_", "str_"),
    ("float", "float64"),
    ("int", "int_"),
    ("bool", "bool_"),
]:
    if alias not in np.__dict__:
        setattr(np, alias, getattr(np, target))
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # RecBole reloads its checkpoint

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "ml-100k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SASRec", choices=["SASRec", "GRU4Rec"])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with ml-100k.inter")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        help="checkpoint folder kept between runs (default runs/recbole-<model>-ml-100k)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    use_gpu = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    out, data = args.out.resolve(), args.data.resolve()
    state = (args.state or ROOT / "runs" / f"recbole-{args.model.lower()}-ml-100k").resolve()
    state.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="recbole-"))
    os.chdir(work)  # RecBole writes ./log and ./log_tensorboard
    (work / "ml-100k").mkdir()
    shutil.copy(data / "ml-100k.inter", work / "ml-100k" / "ml-100k.inter")
    settings = {
        "data_path": str(work),
        "checkpoint_dir": str(work / "saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "train_neg_sample_args": None,
        "loss_type": "CE",
        "train_batch_size": 2048,
        "MAX_ITEM_LIST_LENGTH": 50,
        "metrics": ["NDCG", "Hit"],
        "topk": [10, 20],
        "valid_metric": "NDCG@10",
        "epochs": args.epochs,
        "stopping_step": args.patience,
        "seed": 2020,
        "use_gpu": use_gpu,
        "show_progress": False,
        "tensorboard": False,
    }
    config = Config(model=args.model, dataset="ml-100k", config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train.dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    last, best, progress_file = state / "last.pth", state / "best.pth", state / "progress.json"
    progress = {"train_seconds": 0.0, "best_valid_result": None, "valid_ndcg10": []}
    if last.exists():
        trainer.resume_checkpoint(last)
        progress = json.loads(progress_file.read_text(encoding="utf-8"))
        trainer.best_valid_result = progress["best_valid_result"]
        rng = torch.load(state / "rng.pth", weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["random"])
        print(f"resumed from {last}: epoch {trainer.start_epoch}", flush=True)
    trainer.saved_model_file = str(best)  # RecBole saves its best epoch here
    mark = [time.perf_counter()]  # when the epoch being trained began

    def checkpoint(epoch: int, valid_score: float) -> None:
        """Keep every finished epoch, so that a killed run loses at most the one in progress."""
        trainer._save_checkpoint(epoch, verbose=False, saved_model_file=str(last))
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
        torch.save(rng | {"random": random.getstate()}, state / "rng.pth")
        now = time.perf_counter()
        progress["train_seconds"] = round(progress["train_seconds"] + now - mark[0], 1)
        mark[0] = now
        progress["best_valid_result"] = {
            k: float(v) for k, v in (trainer.best_valid_result or {}).items()
        }
        progress["valid_ndcg10"].append(round(float(valid_score), 5))
        progress_file.write_text(json.dumps(progress, indent=2), encoding="utf-8")

    trainer.fit(train, valid, saved=True, show_progress=False, callback_fn=checkpoint)
    valid_result = trainer.best_valid_result
    seconds = progress["train_seconds"]
    test_result = trainer.evaluate(test, load_best_model=True, show_progress=False)
    epochs_run = len(progress["valid_ndcg10"])  # over every resumed session
    result = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "recbole": __import__("recbole").__version__,
        "torch": torch.__version__,
        "device": "cuda" if use_gpu else "cpu",
        "model": args.model,
        "dataset": "ml-100k",
        "settings": {k: v for k, v in settings.items() if k not in ("data_path", "checkpoint_dir")},
        "epochs_run": epochs_run,
        "valid_ndcg10_by_epoch": progress["valid_ndcg10"],
        "best_epoch": epochs_run - trainer.cur_step,  # 1-based; cur_step: epochs since the best
        "train_seconds": seconds,
        "valid": {k: float(v) for k, v in valid_result.items()},
        "test": {k: float(v) for k, v in test_result.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"recbole_{args.model.lower()}_ml-100k.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
