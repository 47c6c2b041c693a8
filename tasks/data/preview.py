"""`vlmpipe spec preview`: what a stage's mixture really gives before a GPU hour is spent.

Draws N samples through the same path training uses (mixture -> template -> tokens -> packing)
and reports each dataset's realized share next to its spec share, the token budget, packing
efficiency (non-pad tokens over all tokens), images per pack and a few rendered samples.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from data_specs.stages import StageSpec, load_stage_spec
from model.tokenizer import IGNORE_INDEX
from tasks.data.packing import Batch


def render_tokens(batch: Batch, row: int, tokenizer, image_token_id: int) -> list[str]:
    """The samples of one packed row as the model sees them; answers (the loss) in [[ ]]."""
    out = []
    ids, labels, segs = (
        batch.input_ids[row].tolist(),
        batch.labels[row].tolist(),
        batch.segment_ids[row].tolist(),
    )
    for seg in sorted(set(segs) - {0}):
        idx = [i for i, s in enumerate(segs) if s == seg]
        n_image = sum(ids[i] == image_token_id for i in idx)
        # split the sample into runs of prompt / answer tokens, image tokens left out
        pieces: list[tuple[bool, list[int]]] = []
        for i in idx:
            if ids[i] == image_token_id:
                continue
            is_answer = labels[i] != IGNORE_INDEX
            if not pieces or pieces[-1][0] != is_answer:
                pieces.append((is_answer, []))
            pieces[-1][1].append(ids[i])
        text = [f"[[{tokenizer.decode(t)}]]" if ans else tokenizer.decode(t) for ans, t in pieces]
        rendered = "".join(text).replace("<Img></Img>", f"<Img><image x {n_image}></Img>")
        out.append(rendered)
    return out


def preview_stage(
    stage: StageSpec,
    data_dirs: dict[str, str],
    *,
    model_spec=None,
    samples: int = 5000,
    show: int = 3,
    packing: bool | None = None,
) -> dict[str, Any]:
    from data_specs.pipelines import ModelSpec
    from model.image_processing import ImagePreprocessor
    from model.presets import get_preset
    from model.tokenizer import IMAGE_TOKEN, load_tokenizer
    from tasks import shapes_world
    from tasks.data.stage_data import StageData, build_pools

    model_spec = model_spec or ModelSpec(preset="tiny")
    preset = get_preset(model_spec.preset)
    corpus = shapes_world.tokenizer_corpus() if preset.has_tiny_tokenizer else None
    tokenizer = load_tokenizer(preset, corpus=corpus)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    pools = build_pools(stage, data_dirs)
    data = StageData(
        stage,
        pools,
        tokenizer,
        image_token_id=image_token_id,
        num_query_tokens=preset.num_query_tokens,
        preprocess=ImagePreprocessor.from_preset(preset),
        packing=packing,
    )
    counts: Counter = Counter()
    lengths: dict[int, list[int]] = {}
    real = capacity = images = rows = drawn = 0
    shown: list[str] = []
    original_encode = data.encode

    def encode(ref):
        sample = original_encode(ref)
        lengths.setdefault(sample.dataset, []).append(len(sample))
        return sample

    data.encode = encode  # count sample lengths on the way in
    while drawn < samples:
        batch = data.packer.next_batch(lambda: data.encode(next(data.sampler)))
        counts.update(batch.datasets)
        drawn += batch.num_samples
        real, capacity = real + batch.real_tokens, capacity + batch.capacity
        images += len(batch.images)
        rows += batch.input_ids.shape[0]
        if len(shown) < show:
            shown += render_tokens(batch, 0, tokenizer, image_token_id)[: show - len(shown)]
    weights = sum(p.spec.weight for p in pools)
    datasets = []
    for i, pool in enumerate(pools):
        spec_share = (
            data.sampler.shares[i] if stage.mixture.semantics == "batches" else pool.spec.weight / weights
        )
        lens = lengths.get(i, [0])
        datasets.append(
            {
                "name": pool.spec.name,
                "task": pool.spec.task,
                "examples": len(pool),
                "spec_share": spec_share,
                "realized_share": counts[i] / drawn,
                "mean_tokens": sum(lens) / len(lens),
                "max_tokens": max(lens),
            }
        )
    return {
        "stage": stage.name,
        "samples": drawn,
        "packing": data.packer.packing,
        "packing_efficiency": real / capacity,
        "images_per_pack": images / rows,
        "samples_per_pack": drawn / rows,
        "tokens_per_step": stage.schedule.batch_size * stage.max_len,
        "stage_tokens": stage.schedule.batch_size * stage.max_len * stage.schedule.steps,
        "truncated_samples": data.truncated,
        "losses": ([] if not stage.autoregressive else ["next-token on answers"])
        + (
            []
            if stage.contrastive is None
            else [f"{stage.contrastive.loss} (image vs. all text of its sample)"]
        ),
        "datasets": datasets,
        "rendered": shown,
    }


def format_preview(p: dict[str, Any]) -> str:
    lines = [
        f"stage {p['stage']}: {p['samples']} samples drawn, packing {'on' if p['packing'] else 'off'}",
        f"{'dataset':<24}{'task':<22}{'spec':>8}{'realized':>10}{'mean tok':>10}{'max tok':>9}",
    ]
    for d in p["datasets"]:
        lines.append(
            f"{d['name']:<24}{d['task']:<22}{d['spec_share']:>8.2%}{d['realized_share']:>10.2%}"
            f"{d['mean_tokens']:>10.1f}{d['max_tokens']:>9}"
        )
    lines += [
        f"packing efficiency {p['packing_efficiency']:.3f} (non-pad tokens / all tokens)",
        f"per pack: {p['samples_per_pack']:.2f} samples, {p['images_per_pack']:.2f} images",
        f"token budget: {p['tokens_per_step']} tokens/step, {p['stage_tokens']:,} in the stage; "
        f"{p['truncated_samples']} sample(s) truncated at max_len",
        f"losses: {' + '.join(p['losses'])}",
        "rendered samples (answers, where the next-token loss is taken, in [[ ]]):",
    ]
    lines += [f"  {i + 1}. {text!r}" for i, text in enumerate(p["rendered"])]
    return "\n".join(lines)


def preview_ingested(
    stage_spec: str | Path, pipeline_spec: str | Path, *, home: str | Path | None, samples: int, show: int
) -> dict[str, Any]:
    """Preview a stage on the sources of `pipeline_spec` as ingested under `home` (tasks/state.py);
    a source not ingested yet is a SpecError naming the command that ingests it."""
    from data_specs.loader import SpecError
    from data_specs.pipelines import load_pipeline
    from tasks.state import source_dir, vlmpipe_home

    stage = load_stage_spec(stage_spec)
    pipeline = load_pipeline(pipeline_spec)
    home_dir = vlmpipe_home(home)
    data_dirs = {}
    for i, ds in enumerate(stage.mixture.datasets):
        if ds.source is None:
            continue
        folder = source_dir(ds.source, home_dir)
        if not (folder / "manifest.json").is_file():
            spec_path = pipeline.source_paths.get(ds.source)
            hint = f"vlmpipe ingest {spec_path} --output {folder}" if spec_path else "ingest it first"
            raise SpecError(
                stage_spec,
                f"mixture.datasets[{i}].source",
                f"source {ds.source!r} is not ingested under {home_dir}; run: {hint}",
            )
        data_dirs[ds.source] = str(folder)
    return preview_stage(stage, data_dirs, model_spec=pipeline.spec.model, samples=samples, show=show)
