"""What a checkpoint answers to shapes-world yes/no questions, by kind of question: a colour-shape
pair the scene holds (gold yes), a pair whose colour is nowhere in the scene (no), and a pair whose
colour is there on another shape (no: colour and outline must be bound). A model that answers one
word whatever the image shows is found at once. Held-out scenes, regenerated from the source's seed.

    python benchmarks/probe_yes_no.py CHECKPOINT [--pipeline SPEC] [--scenes 80]
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.ask import load_asker  # noqa: E402
from tasks import shapes_world as sw  # noqa: E402

KINDS = ("yes", "no: colour absent", "no: colour elsewhere")


def questions(scene, rng: random.Random) -> list[tuple[str, str]]:
    """(kind, question) for one scene: one of each kind the scene allows."""
    ann = sw.scene_annotations(scene)
    pairs = {(s["colour"], s["shape"]) for s in ann["shapes"]}
    colours = {c for c, _ in pairs}
    options = {
        "yes": sorted(pairs),
        "no: colour absent": [(c, s) for c in sw.COLOURS for s in sw.SHAPES if c not in colours],
        "no: colour elsewhere": [(c, s) for c in sorted(colours) for s in sw.SHAPES if (c, s) not in pairs],
    }
    out = []
    for kind in KINDS:
        if options[kind]:
            colour, shape = rng.choice(options[kind])
            out.append((kind, f"is there a {colour} {shape}?"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--pipeline", help="the pipeline spec that trained it (default: its run's record)")
    ap.add_argument("--scenes", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0, help="the shapes-world source's seed")
    args = ap.parse_args(argv)
    asker = load_asker(args.checkpoint, args.pipeline)
    scenes = sw.generate_scenes(0, args.scenes, args.seed)
    rng = random.Random(0)
    requests, kinds = [], []
    for scene in scenes:
        image = sw.render(scene)
        for kind, question in questions(scene, rng):
            requests.append(("vqa", question, image))
            kinds.append(kind)
    answers = asker.answer(requests, max_new_tokens=4)
    counts = collections.Counter((k, a.strip()) for k, a in zip(kinds, answers, strict=True))
    print(f"yes/no answers of {args.checkpoint} on {len(scenes)} held-out scenes")
    print(f"{'question':<24}{'yes':>6}{'no':>6}{'other':>7}{'right':>8}")
    for kind in KINDS:
        total = sum(n for (k, _), n in counts.items() if k == kind)
        yes, no = counts[(kind, "yes")], counts[(kind, "no")]
        right = yes if kind == "yes" else no
        print(f"{kind:<24}{yes:>6}{no:>6}{total - yes - no:>7}{right / max(total, 1):>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
