"""Typed source specs (data_specs/sources/*.yaml): where an image-text source's URL list lives,
how to read it, and how img2dataset downloads it; knobs carry img2dataset's own parameter names.
`vlmpipe ingest SPEC` runs one, `vlmpipe spec validate SPEC` checks one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from data_specs.loader import Seed, SpecModel, load_spec
from data_specs.registry import PRESETS, SOURCE_KINDS, Name

InputFormat = Literal["parquet", "csv", "tsv", "json", "jsonl", "txt"]
Interpolation = Literal["nearest", "linear", "bilinear", "cubic", "bicubic", "area", "lanczos", "lanczos4"]
# Kinds whose published format the converters read themselves (see tasks/ingest/convert.py).
CONVERTED_KINDS = tuple(name for name, kind in SOURCE_KINDS.items() if kind.converted)


class ShapesWorldSpec(SpecModel):
    """The embedded synthetic source: scenes generated from a seed, served on a loopback port."""

    num_train: int = Field(ge=1, description="Training scenes.")
    num_heldout: int = Field(
        0,
        ge=0,
        description="Held-out scenes (split 'heldout', for evaluation): their layouts (cells, colours, "
        "shapes) never occur in training.",
    )
    num_heldout_novel: int = Field(
        0,
        ge=0,
        description="Scenes of split 'heldout_novel': each has a colour-shape pair that no train or "
        "heldout scene has (yellow triangle, blue circle), a harder compositional test.",
    )
    seed: Seed = Field(0, description="Scenes depend only on (seed, split, index).")
    canvas_size: int = Field(64, ge=12, description="Side of the rendered square canvas in pixels.")
    max_shapes: int = Field(3, ge=1, le=9, description="Each scene has 1..max_shapes shapes.")


class FeatureCacheSpec(SpecModel):
    """Frozen vision encoder + Q-Former outputs, computed once per shard after the download, so a
    stage that freezes both towers reads them instead of running the vision tower every step
    (a stage's `frozen_features`).

    Cost on disk: queries x Q-Former width x bytes per value per image. For the TinyGPT-V presets
    (32 x 768) that is 48 KiB per image in float16/bfloat16, 51 GB per million images (96 KiB and
    103 GB in float32): about five times a 224 px jpg at quality 95 (~10 KB). Cost to make: one
    forward of ViT-g and the Q-Former per image (about 0.5 TFLOP at 224 px, 2 at 448 px). The cache
    is valid only for the exact tower weights and resolution it was made with (its folder name
    carries both); a stage refuses any other.
    """

    enabled: bool = Field(True, description="Compute the cache after ingest.")
    preset: Name(PRESETS, "model preset") = Field(  # type: ignore[valid-type]
        "tiny", description="Model preset whose frozen towers produce the features."
    )
    pretrained: bool = Field(
        False,
        description="Towers with the preset's published weights (needs the hub); "
        "false: random towers from `seed` (tests, demo).",
    )
    seed: Seed = Field(0, description="Seed of the random towers when pretrained is false.")
    image_size: int | None = Field(
        None,
        gt=0,
        description="Resolution fed to the towers; default: the preset's. "
        "Tower compute grows with its square.",
    )
    batch_size: int = Field(64, gt=0, description="Images per forward pass; memory grows with it.")
    dtype: Literal["float16", "bfloat16", "float32"] = Field(
        "float16", description="Storage and compute dtype; float16 halves the cache on disk."
    )
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu' or 'cuda'.")


class SparkSpec(SpecModel):
    """Where img2dataset's pyspark distributor runs (only with distributor: pyspark)."""

    master: str = Field("local[*]", description="Spark master URL, e.g. spark://host:7077 or yarn.")
    config: dict[str, str] = Field({}, description="Extra Spark settings, e.g. spark.executor.memory: 16G.")


class SourceSpec(SpecModel):
    """One image-text source and how to download it."""

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_-]*$", description="Identifier; pipelines and stages refer to it."
    )
    kind: Name(SOURCE_KINDS, "source kind") = Field(  # type: ignore[valid-type]
        description="; ".join(f"{name}: {kind.description}" for name, kind in SOURCE_KINDS.items()) + "."
    )
    description: str = Field("", description="Free text for people.")
    shapes_world: ShapesWorldSpec | None = Field(None, description="Required iff kind is shapes_world.")

    # where the URLs are (img2dataset names)
    url_list: Path | None = Field(
        None,
        description="File (or folder of files) with the URLs; relative to this "
        "spec's folder. Not used by shapes_world.",
    )
    input_format: InputFormat | None = Field(None, description="Format of url_list for kind url_list.")
    url_col: str = Field("url", description="Column with the URL (url_list kind).")
    caption_col: str | None = Field("caption", description="Column with the caption; null for none.")
    save_additional_columns: list[str] = Field([], description="Columns copied into every sample's .json.")

    # how images are written
    image_size: int = Field(
        256, gt=0, description="Target side in pixels; disk and decode time grow with its square."
    )
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = Field(
        "border",
        description="border: fit and pad to a square; center_crop: crop to a square; no: keep as is.",
    )
    resize_only_if_bigger: bool = Field(False, description="Never upscale small images.")
    upscale_interpolation: Interpolation = Field("lanczos", description="cv2 interpolation for upscaling.")
    downscale_interpolation: Interpolation = Field(
        "area", description="cv2 interpolation for downscaling (area avoids aliasing; nearest is fastest)."
    )
    encode_format: Literal["jpg", "png", "webp"] = Field(
        "jpg", description="jpg is smallest for photos; png is lossless (exact colours) and larger."
    )
    encode_quality: int = Field(
        95,
        ge=0,
        le=100,
        description="jpg/webp quality 0-100; for png the zlib "
        "compression level 0-9 (higher: smaller files, more CPU).",
    )
    skip_reencode: bool = Field(False, description="Keep the original bytes when no resize is needed.")
    extract_exif: bool = Field(False, description="Store EXIF in the metadata (costs CPU per image).")
    compute_hash: Literal["md5", "sha256", "sha512"] | None = Field(
        "sha256", description="Hash of the downloaded bytes stored per sample (dedup, provenance)."
    )

    # how the download runs
    processes_count: int = Field(2, ge=1, description="Download processes; about one per CPU core.")
    thread_count: int = Field(
        64,
        ge=1,
        description="Threads per process; latency-bound downloads want many "
        "(LAION runs use 64-256), each holds one image in memory.",
    )
    number_sample_per_shard: int = Field(
        10000,
        ge=1,
        description="URLs per shard; a shard is the unit of "
        "resume and retry, smaller shards lose less on a crash.",
    )
    timeout: float = Field(10, gt=0, description="Seconds per HTTP request before it counts as failed.")
    retries: int = Field(0, ge=0, description="Extra attempts per failed URL; each costs up to `timeout`.")
    max_shard_retry: int = Field(1, ge=0, description="Times img2dataset retries a shard that crashed.")
    user_agent_token: str | None = Field(
        "vlmpipe",
        description="Token added to the User-Agent; the token X-Robots-Tag directives are matched against.",
    )
    disallowed_header_directives: list[str] = Field(
        ["noai", "noimageai", "noindex", "noimageindex"],
        description="X-Robots-Tag directives that make an image unusable (counted, not downloaded).",
    )
    allowed_hosts: list[str] = Field(
        [],
        description="Fetch only from these hosts: names, *.suffix patterns, IP addresses or CIDR "
        "ranges; empty: any public host. A host named here may be a private address.",
    )
    denied_hosts: list[str] = Field([], description="Never fetch from these (same forms as allowed_hosts).")
    allow_private_addresses: bool | None = Field(
        None,
        description="Fetch from loopback, private, link-local and reserved addresses; default: only "
        "for shapes_world (served on loopback). Web sources resolve every host and refuse such "
        "addresses, so a URL list cannot reach this machine or its network.",
    )
    download_deadline_s: float = Field(
        60, gt=0, description="Seconds for a whole download (timeout bounds each socket read)."
    )
    max_download_bytes: int = Field(
        50_000_000, gt=0, description="Bytes one download may take; larger answers are dropped unread."
    )
    min_image_size: int = Field(0, ge=0, description="Drop images whose smaller side is below this.")
    max_image_area: float | None = Field(
        89_478_485,
        gt=0,
        description="Drop images whose header announces more pixels than this, before decoding them "
        "(decompression bombs; the default is PIL's own limit, ~89.5 MP); null: no limit.",
    )
    max_aspect_ratio: float | None = Field(
        None, gt=0, description="Drop images longer/shorter above this; null: no limit."
    )
    reject_truncated: bool = Field(
        True,
        description="Count JPEGs cut short in transfer as 'truncated image' "
        "(some decoders pass them with grey rows, others call them non-images).",
    )
    output_format: list[Literal["webdataset", "parquet"]] = Field(
        ["webdataset"],
        description="webdataset tars (always); add parquet for img2dataset's parquet output "
        "(images inside parquet) too, written from the validated tars.",
    )
    distributor: Literal["multiprocessing", "pyspark"] = Field(
        "multiprocessing", description="multiprocessing: this machine; pyspark: a Spark cluster (see spark)."
    )
    subjob_size: int = Field(1000, ge=1, description="Shards per Spark job (pyspark only).")
    spark: SparkSpec | None = Field(None, description="Spark session settings for distributor pyspark.")

    # what the ingest checks
    min_success_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Fail the ingest when fewer URLs than this "
        "share gave an image (a fresh CC12M gets 0.62-0.64).",
    )
    validate_decode: int = Field(8, ge=0, description="Images per shard decoded by the validation.")
    feature_cache: FeatureCacheSpec | None = Field(None, description="Optional frozen-feature cache.")

    @field_validator("url_list")
    @classmethod
    def _relative_to_spec(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        spec_path = (info.context or {}).get("spec_path")
        if value is not None and spec_path is not None and not value.is_absolute():
            return (Path(spec_path).parent / value).resolve()
        return value

    @field_validator("allow_private_addresses")
    @classmethod
    def _private_for_loopback_source(cls, value: bool | None, info: ValidationInfo) -> bool:
        return info.data.get("kind") == "shapes_world" if value is None else value

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        return "no" if value is False else value  # YAML 1.1 reads a bare `no` as false

    @field_validator("output_format", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("output_format")
    @classmethod
    def _webdataset_first(cls, value: list[str]) -> list[str]:
        if "webdataset" not in value:
            raise ValueError("must include webdataset (validation, the manifest and training read the tars)")
        return list(dict.fromkeys(value))

    # Cross-field rules are field validators (fields are validated in declaration order, and
    # SpecModel validates defaults), so an error names the field to fix, not "(top level)".
    @field_validator("shapes_world")
    @classmethod
    def _shapes_world_iff_kind(
        cls, value: ShapesWorldSpec | None, info: ValidationInfo
    ) -> ShapesWorldSpec | None:
        kind = info.data.get("kind")
        if kind == "shapes_world" and value is None:
            raise ValueError("kind shapes_world needs this block (num_train, num_heldout, seed, ...)")
        if kind not in (None, "shapes_world") and value is not None:
            raise ValueError(f"only applies to kind shapes_world, not {kind}")
        return value

    @field_validator("url_list", mode="after")
    @classmethod
    def _url_list_for_web_kinds(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        kind = info.data.get("kind")
        if kind == "shapes_world" and value is not None:
            raise ValueError("kind shapes_world generates its own URL list; remove this field")
        if kind not in (None, "shapes_world") and value is None:
            raise ValueError(f"kind {kind} needs the file (or folder) with the URLs")
        return value

    @field_validator("input_format")
    @classmethod
    def _input_format_for_url_list(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind == "url_list" and value is None:
            raise ValueError("kind url_list needs it: parquet, csv, tsv, json, jsonl or txt")
        if kind in CONVERTED_KINDS and value is not None:
            raise ValueError(f"kind {kind} has a fixed published format; remove this field")
        return value

    @field_validator("encode_quality")
    @classmethod
    def _png_level(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("encode_format") == "png" and value > 9:
            raise ValueError(f"for encode_format png this is the zlib level 0-9, got {value}")
        return value

    @field_validator("spark")
    @classmethod
    def _spark_for_pyspark(cls, value: SparkSpec | None, info: ValidationInfo) -> SparkSpec | None:
        if info.data.get("distributor") == "pyspark" and value is None:
            return SparkSpec()
        return value

    def img2dataset_options(self) -> dict[str, Any]:
        """The knobs that go to img2dataset.download unchanged."""
        names = (
            "image_size",
            "resize_mode",
            "resize_only_if_bigger",
            "upscale_interpolation",
            "downscale_interpolation",
            "encode_format",
            "encode_quality",
            "skip_reencode",
            "extract_exif",
            "compute_hash",
            "processes_count",
            "thread_count",
            "number_sample_per_shard",
            "timeout",
            "retries",
            "max_shard_retry",
            "user_agent_token",
            "min_image_size",
            "subjob_size",
        )
        options: dict[str, Any] = {n: getattr(self, n) for n in names}
        # img2dataset reads an empty list as "check no directive" (and None as its own default list)
        options["disallowed_header_directives"] = list(self.disallowed_header_directives)
        options["max_image_area"] = self.max_image_area if self.max_image_area is not None else float("inf")
        options["max_aspect_ratio"] = (
            self.max_aspect_ratio if self.max_aspect_ratio is not None else float("inf")
        )
        options["distributor"] = self.distributor
        return options

    def fetch_policy(self) -> dict[str, Any]:
        """What tasks/ingest/fetch.py's FetchPolicy may fetch and for how long."""
        return {
            "allow_private_addresses": bool(self.allow_private_addresses),
            "allowed_hosts": list(self.allowed_hosts),
            "denied_hosts": list(self.denied_hosts),
            "deadline_s": self.download_deadline_s,
            "max_bytes": self.max_download_bytes,
        }


def check_source_files(source: SourceSpec, path: str | Path) -> None:
    """A web source's URL list must be there (the embedded source makes its own)."""
    from data_specs.loader import SpecError

    if source.url_list is not None and not source.url_list.exists():
        raise SpecError(path, "url_list", f"no such file or folder {source.url_list}")


def splits_of(source: SourceSpec) -> tuple[str, ...] | None:
    """The splits a source is known to have before it is ingested (None: known only after)."""
    if source.shapes_world is None:
        return None
    cfg = source.shapes_world
    return (
        ("train",)
        + (("heldout",) if cfg.num_heldout else ())
        + (("heldout_novel",) if cfg.num_heldout_novel else ())
    )


def load_source_spec(path: str | Path) -> SourceSpec:
    return load_spec(SourceSpec, path)
