"""How close the MiniLM teacher's own earlier layers get to its neighbourhoods: what a truncated teacher buys.

A student that keeps the teacher's first k layers (layer dropping, as DistilBERT does) starts from exactly
what those layers compute. This script measures how much of the final embedding's neighbourhoods that
holds: for every layer k (0 = the embedding layer's output, 6 = the last), each sentence's hidden states
mean-pooled over its real tokens and normalised, then mapped to the teacher's embedding by a readout fitted
on --sentences training sentences:

* linear: closed-form ridge regression;
* MLP: one hidden layer of 4 × width, trained for --mlp-steps steps on the cosine to the teacher;

and scored on the held-out retrieval pool (mean cosine, recall@10 and best@10, the same pool and metrics as the run
and benchmarks/text_student.py), beside the run's exported bag student. One more row calibrates how little
structured error recall@10 tolerates: the last layer's pooled state *not* normalised, mapped linearly (a
linear map cannot divide by the norm, so the error follows each sentence's norm).
Writes benchmarks/results/text_teacher_layers.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import interleave  # noqa: E402
from text_student import context, study_header, write_study  # noqa: E402
from text_word_order import student_rows  # noqa: E402

from edgekd.text.metrics import embedding_metrics, unit  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "text_teacher_layers.json"
COLUMNS = ("pooled state", "linear: cos", "R@10", "best@10", "MLP: cos", "R@10", "best@10", "MLP train cos")
RIDGE = 1e-2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, default=REPO / "export" / "minilm")
    p.add_argument("--sentences", type=int, default=20_000, help="training sentences the readouts are fitted on")
    p.add_argument("--mlp-steps", type=int, default=4_000, help="optimizer steps of each MLP readout (batch 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result", type=Path, default=RESULT, help="where to write the JSON results")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown (README)")
    args = p.parse_args(argv)
    if args.sentences < 1000 or args.mlp_steps < 1:
        p.error("--sentences needs at least 1000 (the readouts have 385 inputs) and --mlp-steps at least 1")
    return args


def linear_readout(x: np.ndarray, y: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Ridge regression with a bias from x to y, applied to `query`, normalised."""
    def with_bias(a: np.ndarray) -> np.ndarray:
        return np.hstack([a, np.ones((len(a), 1), a.dtype)]).astype(np.float64)

    xb = with_bias(x)
    weights = np.linalg.solve(xb.T @ xb + RIDGE * np.eye(xb.shape[1]), xb.T @ y)
    return unit((with_bias(query) @ weights).astype(np.float32))


def mlp_readout(x: np.ndarray, y: np.ndarray, query: np.ndarray, steps: int, seed: int) -> tuple[np.ndarray, float]:
    """An MLP (standardised inputs, 4 × width hidden, GELU) trained on 1 - cosine; (query outputs, mean cosine on
    the training sentences)."""
    import torch

    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    mean, std = xt.mean(0), xt.std(0) + 1e-6
    width = x.shape[1]
    net = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, y.shape[1]))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)

    def predict(a: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(net((a - mean) / std), dim=-1)

    for _ in range(steps):
        batch = torch.randint(0, len(xt), (256,), generator=generator)
        loss = 1 - (predict(xt[batch]) * yt[batch]).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        return predict(torch.from_numpy(query)).numpy(), float((predict(xt) * yt).sum(1).mean())


def layer_study(ctx, sentences: int, mlp_steps: int, seed: int) -> dict:
    from edgekd.text.stages import retrieval_pool
    from edgekd.text.teacher import load_teacher

    data = ctx.text
    pool, reference = retrieval_pool(ctx)
    train = np.sort(np.random.default_rng(seed).permutation(data.train_rows)[:sentences])
    embeddings = np.load(ctx.rundir.data / "teacher_embeddings.npy", mmap_mode="r", allow_pickle=False)
    target = np.asarray(embeddings[train])
    teacher = load_teacher(data.teacher_folder)
    print(f"pooling the teacher's layers over {len(train):,} training and {len(pool):,} pool sentences",
          file=sys.stderr)
    fit_states, pool_states = teacher.pooled_layers(data.ids[train]), teacher.pooled_layers(data.ids[pool])
    layers = []
    for k in range(len(fit_states)):
        fit_k, pool_k = unit(fit_states[k]), unit(pool_states[k])
        linear = embedding_metrics(linear_readout(fit_k, target, pool_k), reference)
        mlp, train_cosine = mlp_readout(fit_k, target, pool_k, mlp_steps, seed)
        layers.append({"layer": k, "linear": linear,
                       "mlp": {**embedding_metrics(mlp, reference), "train_cosine": train_cosine}})
        print(f"  layer {k}: linear cosine {linear['cosine_to_teacher']:.3f} recall@10 {linear['recall_at_10']:.3f}"
              f"  MLP {layers[-1]['mlp']['cosine_to_teacher']:.3f} {layers[-1]['mlp']['recall_at_10']:.3f}",
              file=sys.stderr)
    calibration = embedding_metrics(linear_readout(fit_states[-1], target, pool_states[-1]), reference)
    return {"pool": len(pool), "fit_sentences": len(train), "length": data.train_length, "mlp_steps": mlp_steps,
            "ridge": RIDGE, "layers": layers, "last_layer_not_normalised_linear": calibration}


def table_rows(doc: dict) -> list[tuple[str, ...]]:
    study = doc["study"]
    last = len(study["layers"]) - 1

    def scored(r: dict) -> tuple[str, str, str]:
        return f"{r['cosine_to_teacher']:.3f}", f"{r['recall_at_10']:.3f}", f"{r['best_match_at_10']:.3f}"

    rows = []
    for r in study["layers"]:
        what = "embedding layer (0)" if r["layer"] == 0 else f"layer {r['layer']} of {last}"
        rows.append((f"teacher, {what}", *scored(r["linear"]), *scored(r["mlp"]), f"{r['mlp']['train_cosine']:.3f}"))
    rows.append((f"teacher, layer {last}, not normalised", *scored(study["last_layer_not_normalised_linear"]),
                 "–", "–", "–", "–"))
    rows += [(f"{name} (bag)", *scored(r), "–", "–", "–", "–") for name, r in doc["students"].items()]
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    started = time.perf_counter()
    ctx = context(args.run_dir)
    doc = {**study_header("text_teacher_layers", args.run_dir,
                          interleave.training_machine_info(torch.get_num_threads())),
           "seed": args.seed, "study": layer_study(ctx, args.sentences, args.mlp_steps, args.seed),
           "students": student_rows(ctx)}
    study = doc["study"]
    return write_study(doc, args.result, started, f"The teacher's pooled layers read out to its embedding "
                       f"({study['fit_sentences']:,} training sentences; {study['pool']:,} held-out sentences, "
                       "each searching the others)", COLUMNS, table_rows(doc), args.markdown)


if __name__ == "__main__":
    sys.exit(main())
