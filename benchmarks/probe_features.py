"""Linear probes on a checkpoint's visual tokens: does what the LM sees (the Q-Former's query
outputs, then the projection) carry each cell's colour and shape, and does that carry over to
layouts never seen in training? Trains a logistic-regression probe per target on training scenes and
reports its accuracy on training scenes and on the held-out splits. Prints one table.

    python benchmarks/probe_features.py --checkpoint CKPT --pipeline data_specs/pipelines/shapes_demo.yaml \
        --data .vlmpipe/data/shapes_world [--train 2000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.evaluate_inputs import model_config  # noqa: E402
from tasks import shapes_world  # noqa: E402
from tasks.data.records import SourceRecords  # noqa: E402

COLOURS = ["empty", *shapes_world.COLOURS]
SHAPES = ["empty", *shapes_world.SHAPES]


def targets(ann: dict) -> dict[str, int]:
    out = {}
    cells = {shapes_world._cell(s["position"]): s for s in ann["shapes"]}
    for r in range(3):
        for c in range(3):
            s = cells.get((r, c))
            out[f"colour@{r}{c}"] = COLOURS.index(s["colour"]) if s else 0
            out[f"shape@{r}{c}"] = SHAPES.index(s["shape"]) if s else 0
    out["count"] = len(ann["shapes"])
    return out


@torch.no_grad()
def features(built, records: SourceRecords, n: int, batch: int = 64) -> tuple[torch.Tensor, list[dict]]:
    feats, labels = [], []
    n = min(n, len(records))
    for start in range(0, n, batch):
        idx = range(start, min(start + batch, n))
        pixels = built.preprocess([records.image(i) for i in idx])
        q = built.model.query_features(pixels)  # [B, Q, D]
        feats.append(built.model.projection(q).flatten(1).float())  # what the LM reads
        labels += [targets(records.meta(i)["annotations"]) for i in idx]
    return torch.cat(feats), labels


def probe(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 300) -> torch.nn.Linear:
    torch.manual_seed(0)
    mean, std = x.mean(0), x.std(0) + 1e-6
    layer = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer((x - mean) / std), y)
        loss.backward()
        opt.step()
    layer.norm = (mean, std)  # type: ignore[attr-defined]
    return layer


def accuracy(layer, x, y, occupied_only: bool = False) -> float:
    """Share of right answers; `occupied_only`: over cells that hold a shape (class 0 is empty)."""
    mean, std = layer.norm
    right = layer((x - mean) / std).argmax(1) == y
    if occupied_only:
        right = right[y != 0]
    return right.float().mean().item() if len(right) else float("nan")


def main() -> None:

    from model.build import build_model, model_choice

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--data", required=True, help="the ingested shapes_world folder")
    ap.add_argument("--train", type=int, default=2000)
    args = ap.parse_args()
    config = model_config(args.checkpoint, args.pipeline)
    spec = config["model"]
    choice = model_choice(spec)
    built, _ = build_model(choice, init_checkpoint=args.checkpoint, log=lambda _m: None)
    built.model.eval()
    splits = {"train": args.train, "heldout": 400, "heldout_novel": 200}
    data = {s: features(built, SourceRecords(args.data, s), n) for s, n in splits.items()}
    names = list(data["train"][1][0])
    groups = {
        "colour": [n for n in names if n.startswith("colour")],
        "shape": [n for n in names if n.startswith("shape")],
        "count": ["count"],
    }
    print(f"{'target':<22}" + "".join(f"{s:>15}" for s in splits))
    for group, members in groups.items():
        for occupied in (False, True) if group != "count" else (False,):
            accs = {s: [] for s in splits}
            for name in members:
                ys = {s: torch.tensor([lab[name] for lab in data[s][1]]) for s in splits}
                classes = int(max(int(y.max()) for y in ys.values())) + 1
                layer = probe(data["train"][0], ys["train"], classes)
                for s in splits:
                    accs[s].append(accuracy(layer, data[s][0], ys[s], occupied))
            label = f"{group} per cell" + (" (occupied)" if occupied else "") if group != "count" else group
            print(f"{label:<22}" + "".join(f"{sum(a) / len(a):>15.3f}" for a in accs.values()))
    empty = {
        s: sum(lab[n] == 0 for lab in data[s][1] for n in groups["colour"]) / (9 * len(data[s][1]))
        for s in splits
    }
    print(f"{'(all-empty guess)':<22}" + "".join(f"{v:>15.3f}" for v in empty.values()))


if __name__ == "__main__":
    main()
