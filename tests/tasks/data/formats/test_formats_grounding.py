"""Box-bearing readers: RefCOCO family (refer/identify), Visual Genome regions, Flickr30k Entities.
Every expected box below is worked out by hand from the fixture's pixels and image size."""

from __future__ import annotations

import pickle
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
from PIL import Image

from tasks.data.examples import TaskExample, Turn
from tasks.data.formats import FormatError, load_examples

FIXTURES = Path(__file__).parent / "fixtures"


def make_image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height)).save(path)


IMAGE_9 = "COCO_train2014_000000000009.jpg"
IMAGE_25 = "COCO_train2014_000000000025.jpg"
BOX_101 = (10, 10, 60, 60)  # [64, 48, 320, 240] on 640x480
BOX_103 = (25, 25, 75, 75)  # [50, 25, 100, 50] on 200x100, size read from the image file


def _refer(expression: str, box: tuple, image: str, ref_id: int, ann_id: int, sent_id: int) -> TaskExample:
    box_text = "{{<{}><{}><{}><{}>}}".format(*box)
    meta = {"box": box, "ref_id": ref_id, "ann_id": ann_id, "sent_id": sent_id}
    return TaskExample("refer", [Turn(expression, box_text)], image, "refcoco", meta)


def test_refcoco_train_split_one_example_per_expression(refcoco_dir, coco_images):
    assert list(load_examples("refcoco", refcoco_dir, coco_images)) == [
        _refer("Man in red", BOX_101, IMAGE_9, 1, 101, 11),  # raw text, stripped
        _refer("left guy", BOX_101, IMAGE_9, 1, 101, 12),  # raw empty: the tokenised sent
        _refer("brown dog", BOX_103, IMAGE_25, 4, 103, 41),
    ]


def test_invrefcoco_puts_the_box_in_the_query(refcoco_dir, coco_images):
    first = next(load_examples("invrefcoco", refcoco_dir / "refs(unc).p", coco_images))
    assert first == TaskExample(
        "identify",
        [Turn("{<10><10><60><60>}", "Man in red")],
        IMAGE_9,
        "invrefcoco",
        {"box": BOX_101, "ref_id": 1, "ann_id": 101, "sent_id": 11},
    )


def test_refcoco_splits(refcoco_dir, coco_images):
    def texts(split: str) -> list[str]:
        return [e.turns[0].query for e in load_examples("refcoco", refcoco_dir, coco_images, split=split)]

    assert texts("val") == ["whole picture"]
    assert texts("test") == ["dog"]  # testA counts as test
    assert texts("testA") == ["dog"]
    assert texts("all") == ["Man in red", "left guy", "whole picture", "dog", "brown dog"]
    val = next(load_examples("refcoco", refcoco_dir, coco_images, split="val"))
    assert val.meta["box"] == (0, 0, 100, 100) and val.turns[0].answer == "{<0><0><100><100>}"


def test_refcoco_size_from_image_needs_image_root(refcoco_dir):
    with pytest.raises(FormatError) as err:
        list(load_examples("refcoco", refcoco_dir))
    assert str(err.value) == (
        f"{refcoco_dir / 'instances.json'}: image 25 gives no image size; "
        f"pass image_root so refcoco can read it from {IMAGE_25}"
    )


def test_refcoco_missing_image_file(refcoco_dir, tmp_path):
    with pytest.raises(
        FormatError, match=r"COCO_train2014_000000000025.jpg: image not found; image 25 of .*needs its size"
    ):
        list(load_examples("refcoco", refcoco_dir, tmp_path / "nowhere"))


def test_refcocog_defaults_to_umd_refs(refcoco_dir):
    with pytest.raises(FormatError) as err:
        load_examples("refcocog", refcoco_dir)
    assert str(err.value).startswith(
        f"{refcoco_dir / 'refs(umd).p'}: file not found; expected refer-toolkit refs"
    )
    # the unc refs can still be asked for
    assert len(list(load_examples("refcocog", refcoco_dir, split="val", split_by="unc"))) == 1


def test_refcoco_ref_with_unknown_annotation(refcoco_dir):
    with (refcoco_dir / "refs(unc).p").open("wb") as f:
        pickle.dump(
            [{"ref_id": 8, "ann_id": 999, "image_id": 9, "split": "train", "sentences": []}], f, protocol=2
        )
    with pytest.raises(
        FormatError, match=r"refs\(unc\).p: ref_id 8 has ann_id 999, absent from instances.json"
    ):
        load_examples("refcoco", refcoco_dir)


