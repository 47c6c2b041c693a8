"""`vlmpipe chat`, `vlmpipe generate` and `vlmpipe export` on a real tiny checkpoint (LoRA non-zero):
the same greedy answer through every door, 8-bit and 4-bit language models, a merged export that
answers as the checkpoint does, and one-line errors for bad input with nothing half-written."""

import json
import struct
import subprocess
import sys
import zlib

import pytest

from tests.pipelines import ROOT, env_for

DEMO = ROOT / "data_specs" / "pipelines" / "shapes_demo.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The demo's tiny model with random non-zero LoRA updates, saved as a stage checkpoint."""
    import torch

    from data_specs.pipelines import load_pipeline
    from model.build import build_model
    from model.checkpoint import save_checkpoint
    from tasks import shapes_world

    rp = load_pipeline(DEMO)
    built, _ = build_model(rp.spec.model, tokenizer_corpus=shapes_world.tokenizer_corpus, log=lambda _m: None)
    with torch.no_grad():
        for name, param in built.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    save_checkpoint(
        folder,
        built.model,
        ["projection", "lora"],
        tokenizer=built.tokenizer,
        metadata={"image_size": built.preset.image_size, "preset": built.preset.name},
    )
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from tasks import shapes_world

    folder = tmp_path_factory.mktemp("images")
    for scene in shapes_world.generate_scenes(3, 0, seed=4):
        (folder / f"{scene.key}.png").write_bytes(shapes_world.png_bytes(scene))
    return folder


def vlmpipe(*args, home):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *map(str, args)],
        cwd=ROOT,
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=600,
    )


def chat(path, image, *extra, home, prompt="what colour is the shape at the top?"):
    proc = vlmpipe(
        "chat",
        path,
        "--image",
        image,
        "--prompt",
        prompt,
        "--task",
        "vqa",
        "--pipeline",
        DEMO,
        *extra,
        home=home,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "", proc.stderr  # nothing but the answer
    assert proc.stdout.endswith("\n") and proc.stdout.strip(), proc.stdout
    # the answer as generated: an untrained model (the fixture's) may well write several lines
    return proc.stdout[:-1]


def test_chat_generate_and_the_merged_export_give_the_same_greedy_answers(checkpoint, images, tmp_path):
    first = sorted(images.iterdir())[0]
    answer = chat(checkpoint, first, home=tmp_path)
    assert answer.strip()
    short = chat(checkpoint, first, "--max-new-tokens", "3", home=tmp_path)
    assert answer.startswith(short.strip()) and len(short) < len(answer)  # greedy: the same start

    # a folder: every image asked the same prompt, rows written as JSONL
    out = tmp_path / "answers.jsonl"
    proc = vlmpipe(
        "generate",
        checkpoint,
        "--input",
        images,
        "--prompt",
        "what colour is the shape at the top?",
        "--task",
        "vqa",
        "--output",
        out,
        "--pipeline",
        DEMO,
        home=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == sorted(p.name for p in images.iterdir())
    assert rows[0]["answer"] == answer and rows[0]["task"] == "vqa"

    # JSONL requests: image paths relative to the file, a text-only request, tasks per line
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        json.dumps(
            {
                "id": "a",
                "image": f"{images.name}/{first.name}",
                "prompt": "what colour is the shape at the top?",
                "task": "vqa",
            }
        )
        + "\n\n"
        + json.dumps({"id": "b", "prompt": "say something"})
        + "\n"
    )
    (tmp_path / images.name).symlink_to(images)
    out2 = tmp_path / "answers2.jsonl"
    proc = vlmpipe(
        "generate", checkpoint, "--input", requests, "--output", out2, "--pipeline", DEMO, home=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out2.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["answer"] == answer and rows[1]["task"] == "text_instruction"

    # the merged export answers as the checkpoint did, with no pipeline spec needed
    export = tmp_path / "export"
    proc = vlmpipe("export", checkpoint, "--out", export, "--pipeline", DEMO, home=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (export / "language_model" / "config.json").is_file()
    proc = vlmpipe(
        "chat",
        export,
        "--image",
        first,
        "--prompt",
        "what colour is the shape at the top?",
        "--task",
        "vqa",
        home=tmp_path,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == answer, proc.stderr[-2000:]
    # exporting again into the now non-empty folder is refused and leaves it as it was
    before = sorted(p.relative_to(export) for p in export.rglob("*"))
    proc = vlmpipe("export", checkpoint, "--out", export, "--pipeline", DEMO, home=tmp_path)
    assert proc.returncode == 2 and "not an empty folder" in proc.stderr
    assert sorted(p.relative_to(export) for p in export.rglob("*")) == before


@pytest.mark.parametrize(("precision", "towers"), [("bf16", "fp32"), ("8bit", "lm"), ("4bit", "lm")])
def test_chat_answers_with_a_lower_precision_language_model(checkpoint, images, tmp_path, precision, towers):
    first = sorted(images.iterdir())[0]
    answer = chat(checkpoint, first, "--precision", precision, "--towers", towers, home=tmp_path)
    assert answer.strip()


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_bad_input_is_one_line_with_exit_2_and_no_output_file(checkpoint, images, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(20000, 20000))
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    out = tmp_path / "out.jsonl"
    lines = tmp_path / "bad.jsonl"
    lines.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": 3}) + "\n")
    wrong_task = tmp_path / "task.jsonl"
    wrong_task.write_text(json.dumps({"prompt": "ok", "task": "dance"}) + "\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    cases = [
        (
            ("chat", checkpoint, "--image", bomb, "--prompt", "hi"),
            "--image: image larger than 89478485 pixels",
        ),
        (("chat", checkpoint, "--image", not_image, "--prompt", "hi"), "--image: not a readable image"),
        (("chat", checkpoint, "--image", images / "missing.png", "--prompt", "hi"), "no such file"),
        (("chat", tmp_path, "--prompt", "hi"), "neither a vlmpipe checkpoint nor a merged export"),
        (("chat", checkpoint, "--prompt", "hi", "--task", "dance"), "--task: unknown task 'dance'"),
        (("chat", checkpoint, "--prompt", "hi", "--top-p", "0"), "--top-p must be in (0, 1]"),
        (("generate", checkpoint, "--input", lines, "--output", out), f"{lines}:2: field prompt"),
        (("generate", checkpoint, "--input", wrong_task, "--output", out), f"{wrong_task}:1: field task"),
        (("generate", checkpoint, "--input", broken, "--output", out), f"{broken}:1: not JSON"),
        (("generate", checkpoint, "--input", images, "--output", out), "--prompt: required"),
    ]
    for args, message in cases:
        proc = vlmpipe(*args, "--pipeline", DEMO, home=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr[-1500:])
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, (message, proc.stderr)
        assert not out.exists() and not list(tmp_path.glob(".out.jsonl.tmp-*"))
