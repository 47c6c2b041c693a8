"""A small data root holding every registered official benchmark in its published format.

`write_data_root(root)` writes each benchmark under `root / FOLDERS[name]` (the folder
`vlmpipe evaluate --data-root DIR` reads) with its `default_split`, so `read(root / FOLDERS[name], None)`
returns 2-4 items. RefCOCO, RefCOCO+ and RefCOCOg share `refcoco/` (their JSON folders and one
`train2014/` image folder)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tasks.evaluate.official import BENCHMARKS

FOLDERS: dict[str, str] = {name: name for name in BENCHMARKS} | {
    "refcoco": "refcoco",
    "refcocop": "refcoco",
    "refcocog": "refcoco",
}
COLOURS = [(200, 30, 30), (30, 160, 60), (40, 70, 200), (220, 190, 40)]
SIZE = 64


def split(name: str) -> str:
    default = BENCHMARKS[name].default_split
    assert default is not None, name
    return default


def image(path: Path, index: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIZE, SIZE), COLOURS[index % len(COLOURS)]).save(path)
    return path


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_lines(path: Path, rows: list[dict]) -> Path:
    return write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def ten(*answers: str) -> list[str]:
    """Ten annotator answers: the given ones, the last repeated to fill."""
    return (list(answers) + [answers[-1]] * 10)[:10]


def write_gqa(root: Path) -> None:
    rows = [("n100001", "Is the square red?", "yes"), ("n100002", "What colour is the square?", "green")]
    rows += [("n100003", "Is the square yellow?", "no")]
    questions = {
        f"2000{i}": {
            "imageId": img,
            "question": q,
            "answer": a,
            "types": {"structural": "verify" if a in ("yes", "no") else "query", "semantic": "attr"},
        }
        for i, (img, q, a) in enumerate(rows)
    }
    write(root / "questions" / f"{split('gqa')}_questions.json", questions)
    for i, (img, _, _) in enumerate(rows):
        image(root / "images" / f"{img}.jpg", i)


def write_vsr(root: Path) -> None:
    rows = [
        {
            "image": "000000000101.jpg",
            "caption": "The cat is under the table.",
            "label": 1,
            "relation": "under",
        },
        {
            "image": "000000000102.jpg",
            "caption": "The dog is left of the car.",
            "label": 0,
            "relation": "left of",
        },
        {"image": "000000000103.jpg", "caption": "The cup is on the desk.", "label": 1, "relation": "on"},
    ]
    write_lines(root / f"{split('vsr')}.jsonl", rows)
    for i, r in enumerate(rows):
        image(root / "images" / r["image"], i)


def write_iconqa(root: Path) -> None:
    problems = {
        "101": {"question": "Which shape is bigger?", "choices": ["circle", "square"], "answer": 1},
        "102": {"question": "How many dots are there?", "answer": "7"},
        "103": {"question": "What time is shown?", "choices": ["3:00", "6:00", "9:00"], "answer": 0},
    }
    for p in problems.values():
        p.update(ques_type="choose_txt" if "choices" in p else "fill_in_blank", grade="grade1")
    write(root / "problems.json", problems)
    write(root / "pid_splits.json", {split("iconqa"): list(problems), "train": []})
    for i, (pid, p) in enumerate(problems.items()):
        image(root / "iconqa" / split("iconqa") / p["ques_type"] / pid / "image.png", i)


def write_vizwiz(root: Path) -> None:
    s = split("vizwiz")
    rows = [
        ("What is this?", ten(*["unanswerable"] * 6, "soup"), 0, "unanswerable"),
        ("What colour is this shirt?", ten("blue"), 1, "other"),
        ("Is this a can?", ten(*["yes"] * 8, "no"), 1, "yes/no"),
    ]
    records = []
    for i, (question, answers, answerable, answer_type) in enumerate(rows):
        name = f"VizWiz_{s}_{i:08d}.jpg"
        records.append(
            {
                "image": name,
                "question": question,
                "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers],
                "answerable": answerable,
                "answer_type": answer_type,
            }
        )
        image(root / s / name, i)
    write(root / "Annotations" / f"{s}.json", records)


def write_hateful_memes(root: Path) -> None:
    rows = [
        {"id": 1201, "img": "img/01201.png", "label": 1, "text": "they are all the same"},
        {"id": 1202, "img": "img/01202.png", "label": 0, "text": "bravery at its finest"},
        {"id": 1203, "img": "img/01203.png", "label": 0, "text": "when the coffee kicks in"},
    ]
    write_lines(root / f"{split('hateful_memes')}.jsonl", rows)
    for i, r in enumerate(rows):
        image(root / r["img"], i)


def _write_vqa(root: Path, name: str, questions_file: str, annotations_file: str) -> None:
    s = split(name)
    rows = [
        (262148, 262148000, "Where is he looking?", ten(*["down"] * 7, "up"), "other", "where is the"),
        (393225, 393225001, "How many bowls are there?", ten("2"), "number", "how many"),
        (393226, 393226002, "Is the square red?", ten(*["yes"] * 9, "no"), "yes/no", "is the"),
    ]
    questions, annotations = [], []
    for i, (image_id, qid, question, answers, answer_type, question_type) in enumerate(rows):
        questions.append({"image_id": image_id, "question": question, "question_id": qid})
        annotations.append(
            {
                "question_id": qid,
                "image_id": image_id,
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                    for j, a in enumerate(answers)
                ],
                "answer_type": answer_type,
                "question_type": question_type,
            }
        )
        image(root / s / f"COCO_{s}_{image_id:012d}.jpg", i)
    write(root / questions_file.format(split=s), {"questions": questions})
    write(root / annotations_file.format(split=s), {"annotations": annotations})


def write_vqav2(root: Path) -> None:
    _write_vqa(
        root, "vqav2", "v2_OpenEnded_mscoco_{split}_questions.json", "v2_mscoco_{split}_annotations.json"
    )


def write_okvqa(root: Path) -> None:
    _write_vqa(root, "okvqa", "OpenEnded_mscoco_{split}_questions.json", "mscoco_{split}_annotations.json")


def write_scienceqa(root: Path) -> None:
    s = split("scienceqa_img")
    base = {"subject": "social science", "grade": "grade4", "hint": ""}
    problems = {
        "1": {
            **base,
            "question": "Which continent is highlighted?",
            "choices": ["Asia", "Africa"],
            "answer": 1,
        },
        "2": {
            **base,
            "question": "Which word is a noun?",
            "choices": ["run", "cat"],
            "answer": 1,
            "image": None,
        },
        "3": {
            **base,
            "question": "Which cup is warmer?",
            "choices": ["the red cup", "the blue cup", "neither"],
            "answer": 0,
            "hint": "Two cups of tea.",
            "subject": "natural science",
        },
        "4": {**base, "question": "Which state is shown?", "choices": ["Ohio", "Texas"], "answer": 0},
    }
    for p in problems.values():
        p.setdefault("image", "image.png")
        p["split"] = s
    write(root / "problems.json", problems)
    write(root / "pid_splits.json", {"train": [], "val": [], s: list(problems)})
    for i, (pid, p) in enumerate(problems.items()):
        if p["image"]:
            image(root / "images" / s / pid / p["image"], i)


def write_coco_caption(root: Path) -> None:
    rows = [
        (
            391895,
            ["A man riding a bike down a road.", "A cyclist on a dirt path.", "A person rides a bicycle."],
        ),
        (522418, ["A woman cutting a cake.", "A person slicing a large cake.", "Someone cuts a cake."]),
        (184613, ["A boy holding an umbrella.", "A child with an umbrella.", "A kid under an umbrella."]),
    ]
    images = []
    for i, (cocoid, captions) in enumerate(rows):
        filename = f"COCO_val2014_{cocoid:012d}.jpg"
        sentences = [{"raw": c, "tokens": c.lower().rstrip(".").split()} for c in captions]
        images.append(
            {"filepath": "val2014", "filename": filename, "cocoid": cocoid, "split": split("coco_caption")}
            | {"sentences": sentences}
        )
        image(root / "val2014" / filename, i)
    images.append(
        {
            "filepath": "train2014",
            "filename": "COCO_train2014_000000000009.jpg",
            "cocoid": 9,
            "split": "train",
        }
        | {"sentences": [{"raw": "A plate of food.", "tokens": ["a", "plate", "of", "food"]}]}
    )
    write(root / "dataset_coco.json", {"images": images})


def write_mme(root: Path) -> None:
    subtasks = {
        "existence": {
            "000000006040": ("Is there a train in this image?", "Is there a bed in this image?"),
            "000000044279": ("Is there a person in this image?", "Is there a giraffe in this image?"),
        },
        "commonsense_reasoning": {
            "0001": ("Should I wear a coat in this weather?", "Is it safe to swim here now?"),
            "0002": ("Is the food in the picture ready to eat?", "Is the drink in the picture hot?"),
        },
    }
    for i, (subtask, images) in enumerate(subtasks.items()):
        for j, (stem, (yes_q, no_q)) in enumerate(images.items()):
            suffix = ".jpg" if subtask == "existence" else ".png"
            image(root / subtask / f"{stem}{suffix}", 2 * i + j)
            text = f"{yes_q} Please answer yes or no.\tYes\n{no_q} Please answer yes or no.\tNo\n"
            write_text(root / subtask / f"{stem}.txt", text)


def write_refcoco(root: Path) -> None:
    """RefCOCO, RefCOCO+ and RefCOCOg share the COCO train2014/ images of `root`."""
    s = split("refcoco")
    for i, image_id in enumerate((580957, 9)):
        image(root / "train2014" / f"COCO_train2014_{image_id:012d}.jpg", i)
    for folder in ("refcoco", "refcoco+", "refcocog"):
        records = [
            {"img_id": 580957, "sents": "left half", "bbox": [0, 0, 32, 64], "height": SIZE, "width": SIZE},
            {
                "img_id": "COCO_train2014_000000000009_3",
                "sents": ["the bowl in the middle", "centre bowl"],
                "bbox": [16, 16, 32, 32],
                "height": SIZE,
                "width": SIZE,
            },
            {
                "img_id": 9,
                "sents": "bottom right corner",
                "bbox": [40, 40, 20, 20],
                "height": SIZE,
                "width": SIZE,
            },
        ]
        write(root / folder / f"{s}.json", records)


WRITERS = {
    "gqa": write_gqa,
    "vsr": write_vsr,
    "iconqa": write_iconqa,
    "vizwiz": write_vizwiz,
    "hateful_memes": write_hateful_memes,
    "vqav2": write_vqav2,
    "okvqa": write_okvqa,
    "scienceqa_img": write_scienceqa,
    "coco_caption": write_coco_caption,
    "mme": write_mme,
    "refcoco": write_refcoco,
}


def write_data_root(root: Path) -> Path:
    """Write a small fixture of every registered benchmark, in its published format, under `root`."""
    root = Path(root)
    for folder, writer in WRITERS.items():
        writer(root / folder)
    return root
