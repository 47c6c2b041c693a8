"""Shapes world: deterministic scenes, and ground truth that agrees with the rendered pixels."""

from __future__ import annotations

import json
import random
import re
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest

from tasks import shapes_world as sw
from tasks.data.boxes import parse_boxes
from tasks.data.examples import TASKS, TaskExample

SCENES = sw.generate_scenes(150, 30, seed=3)


def _pixel_box(box: list[int], n: int) -> tuple[int, int, int, int]:
    return tuple(round(v * n / 100) for v in box)  # type: ignore[return-value]


def test_generation_is_deterministic_and_splits_are_apart():
    again = sw.generate_scenes(150, 30, seed=3)
    assert again == SCENES
    assert [sw.png_bytes(s) for s in again[:5]] == [sw.png_bytes(s) for s in SCENES[:5]]
    assert sw.generate_scenes(150, 30, seed=4) != SCENES
    # a scene depends on (seed, split, index) only: more held-out scenes do not move the train ones
    assert sw.generate_scenes(150, 5, seed=3)[:150] == SCENES[:150]
    assert [s.split for s in SCENES].count("heldout") == 30
    assert SCENES[0].key == "sw-train-000000" and SCENES[-1].key == "sw-heldout-000029"
    assert len({s.key for s in SCENES}) == len(SCENES)


def test_scenes_respect_the_rules():
    for scene in SCENES:
        assert 1 <= len(scene.shapes) <= 3
        assert len({(s.colour, s.shape) for s in scene.shapes}) == len(scene.shapes)
        assert len({s.cell for s in scene.shapes}) == len(scene.shapes)  # one shape per cell: no overlap
        for s in scene.shapes:
            x1, y1, x2, y2 = s.box
            assert 0 <= x1 < x2 <= scene.canvas_size and 0 <= y1 < y2 <= scene.canvas_size


def test_rendered_pixels_agree_with_the_annotations():
    for scene in SCENES[:60]:
        image = sw.render(scene)
        ann = sw.scene_annotations(scene)
        assert image.size == (64, 64) and image.mode == "RGB"
        colours = {c for _, c in image.getcolors(64 * 64)}
        assert colours == {sw.BACKGROUND} | {sw.COLOURS[s["colour"]] for s in ann["shapes"]}
        for item in ann["shapes"]:
            x1, y1, x2, y2 = _pixel_box(item["box"], 64)
            assert image.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == sw.COLOURS[item["colour"]]
            # nothing of this colour outside its box (the box is tight enough to be a label)
            for x, y in ((x1 - 2, y1 - 2), (x2 + 1, y2 + 1)):
                if 0 <= x < 64 and 0 <= y < 64:
                    assert image.getpixel((x, y)) != sw.COLOURS[item["colour"]]


