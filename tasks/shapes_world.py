"""Shapes world, the embedded default source: seeded scenes of one to three coloured shapes with
exact ground truth (caption, closed VQA, referring boxes, grounded caption), served on a loopback
port (`ShapesWorldServer`) and downloaded by img2dataset exactly as a web source would be.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from tasks.data.boxes import format_box, format_grounded_phrase, normalise_box
from tasks.data.examples import TaskExample, Turn
from tasks.loopback import LoopbackServer, Response

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 0),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (255, 255, 255)
# The canvas is a 3x3 grid; each shape sits inside its own cell, so shapes never overlap and
# every shape has exactly one position word.
POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
POSITION_WORDS = tuple(p for row in POSITIONS for p in row)
_PREPOSITION = {"left": "on the", "right": "on the", "center": "in the"}
COUNT_WORDS = ("zero", "one", "two", "three")
SIZES = ("small", "large")
DATASET = "shapes_world"


@dataclass(frozen=True)
class PlacedShape:
    shape: str
    colour: str
    box: tuple[int, int, int, int]  # pixels, x2/y2 exclusive
    cell: tuple[int, int]  # (row, column) in the 3x3 grid

    @property
    def position(self) -> str:
        return POSITIONS[self.cell[0]][self.cell[1]]


@dataclass(frozen=True)
class Scene:
    key: str
    split: str
    canvas_size: int
    shapes: tuple[PlacedShape, ...]


# Colour-shape pairs that no train or "heldout" scene contains: every "heldout_novel" scene has at
# least one, so that split asks about combinations the model has never seen (compositional).
NOVEL_PAIRS: tuple[tuple[str, str], ...] = (("yellow", "triangle"), ("blue", "circle"))
SEEN_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES if (c, s) not in NOVEL_PAIRS)
# One layout in HELDOUT_SHARE is reserved for the held-out split: a train scene never has one, a
# held-out scene always has one, so no held-out layout (and no held-out image) occurs in training.
HELDOUT_SHARE = 5
SPLITS = ("train", "heldout", "heldout_novel")

Layout = tuple[tuple[tuple[int, int], str, str], ...]


def layout_of(scene: Scene) -> Layout:
    """What a scene's answers depend on: each shape's cell, colour and shape (not its jitter)."""
    return tuple(sorted((s.cell, s.colour, s.shape) for s in scene.shapes))


def layout_reserved(layout: Layout, seed: int) -> bool:
    """Whether `layout` belongs to the held-out split (a seeded hash: stable across runs)."""
    import hashlib

    digest = hashlib.sha256(f"shapes-world-layout:{seed}:{layout}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % HELDOUT_SHARE == 0


def _scene(key: str, split: str, rng: random.Random, canvas: int, max_shapes: int) -> Scene:
    count = rng.randint(1, max_shapes)
    cells = sorted(rng.sample([(r, c) for r in range(3) for c in range(3)], count))
    # distinct (colour, shape) pairs: "the red circle" then always names one shape
    if split == "heldout_novel":  # one novel pair, the others from every pair
        first = NOVEL_PAIRS[rng.randrange(len(NOVEL_PAIRS))]
        rest = rng.sample([p for p in (*SEEN_PAIRS, *NOVEL_PAIRS) if p != first], count - 1)
        pairs = [first, *rest]
        rng.shuffle(pairs)
    else:
        pairs = rng.sample(SEEN_PAIRS, count)
    cell = canvas / 3
    placed = []
    for (row, col), (colour, shape) in zip(cells, pairs, strict=True):
        side = round(cell * rng.uniform(0.55, 0.9))
        x0 = round(col * cell + rng.uniform(0, cell - side))
        y0 = round(row * cell + rng.uniform(0, cell - side))
        placed.append(PlacedShape(shape, colour, (x0, y0, x0 + side, y0 + side), (row, col)))
    return Scene(key, split, canvas, tuple(placed))


def generate_scenes(
    num_train: int,
    num_heldout: int,
    seed: int,
    canvas_size: int = 64,
    max_shapes: int = 3,
    num_heldout_novel: int = 0,
) -> list[Scene]:
    """Train scenes, then held-out scenes, then "heldout_novel" scenes; scene i of a split depends
    only on (seed, split, i).

    By construction: a held-out scene's layout (cells, colours, shapes) never occurs in training
    (`layout_reserved`), and a heldout_novel scene holds a colour-shape pair no other split has
    (`NOVEL_PAIRS`). A draw that breaks its split's rule is drawn again from the same seeded stream.
    """
    if not 1 <= max_shapes <= 9:
        raise ValueError(f"max_shapes must be 1-9, got {max_shapes}")
    if canvas_size < 12:
        raise ValueError(f"canvas_size must be at least 12 px, got {canvas_size}")
    scenes = []
    for split, n in (("train", num_train), ("heldout", num_heldout), ("heldout_novel", num_heldout_novel)):
        for i in range(n):
            # a string seed is hashed with SHA-512 by `random`: stable across runs and platforms
            rng = random.Random(f"shapes-world:{seed}:{split}:{i}")
            while True:
                scene = _scene(f"sw-{split}-{i:06d}", split, rng, canvas_size, max_shapes)
                reserved = layout_reserved(layout_of(scene), seed)
                if split == "heldout_novel" or reserved == (split == "heldout"):
                    break
            scenes.append(scene)
    return scenes


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image; no anti-aliasing, so every shape pixel has its exact colour."""
    image = Image.new("RGB", (scene.canvas_size, scene.canvas_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        x1, y1, x2, y2 = s.box
        fill = COLOURS[s.colour]
        if s.shape == "circle":
            draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
        elif s.shape == "square":
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
        else:
            draw.polygon([((x1 + x2 - 1) / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=fill)
    return image


def png_bytes(scene: Scene) -> bytes:
    buf = io.BytesIO()
    render(scene).save(buf, format="PNG")
    return buf.getvalue()


def scene_annotations(scene: Scene) -> dict[str, Any]:
    """JSON-able ground truth; boxes on the 0-100 scale of tasks.data.boxes."""
    n = scene.canvas_size
    sides = [s.box[2] - s.box[0] for s in scene.shapes]
    threshold = n / 3 * 0.72  # between the smallest (0.55) and largest (0.9) side of a cell
    return {
        "canvas_size": n,
        "shapes": [
            {
                "shape": s.shape,
                "colour": s.colour,
                "position": s.position,
                "size": "large" if side >= threshold else "small",
                "box": list(normalise_box(*s.box, n, n)),
            }
            for s, side in zip(scene.shapes, sides, strict=True)
        ],
    }


# ---- ground truth from annotations (content only; templates add the instructions) ----------


def _name(item: dict) -> str:
    return f"{item['colour']} {item['shape']}"


def _where(position: str) -> str:
    return f"{_PREPOSITION.get(position, 'at the')} {position}"


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(ann: dict) -> str:
    """Every shape with colour, shape and position, in reading order."""
    return _join([f"a {_name(s)} {_where(s['position'])}" for s in ann["shapes"]])


def answer_choices(qtype: str) -> list[str]:
    """The closed answer set of a question type (its size gives the chance level)."""
    choices = {
        "colour": list(COLOURS),
        "shape": list(SHAPES),
        "count": list(COUNT_WORDS[1:4]),
        "position": list(POSITION_WORDS),
        "yes/no": ["yes", "no"],
    }
    if qtype not in choices:
        raise ValueError(f"unknown question type {qtype!r}; known: {', '.join(choices)}")
    return choices[qtype]


QTYPES = ("colour", "shape", "count", "position", "yes/no")


def vqa_items(ann: dict, rng: random.Random) -> list[dict[str, str]]:
    """One question per type; the yes/no one is 'yes' or 'no' with equal probability."""
    shapes = ann["shapes"]
    target = rng.choice(shapes)
    kinds = [s["shape"] for s in shapes]
    colours = [s["colour"] for s in shapes]
    items = []
    if kinds.count(target["shape"]) == 1 and rng.random() < 0.5:
        q = f"what colour is the {target['shape']}?"
    else:
        q = f"what colour is the shape {_where(target['position'])}?"
    items.append({"question": q, "answer": target["colour"], "qtype": "colour"})
    if colours.count(target["colour"]) == 1 and rng.random() < 0.5:
        q = f"what shape is {target['colour']}?"
    else:
        q = f"what shape is {_where(target['position'])}?"
    items.append({"question": q, "answer": target["shape"], "qtype": "shape"})
    roll = rng.random()
    if roll < 0.5:
        q, n = "how many shapes are there?", len(shapes)
    elif roll < 0.75:
        q, n = f"how many {target['colour']} shapes are there?", colours.count(target["colour"])
    else:
        q, n = f"how many {target['shape']}s are there?", kinds.count(target["shape"])
    items.append({"question": q, "answer": COUNT_WORDS[n], "qtype": "count"})
    items.append(
        {"question": f"where is the {_name(target)}?", "answer": target["position"], "qtype": "position"}
    )
    items.append(yes_no_item(ann, rng.random() < 0.5, rng))
    return items


def yes_no_item(ann: dict, present: bool, rng: random.Random) -> dict[str, str]:
    """'is there a <colour> <shape>?' about a pair the scene holds (yes) or does not (no)."""
    pairs = {(s["colour"], s["shape"]) for s in ann["shapes"]}
    if not present:
        pairs = {(c, s) for c in COLOURS for s in SHAPES} - pairs
    colour, shape = rng.choice(sorted(pairs))
    return _presence_check(colour, shape, present)


def _presence_check(colour: str, shape: str, present: bool) -> dict[str, str]:
    return {
        "question": f"is there a {colour} {shape}?",
        "answer": "yes" if present else "no",
        "qtype": "yes/no",
    }


YES_NO_TURNS = 4


def yes_no_turns(ann: dict, rng: random.Random, n: int = YES_NO_TURNS) -> list[dict[str, str]]:
    """`n` presence checks about distinct colour-shape pairs of one scene, each 'yes' or 'no' with
    equal probability and independently (so that no count of earlier answers gives the next one
    away): asked as turns of one sample, the same picture answers both ways, and the answer cannot
    come from the question's words alone."""
    present = sorted({(s["colour"], s["shape"]) for s in ann["shapes"]})
    absent = sorted({(c, s) for c in COLOURS for s in SHAPES} - set(present))
    present, absent = rng.sample(present, len(present)), rng.sample(absent, len(absent))
    items = []
    for _ in range(n):
        pool = present if (rng.random() < 0.5 and present) or not absent else absent
        colour, shape = pool.pop()
        items.append(_presence_check(colour, shape, pool is present))
        if not present and not absent:
            break
    return items


def _expression(item: dict, shapes: list[dict]) -> str:
    """The shortest unambiguous name of `item` among `shapes`."""
    if [s["shape"] for s in shapes].count(item["shape"]) == 1 and len(shapes) > 1:
        return f"the {item['shape']}"
    return f"the {_name(item)}"


def referring_items(ann: dict) -> list[dict[str, Any]]:
    """One expression per shape, unambiguous in its scene, with the shape's 0-100 box."""
    shapes = ann["shapes"]
    return [{"expression": _expression(s, shapes), "box": tuple(s["box"])} for s in shapes]


def grounded_caption(ann: dict) -> str:
    return _join(
        [
            f"{format_grounded_phrase('a ' + _name(s), tuple(s['box']))} {_where(s['position'])}"
            for s in ann["shapes"]
        ]
    )


def detection_text(ann: dict, shape: str | None = None) -> str:
    """`<p>red circle</p> {<..>}` for every shape (of one kind when `shape` is given)."""
    picked = [s for s in ann["shapes"] if shape is None or s["shape"] == shape]
    return ", ".join(format_grounded_phrase(_name(s), tuple(s["box"])) for s in picked)


def detailed_description(ann: dict) -> str:
    shapes = ann["shapes"]
    n = len(shapes)
    lines = [f"The image shows {COUNT_WORDS[n]} shape{'s' if n > 1 else ''} on a plain white background."]
    for s in shapes:
        lines.append(f"{_where(s['position']).capitalize()} there is a {s['size']} {_name(s)}.")
    for a, b in zip(shapes, shapes[1:], strict=False):
        ca, cb = _cell(a["position"]), _cell(b["position"])
        if ca[1] != cb[1]:
            side = "left" if ca[1] < cb[1] else "right"
            lines.append(f"The {_name(a)} is to the {side} of the {_name(b)}.")
        else:
            side = "above" if ca[0] < cb[0] else "below"
            lines.append(f"The {_name(a)} is {side} the {_name(b)}.")
    lines.append("There is nothing else in the image.")
    return " ".join(lines)


def _cell(position: str) -> tuple[int, int]:
    i = POSITION_WORDS.index(position)
    return divmod(i, 3)


def conversation(ann: dict, rng: random.Random) -> list[tuple[str, str]]:
    """Two or three turns of questions with full-sentence answers."""
    shapes = ann["shapes"]
    n = len(shapes)
    target = rng.choice(shapes)
    turns = [
        ("What can you see in this image?", f"I can see {caption(ann)}."),
        (f"Where is the {_name(target)}?", f"The {_name(target)} is {_where(target['position'])}."),
        (
            "How many shapes are there?",
            f"There {'is' if n == 1 else 'are'} {COUNT_WORDS[n]} shape{'s' if n > 1 else ''}.",
        ),
    ]
    keep = rng.choice((2, 3))
    return [turns[0]] + rng.sample(turns[1:], keep - 1)


def task_examples(record: dict, task: str, rng: random.Random) -> list[TaskExample]:
    """One ingested record (key, annotations) -> the examples of `task` it supports."""
    ann = record["annotations"]
    key = record["key"]

    def ex(turns: list[Turn], **meta: Any) -> TaskExample:
        return TaskExample(task, turns, image=key, dataset=DATASET, meta=meta)

    if task in ("image_text", "caption"):
        return [ex([Turn(None, caption(ann))])]
    if task == "vqa":
        return [
            ex(
                [Turn(i["question"], i["answer"])],
                qtype=i["qtype"],
                choices=answer_choices(i["qtype"]),
                answers=[i["answer"]],
            )
            for i in vqa_items(ann, rng)
        ]
    if task == "vqa_turns":
        items = yes_no_turns(ann, rng)
        return [ex([Turn(i["question"], i["answer"]) for i in items], qtypes=[i["qtype"] for i in items])]
    if task == "refer":
        return [ex([Turn(r["expression"], format_box(r["box"]))], box=r["box"]) for r in referring_items(ann)]
    if task == "identify":
        return [ex([Turn(format_box(r["box"]), r["expression"])], box=r["box"]) for r in referring_items(ann)]
    if task == "grounding":
        return [ex([Turn(None, grounded_caption(ann))], boxes=[tuple(s["box"]) for s in ann["shapes"]])]
    if task == "detection":
        kinds = sorted({s["shape"] for s in ann["shapes"]})
        return [
            ex(
                [Turn(k, detection_text(ann, k))],
                boxes=[tuple(s["box"]) for s in ann["shapes"] if s["shape"] == k],
            )
            for k in kinds
        ]
    if task == "detailed_description":
        return [ex([Turn(None, detailed_description(ann))])]
    if task == "conversation":
        return [ex([Turn(q, a) for q, a in conversation(ann, rng)])]
    if task == "text_instruction":
        # The shapes world's own text-only task: the scene told in words (its caption), then one of
        # its questions. No image: the answer is in the text (what a text-only instruction set gives
        # the MM-Adapter's router to tell apart from image samples). Words from text_corpus() only.
        return [
            TaskExample(
                task,
                [Turn(f"{caption(ann)}. {i['question']}", i["answer"])],
                image=None,
                dataset=DATASET,
                meta={"qtype": i["qtype"], "answers": [i["answer"]]},
            )
            for i in vqa_items(ann, rng)[:2]
        ]
    return []


def text_corpus() -> list[str]:
    """Every word and phrase the generator can emit (the tiny tokenizer is trained on it)."""
    texts = list(COLOURS) + list(SHAPES) + list(POSITION_WORDS) + list(COUNT_WORDS) + list(SIZES)
    texts += [f"{s}s" for s in SHAPES] + ["yes", "no", "above", "below"]
    texts += [f"{{<{i}><{i}><{i}><{i}>}}" for i in range(101)]
    for scene in generate_scenes(300, 0, seed=12345):
        ann = scene_annotations(scene)
        rng = random.Random(scene.key)
        texts += [caption(ann), grounded_caption(ann), detection_text(ann), detailed_description(ann)]
        texts += [f"{i['question']} {i['answer']}" for i in vqa_items(ann, rng)]
        texts += [f"{r['expression']} {format_box(r['box'])}" for r in referring_items(ann)]
        texts += [f"{q} {a}" for q, a in conversation(ann, rng)]
    return list(dict.fromkeys(texts))


def tokenizer_corpus() -> list[str]:
    """Text the tiny preset's tokenizer is trained on: every string the shapes world and the
    template registry can produce (words, boxes, instructions, template pieces, task identifiers)."""
    from tasks.data.templates import ASSISTANT, DEFAULT_INSTRUCTIONS, HUMAN, IMAGE_BLOCK, identifier_line

    texts = list(text_corpus())
    texts += [i for pool in DEFAULT_INSTRUCTIONS.values() for i in pool]
    texts += [
        HUMAN,
        ASSISTANT,
        "###",
        IMAGE_BLOCK,
        identifier_line(),
        " ".join(format_box((i, i, i, i)) for i in range(101)),
    ]
    return texts


def in_memory_records(
    num_train: int,
    num_heldout: int,
    seed: int,
    canvas_size: int = 64,
    max_shapes: int = 3,
    image_size: int | None = None,
    num_heldout_novel: int = 0,
) -> list[dict[str, Any]]:
    """Records as `tasks.ingest.read_records` yields them, rendered in memory (for tests and
    benchmarks of what comes after ingest; the ingest path itself downloads them)."""
    records = []
    for scene in generate_scenes(num_train, num_heldout, seed, canvas_size, max_shapes, num_heldout_novel):
        image = render(scene)
        if image_size is not None and image_size != canvas_size:
            image = image.resize((image_size, image_size), Image.Resampling.BOX)
        ann = json.loads(json.dumps(scene_annotations(scene)))  # lists, as read back from a shard
        records.append(
            {
                "key": scene.key,
                "sample_key": scene.key,
                "image": image,
                "caption": caption(ann),
                "annotations": ann,
                "split": scene.split,
                "url": None,
            }
        )
    return records


# ---- URL list and loopback server --------------------------------------------------------------


def image_path(key: str) -> str:
    return f"/img/{key}.png"


def write_url_list(scenes: Sequence[Scene], path: str | Path, base_url: str) -> Path:
    """Parquet with columns url, caption, key, split, annotations (JSON text), one row per scene."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"url": [], "caption": [], "key": [], "split": [], "annotations": []}
    for scene in scenes:
        ann = scene_annotations(scene)
        rows["url"].append(base_url.rstrip("/") + image_path(scene.key))
        rows["caption"].append(caption(ann))
        rows["key"].append(scene.key)
        rows["split"].append(scene.split)
        rows["annotations"].append(json.dumps(ann, sort_keys=True))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    return path


class ShapesWorldServer(LoopbackServer):
    """Serves `/img/<key>.png` for the given scenes (404 otherwise) on a loopback port.

    Use as a context manager; `base_url` is valid inside it. Images are rendered on first request.
    """

    def __init__(self, scenes: Sequence[Scene], host: str = "127.0.0.1", port: int = 0):
        self._scenes = {image_path(s.key): s for s in scenes}
        self._png = lru_cache(maxsize=None)(png_bytes)
        super().__init__(self._route, host=host, port=port)

    def _route(self, path: str) -> Response:
        scene = self._scenes.get(path)
        if scene is None:
            return Response(404, b"not found", "text/plain")
        return Response(200, self._png(scene), "image/png")