def test_refcoco_ref_missing_sentences(refcoco_dir):
    with (refcoco_dir / "refs(unc).p").open("wb") as f:
        pickle.dump([{"ref_id": 8, "ann_id": 101, "image_id": 9, "split": "train"}], f, protocol=2)
    with pytest.raises(FormatError, match="ref_id 8 has no 'sentences'"):
        load_examples("refcoco", refcoco_dir)


def test_refcoco_pickle_with_objects_is_refused(refcoco_dir):
    # a pickle that names a class could run code on load; the refs never need one
    with (refcoco_dir / "refs(unc).p").open("wb") as f:
        pickle.dump([OrderedDict(ref_id=1)], f, protocol=2)
    with pytest.raises(
        FormatError, match=r"not a readable pickle \(refusing to load collections.OrderedDict\)"
    ):
        load_examples("refcoco", refcoco_dir)


VG_CAR = TaskExample(
    "refer", [Turn("a red car", "{<10><10><20><30>}")], "VG_100K_2/1.jpg", "refvg",
    {"box": (10, 10, 20, 30), "region_id": 10, "image_id": 1},
)  # fmt: skip
VG_DOG = TaskExample(
    "refer", [Turn("white dog", "{<25><50><50><75>}")], "VG_100K/2.jpg", "refvg",
    {"box": (25, 50, 50, 75), "region_id": 20, "image_id": 2},
)  # fmt: skip


def test_refvg_keeps_small_regions_with_sizes_from_image_data():
    # the sky (800x300 px) is over MiniGPT-v2's 16384 px^2 limit; the empty phrase is skipped
    assert list(load_examples("refvg", FIXTURES / "vg" / "region_descriptions.json")) == [VG_CAR, VG_DOG]


def test_refvg_area_limit_can_be_lifted():
    examples = list(load_examples("refvg", FIXTURES / "vg" / "region_descriptions.json", max_region_area=0))
    assert [e.turns[0] for e in examples] == [
        VG_CAR.turns[0],
        Turn("the clear blue sky", "{<0><0><100><50>}"),
        VG_DOG.turns[0],
    ]


def test_invrefvg():
    first = next(load_examples("invrefvg", FIXTURES / "vg" / "region_descriptions.json"))
    assert (first.task, first.turns, first.dataset) == (
        "identify",
        [Turn("{<10><10><20><30>}", "a red car")],
        "invrefvg",
    )


def test_refvg_without_image_data_reads_images(tmp_path):
    shutil.copy(FIXTURES / "vg" / "region_descriptions.json", tmp_path / "region_descriptions.json")
    with pytest.raises(FormatError, match="no image_data.json beside it; pass image_root to locate image 1"):
        load_examples("refvg", tmp_path / "region_descriptions.json")
    images = tmp_path / "vg"
    make_image(images / "VG_100K_2" / "1.jpg", 800, 600)
    make_image(images / "VG_100K" / "2.jpg", 400, 400)
    assert list(load_examples("refvg", tmp_path / "region_descriptions.json", images)) == [VG_CAR, VG_DOG]


def test_refvg_named_image_data_must_exist(tmp_path):
    with pytest.raises(FormatError, match="image_data.json: file not found; expected VG image_data.json"):
        load_examples(
            "refvg", FIXTURES / "vg" / "region_descriptions.json", image_data=tmp_path / "image_data.json"
        )


def test_refvg_region_missing_coordinate(write_json):
    write_json(
        "image_data.json", [{"image_id": 1, "url": "https://x/VG_100K/1.jpg", "width": 10, "height": 10}]
    )
    path = write_json(
        "region_descriptions.json",
        [{"id": 1, "regions": [{"image_id": 1, "phrase": "a", "x": 1, "y": 1, "width": 2}]}],
    )
    with pytest.raises(FormatError, match=r"image entry 0 regions\[0\] has no 'height'"):
        load_examples("refvg", path)


FLICKR = FIXTURES / "flickr30k_entities"
MAN, SHIRT, HORSE = "{<10><10><50><90>}", "{<20><20><30><40>}", "{<0><0><100><100>}"
KIDS = "{<60><50><70><75>}<delim>{<80><50><90><75>}"  # two boxes for one phrase