def test_positions_follow_the_box_centres():
    for scene in SCENES:
        for item in sw.scene_annotations(scene)["shapes"]:
            cx, cy = (item["box"][0] + item["box"][2]) / 2, (item["box"][1] + item["box"][3]) / 2
            row, col = min(2, int(cy // (100 / 3))), min(2, int(cx // (100 / 3)))
            assert item["position"] == sw.POSITIONS[row][col]


def test_vqa_answers_are_right_and_closed():
    rng = random.Random(0)
    yes = no = 0
    for scene in SCENES:
        ann = sw.scene_annotations(scene)
        image = sw.render(scene)
        items = sw.vqa_items(ann, rng)
        assert [i["qtype"] for i in items] == list(sw.QTYPES)
        for item in items:
            assert item["answer"] in sw.answer_choices(item["qtype"])
            q, a = item["question"], item["answer"]
            if item["qtype"] == "colour":
                # the answer's colour is on the canvas, at the asked shape's place
                where = [s for s in ann["shapes"] if s["colour"] == a]
                assert where and any(s["shape"] in q or s["position"] in q for s in where)
                x1, y1, x2, y2 = _pixel_box(where[0]["box"], 64)
                assert image.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == sw.COLOURS[a]
            elif item["qtype"] == "count":
                n = sw.COUNT_WORDS.index(a)
                if q == "how many shapes are there?":
                    assert n == len(ann["shapes"])
            elif item["qtype"] == "position":
                colour, shape = re.match(r"where is the (\w+) (\w+)\?", q).groups()
                assert [
                    s["position"] for s in ann["shapes"] if (s["colour"], s["shape"]) == (colour, shape)
                ] == [a]
            elif item["qtype"] == "yes/no":
                colour, shape = re.match(r"is there a (\w+) (\w+)\?", q).groups()
                present = any((s["colour"], s["shape"]) == (colour, shape) for s in ann["shapes"])
                assert (a == "yes") == present
                yes, no = yes + (a == "yes"), no + (a == "no")
    assert abs(yes - no) < 0.25 * (yes + no)  # balanced: "yes" alone cannot pass


def test_yes_no_turns_ask_distinct_pairs_true_of_the_scene_both_ways():
    rng = random.Random(0)
    answers = []
    for scene in SCENES:
        ann = sw.scene_annotations(scene)
        pairs = {(s["colour"], s["shape"]) for s in ann["shapes"]}
        items = sw.yes_no_turns(ann, rng)
        assert len(items) == sw.YES_NO_TURNS
        asked = [re.match(r"is there a (\w+) (\w+)\?$", i["question"]).groups() for i in items]
        assert len(set(asked)) == len(asked)  # never the same pair twice in one sample
        for pair, item in zip(asked, items, strict=True):
            assert item["qtype"] == "yes/no" and (item["answer"] == "yes") == (pair in pairs), item
        answers.append([i["answer"] for i in items])
    flat = [a for turns in answers for a in turns]
    assert 0.35 < flat.count("yes") / len(flat) < 0.6  # near even (a one-shape scene runs out of yes)
    assert sum(len(set(turns)) == 2 for turns in answers) > len(answers) / 2  # one picture, both answers
    # the answers do not follow a fixed order
    assert len({tuple(turns) for turns in answers}) > 6
    record = {"key": SCENES[0].key, "annotations": sw.scene_annotations(SCENES[0])}
    (example,) = sw.task_examples(record, "vqa_turns", random.Random(0))
    assert len(example.turns) == sw.YES_NO_TURNS and example.meta["qtypes"] == ["yes/no"] * sw.YES_NO_TURNS


def test_referring_expressions_are_unambiguous():
    for scene in SCENES:
        ann = sw.scene_annotations(scene)
        items = sw.referring_items(ann)
        assert len(items) == len(ann["shapes"])
        for item in items:
            words = item["expression"].removeprefix("the ").split()
            matches = [s for s in ann["shapes"] if all(w in (s["colour"], s["shape"]) for w in words)]
            assert len(matches) == 1 and tuple(matches[0]["box"]) == item["box"]


def test_caption_and_grounded_caption_name_every_shape():
    for scene in SCENES[:40]:
        ann = sw.scene_annotations(scene)
        cap, grounded = sw.caption(ann), sw.grounded_caption(ann)
        for s in ann["shapes"]:
            assert f"{s['colour']} {s['shape']}" in cap and s["position"] in cap
        assert parse_boxes(grounded) == [tuple(s["box"]) for s in ann["shapes"]]
        assert parse_boxes(sw.detection_text(ann)) == [tuple(s["box"]) for s in ann["shapes"]]
        assert 2 <= len(sw.conversation(ann, random.Random(1))) <= 3
        assert sw.detailed_description(ann).count(".") > len(ann["shapes"])


def test_task_examples_cover_every_image_task():
    ann = sw.scene_annotations(SCENES[1])
    record = {"key": SCENES[1].key, "annotations": json.loads(json.dumps(ann))}  # as read back from a shard
    for task in TASKS:
        examples = sw.task_examples(record, task, random.Random(0))
        if task == "text_instruction":  # the scene in words, no image; the answer is in the text
            assert len(examples) == 2 and all(e.image is None and e.task == task for e in examples)
            for e in examples:
                assert e.turns[0].query.startswith(sw.caption(ann) + ". ")
                assert e.turns[0].answer == e.meta["answers"][0]
            continue
        assert examples and all(isinstance(e, TaskExample) and e.task == task for e in examples)
        assert all(e.image == SCENES[1].key for e in examples)
    vqa = sw.task_examples(record, "vqa", random.Random(0))
    assert all(e.meta["qtype"] in sw.QTYPES and e.turns[0].answer in e.meta["choices"] for e in vqa)
    # one question per type; the yes/no one is true of the scene
    assert sorted(e.meta["qtype"] for e in vqa) == sorted(sw.QTYPES)
    pairs = {(s["colour"], s["shape"]) for s in ann["shapes"]}
    for rng_seed in range(20):
        item = sw.yes_no_item(ann, rng_seed % 2 == 0, random.Random(rng_seed))
        colour, shape = item["question"].removeprefix("is there a ").removesuffix("?").split()
        assert ((colour, shape) in pairs) == (item["answer"] == "yes"), item
    refer = sw.task_examples(record, "refer", random.Random(0))
    assert all(parse_boxes(e.turns[0].answer) == [e.meta["box"]] for e in refer)
    identify = sw.task_examples(record, "identify", random.Random(0))
    assert [e.turns[0].query for e in identify] == [e.turns[0].answer for e in refer]


def test_text_corpus_covers_every_word_emitted():
    vocabulary = {w for text in sw.text_corpus() for w in re.findall(r"[a-z]+", text.lower())}
    rng = random.Random(5)
    for scene in sw.generate_scenes(50, 0, seed=99):
        ann = sw.scene_annotations(scene)
        texts = [
            sw.caption(ann),
            sw.grounded_caption(ann),
            sw.detailed_description(ann),
            sw.detection_text(ann),
        ]
        texts += [i["question"] + " " + i["answer"] for i in sw.vqa_items(ann, rng)]
        texts += [q + " " + a for q, a in sw.conversation(ann, rng)]
        record = {"key": scene.key, "annotations": ann}
        texts += [
            e.turns[0].query + " " + e.turns[0].answer
            for e in sw.task_examples(record, "text_instruction", rng)
        ]
        for text in texts:
            assert set(re.findall(r"[a-z]+", text.lower())) <= vocabulary, text


def test_url_list_and_server(tmp_path):
    scenes = SCENES[:4]
    with sw.ShapesWorldServer(scenes) as server:
        path = sw.write_url_list(scenes, tmp_path / "urls.parquet", server.base_url)
        table = pq.read_table(path).to_pylist()
        assert [r["key"] for r in table] == [s.key for s in scenes]
        assert set(table[0]) == {"url", "caption", "key", "split", "annotations"}
        assert json.loads(table[0]["annotations"]) == sw.scene_annotations(scenes[0])
        body = urllib.request.urlopen(table[0]["url"], timeout=5).read()
        assert body == sw.png_bytes(scenes[0])
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.base_url + "/img/sw-train-999999.png", timeout=5)
        assert err.value.code == 404
        assert server.served == {"ok": 1, "404": 1}
    with pytest.raises(OSError):  # stopped: nothing listens any more
        urllib.request.urlopen(table[0]["url"], timeout=2)


def test_held_out_scenes_share_no_layout_and_no_image_with_training_at_the_shipped_sizes():
    """The demo's own source spec: no held-out layout (cells, colours, shapes: what every answer
    depends on) occurs in training, no held-out image is byte-identical to a training image, and
    every heldout_novel scene has a colour-shape pair that neither other split has."""
    import hashlib
    from pathlib import Path

    import yaml

    from tasks import shapes_world as sw

    spec = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "data_specs/sources/shapes_world.yaml").read_text()
    )
    cfg = spec["shapes_world"]
    assert cfg["num_heldout"] >= 400 and cfg["num_heldout_novel"] >= 200
    scenes = sw.generate_scenes(
        cfg["num_train"],
        cfg["num_heldout"],
        cfg["seed"],
        cfg["canvas_size"],
        cfg["max_shapes"],
        cfg["num_heldout_novel"],
    )
    by_split: dict[str, list] = {}
    for scene in scenes:
        by_split.setdefault(scene.split, []).append(scene)
    assert {k: len(v) for k, v in by_split.items()} == {
        "train": cfg["num_train"],
        "heldout": cfg["num_heldout"],
        "heldout_novel": cfg["num_heldout_novel"],
    }
    layouts = {split: {sw.layout_of(s) for s in group} for split, group in by_split.items()}
    assert not layouts["train"] & layouts["heldout"]
    assert not layouts["train"] & layouts["heldout_novel"]
    images = {
        split: {hashlib.sha256(sw.png_bytes(s)).digest() for s in group} for split, group in by_split.items()
    }
    assert not images["train"] & (images["heldout"] | images["heldout_novel"])
    novel = set(sw.NOVEL_PAIRS)
    for split, group in by_split.items():
        for scene in group:
            pairs = {(s.colour, s.shape) for s in scene.shapes}
            assert bool(pairs & novel) == (split == "heldout_novel"), (split, scene.key, pairs)
    # the held-out split still covers every question type's answers
    assert {s.colour for scene in by_split["heldout"] for s in scene.shapes} == set(sw.COLOURS)
    assert {len(scene.shapes) for scene in by_split["heldout"]} == {1, 2, 3}


def test_scenes_stay_a_function_of_seed_split_and_index():
    from tasks import shapes_world as sw

    a = sw.generate_scenes(20, 10, 3, num_heldout_novel=5)
    b = sw.generate_scenes(20, 10, 3, num_heldout_novel=5)
    assert a == b
    assert sw.generate_scenes(10, 10, 3)[10:] == a[20:30]  # held-out scene i does not depend on num_train
