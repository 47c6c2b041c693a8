"""Random access to the records of an ingested source, in bounded memory.

A stage must not hold a source in memory: LAION's stage-1 share is millions of records. The first
time a stage reads an ingested source, one sequential pass over its webdataset shards writes an
index beside them (`<source>/index/<manifest digest>/`):

    images.npy        int64 [N, 4]  shard number, byte offset and size of the image member, and the
                                    sample's position in its shard (the feature cache's row)
    meta.jsonl        one JSON line per record: key, caption, annotations, split (no image)
    meta_offsets.npy  int64 [N + 1] where each line starts
    split-K.npy       int64 record numbers of split K (names in index.json)
    index.json        written last: the shards it covers, counts, split names

Every array is opened memory-mapped, so what a stage keeps resident does not grow with the
source; an image is read with one seek into its tar when it is needed. Records keep the order
`read_records` gives (manifest order, then sample key). The index is keyed by the manifest's shard
digests: a re-ingested source gets a new one, and a half-written index (a killed build) is never
read, because the folder is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import threading
from array import array
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tasks.ingest.read import IMAGE_EXTS, load_manifest, record_text

INDEX_VERSION = 1

# Records served from memory instead of shards (tests and previews of generated data): a stage whose
# data dir is a name registered here reads these lists. Keys: (name, split).
MEMORY_SOURCES: dict[tuple[str, str], list[dict]] = {}

_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's rule: key up to the first dot


def _manifest_digest(manifest: dict) -> str:
    h = hashlib.sha256(f"v{INDEX_VERSION}".encode())
    for shard in manifest["shards"]:
        h.update(f"{shard['path']}:{shard.get('sha256', '')}\n".encode())
    return h.hexdigest()[:16]


def _samples(tar_path: Path):
    """(key, {ext: TarInfo}, tar) for each sample of a shard, sorted by key (read_records' order)."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            match = _KEY_EXT.match(member.name)
            if match is None:
                continue
            groups.setdefault(match.group(1), {})[match.group(2).lower()] = member
        for key in sorted(groups):
            yield key, groups[key], tar


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    return handle.read() if handle is not None else b""


def build_index(data_dir: str | Path, log=None) -> Path:
    """Write (or find) the index of an ingested source; returns its folder."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    folder = data_dir / "index" / _manifest_digest(manifest)
    if (folder / "index.json").is_file():
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        locations = array("q")
        offsets = array("q", [0])
        splits: dict[str, array] = {}
        annotated = False
        with open(tmp / "meta.jsonl", "wb") as meta_file:
            for shard_no, shard in enumerate(manifest["shards"]):
                tar_path = data_dir / shard["path"]
                for position, (key, members, tar) in enumerate(_samples(tar_path)):
                    image_ext = next((e for e in IMAGE_EXTS if e in members), None)
                    if image_ext is None:
                        raise ValueError(f"{tar_path}: sample {key} has no image ({', '.join(IMAGE_EXTS)})")
                    meta = json.loads(_read_member(tar, members["json"])) if "json" in members else {}
                    txt = _read_member(tar, members["txt"]) if "txt" in members else None
                    record = record_text(key, meta, txt)
                    record.pop("url")
                    annotated = annotated or "shapes" in record["annotations"]
                    line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
                    meta_file.write(line)
                    offsets.append(offsets[-1] + len(line))
                    image = members[image_ext]
                    number = len(offsets) - 2
                    locations.extend((shard_no, image.offset_data, image.size, position))
                    splits.setdefault(record["split"], array("q")).append(number)
        count = len(offsets) - 1
        np.save(tmp / "images.npy", np.frombuffer(locations, dtype=np.int64).reshape(count, 4))
        np.save(tmp / "meta_offsets.npy", np.frombuffer(offsets, dtype=np.int64))
        names = sorted(splits)
        for i, name in enumerate(names):
            np.save(tmp / f"split-{i}.npy", np.frombuffer(splits[name], dtype=np.int64))
        index = {
            "version": INDEX_VERSION,
            "source": manifest.get("source"),
            "shards": [s["path"] for s in manifest["shards"]],
            "records": count,
            "splits": {
                name: {"file": f"split-{i}.npy", "records": len(splits[name])} for i, name in enumerate(names)
            },
            "annotated": annotated,
        }
        (tmp / "index.json").write_text(json.dumps(index, indent=1))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same index first: theirs is identical
            if not (folder / "index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if log is not None:
        log(f"indexed {data_dir}: {count} records in {len(manifest['shards'])} shards -> {folder}")
    return folder


class SourceRecords:
    """The records of one split of an ingested source (or of a MEMORY_SOURCES entry)."""

    def __init__(self, data_dir: str | Path, split: str = "train", *, log=None):
        self.data_dir, self.split = str(data_dir), split
        memory = MEMORY_SOURCES.get((self.data_dir, split))
        self._memory = memory
        self._tars: dict[int, Any] = {}
        self._pid = os.getpid()
        if memory is not None:
            self.annotated = any("shapes" in (r.get("annotations") or {}) for r in memory)
            self.digest = hashlib.sha256(f"memory:{self.data_dir}:{len(memory)}".encode()).hexdigest()[:16]
            self._ids = None
            return
        self.folder = build_index(data_dir, log=log)
        self.digest = self.folder.name
        index = json.loads((self.folder / "index.json").read_text())
        self.annotated = bool(index["annotated"])
        self.shards = [Path(data_dir) / p for p in index["shards"]]
        entry = index["splits"].get(split)
        if entry is None:
            self._ids = np.zeros(0, dtype=np.int64)
        else:
            self._ids = np.load(self.folder / entry["file"], mmap_mode="r")
        self._images = np.load(self.folder / "images.npy", mmap_mode="r")
        self._offsets = np.load(self.folder / "meta_offsets.npy", mmap_mode="r")
        self._meta_path = self.folder / "meta.jsonl"
        self._meta_file = None

    def __len__(self) -> int:
        return len(self._memory) if self._memory is not None else len(self._ids)

    def __getstate__(self) -> dict:  # file handles stay behind when sent to a loader worker
        state = dict(self.__dict__)
        state["_tars"], state["_meta_file"] = {}, None
        return state

    def _own_files(self) -> None:
        if self._pid != os.getpid():  # a forked loader worker opens its own handles
            self._tars, self._meta_file, self._pid = {}, None, os.getpid()

    def meta(self, i: int) -> dict:
        """Record i of the split without its image: key, caption, annotations, split."""
        if self._memory is not None:
            return self._memory[i]
        self._own_files()
        number = int(self._ids[i])
        start, stop = int(self._offsets[number]), int(self._offsets[number + 1])
        if self._meta_file is None:
            self._meta_file = open(self._meta_path, "rb")  # noqa: SIM115 - kept open for the stage
        self._meta_file.seek(start)
        line = self._meta_file.read(stop - start)
        try:
            return json.loads(line)
        except ValueError:
            raise ValueError(
                f"{self._meta_path}: record {number} is not the JSON the index wrote (the file changed); "
                f"delete {self.folder} to rebuild the index"
            ) from None

    def image(self, i: int) -> Image.Image:
        """Record i's image, decoded to RGB."""
        if self._memory is not None:
            return self._memory[i]["image"]
        self._own_files()
        shard, offset, size, _ = (int(v) for v in self._images[int(self._ids[i])])
        handle = self._tars.get(shard)
        if handle is None:
            handle = self._tars[shard] = open(self.shards[shard], "rb")  # noqa: SIM115
        handle.seek(offset)
        data = handle.read(size)
        if len(data) != size:
            raise ValueError(f"{self.shards[shard]}: image of record {i} is cut short (the shard changed?)")
        try:
            return Image.open(io.BytesIO(data)).convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(
                f"{self.shards[shard]}: image of record {i} at byte {offset} does not decode "
                f"({type(exc).__name__}); the shard changed after ingest: ingest the source again"
            ) from None

    def location(self, i: int) -> tuple[str, int]:
        """(shard file stem, position in the shard) of record i: its row in the feature cache."""
        if self._memory is not None:
            raise ValueError(f"{self.data_dir}: records held in memory have no feature cache")
        shard, _, _, position = (int(v) for v in self._images[int(self._ids[i])])
        return self.shards[shard].stem, position