def test_flickr_grounded_caption():
    examples = list(load_examples("flickr_grounded_caption", FLICKR))
    assert [(e.task, e.turns, e.image) for e in examples] == [
        ("grounding", [Turn(None, f"<p>A man</p> {MAN} in <p>a red shirt</p> {SHIRT} rides <p>a horse</p> {HORSE} .")], "1000.jpg"),
        ("grounding", [Turn(None, f"<p>The man</p> {MAN} and <p>two kids</p> {KIDS} watch something .")], "1000.jpg"),
    ]  # fmt: skip
    # the scene-only third caption has nothing to ground and is skipped
    assert examples[1].meta == {
        "image_id": "1000",
        "sentence": 2,
        "phrases": [
            {"phrase": "The man", "boxes": [(10, 10, 50, 90)]},
            {"phrase": "two kids", "boxes": [(60, 50, 70, 75), (80, 50, 90, 75)]},
        ],
        "caption": "The man and two kids watch something .",
    }


def test_flickr_caption_to_phrase():
    examples = list(load_examples("flickr_CaptionToPhrase", FLICKR))
    assert [(e.task, e.turns) for e in examples] == [
        ("detection", [Turn("A man in a red shirt rides a horse .", f"<p>A man</p> {MAN} <p>a red shirt</p> {SHIRT} <p>a horse</p> {HORSE}")]),
        ("detection", [Turn("The man and two kids watch something .", f"<p>The man</p> {MAN} <p>two kids</p> {KIDS}")]),
    ]  # fmt: skip


def test_flickr_object_to_phrase_once_per_phrase_and_image():
    examples = list(load_examples("flickr_ObjectToPhrase", FLICKR))
    assert [e.turns[0] for e in examples] == [
        Turn("A man", f"<p>A man</p> {MAN}"),
        Turn("a red shirt", f"<p>a red shirt</p> {SHIRT}"),
        Turn("a horse", f"<p>a horse</p> {HORSE}"),
        Turn("The man", f"<p>The man</p> {MAN}"),
        Turn("two kids", f"<p>two kids</p> {KIDS}"),
    ]
    assert examples[4].meta == {
        "image_id": "1000",
        "sentence": 2,
        "boxes": [(60, 50, 70, 75), (80, 50, 90, 75)],
    }
    assert {e.task for e in examples} == {"detection"}


def test_flickr_split_and_size_from_image(tmp_path):
    # 2000.xml has no <size>: its size comes from the image (100x200)
    with pytest.raises(FormatError, match="<size> gives no image size; pass image_root"):
        load_examples("flickr_grounded_caption", FLICKR, split="val")
    make_image(tmp_path / "2000.jpg", 100, 200)
    (example,) = load_examples("flickr_grounded_caption", FLICKR, tmp_path, split="val")
    assert example.turns == [Turn(None, "<p>A cat</p> {<10><5><50><25>} sleeps on a blue blanket .")]
    assert len(list(load_examples("flickr_grounded_caption", FLICKR, tmp_path, split="all"))) == 3


def test_flickr_malformed_phrase_markup(tmp_path):
    root = tmp_path / "flickr"
    shutil.copytree(FLICKR, root)
    (root / "Sentences" / "1000.txt").write_text("[/EN#18/people A man rides .\n")
    with pytest.raises(
        FormatError, match=r"1000.txt: line 1 has an unclosed or malformed \[/EN#id/type words\] phrase"
    ):
        load_examples("flickr_grounded_caption", root)


def test_flickr_bad_box_coordinate(tmp_path):
    root = tmp_path / "flickr"
    shutil.copytree(FLICKR, root)
    xml = root / "Annotations" / "1000.xml"
    xml.write_text(xml.read_text().replace("<xmin>51</xmin>", "<xmin>left</xmin>"))
    with pytest.raises(FormatError, match="1000.xml: object 0 <xmin> is 'left'; expected a pixel coordinate"):
        load_examples("flickr_grounded_caption", root)


def test_flickr_missing_split_list(tmp_path):
    with pytest.raises(FormatError, match="test.txt: file not found; expected the test image-id list"):
        load_examples("flickr_grounded_caption", FLICKR, split="test")
