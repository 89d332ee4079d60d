"""Fashion-MNIST: the four IDX files of Zalando's 70,000 28x28 greyscale product photos, 10 classes.

Debian's `dataset-fashion-mnist` installs them in /usr/share/datasets/fashion-mnist. The official split is
kept: every t10k item is fixed to the `test` split (Record.split); the 60,000 train items are drawn into the
other splits by the usual group hash. Images stay inside the IDX file: a Record points at it with
`image_index`, and the shard writer reads the pixels from there.

Derived label fields (from the class alone, so they are exact): `group` (top, bottom, dress, footwear, bag)
and the multi-label `worn` (body regions a class covers: a dress is both upper and lower body).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from fashiontune.records import Record, Skip

from .base import Source, SourceError, skip
from .idx import IMAGES, LABELS, parse, read_bytes, read_idx

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
GROUP = {"T-shirt/top": "top", "Trouser": "bottom", "Pullover": "top", "Dress": "dress", "Coat": "top",
         "Sandal": "footwear", "Shirt": "top", "Sneaker": "footwear", "Bag": "bag", "Ankle boot": "footwear"}
WORN = {"top": ["upper-body"], "bottom": ["lower-body"], "dress": ["lower-body", "upper-body"], "footwear": ["feet"],
        "bag": ["carried"]}
INSTALLED = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
# (file prefix, fixed split: "" = drawn by the group hash)
PARTS = (("train", ""), ("t10k", "test"))


def installed_dir() -> Path | None:
    """The installed Fashion-MNIST: $FASHIONTUNE_FMNIST_DIR, else Debian's folder; None if neither has the files."""
    d = Path(os.environ.get("FASHIONTUNE_FMNIST_DIR") or INSTALLED)
    return d if (d / "t10k-labels-idx1-ubyte.gz").is_file() or (d / "t10k-labels-idx1-ubyte").is_file() else None


def caption(label: str) -> str:
    """'T-shirt/top' -> 'a photo of a T-shirt/top.': the label in CLIP's first prompt template (the eval's
    default too), so zero-shot after caption training asks the question the captions taught."""
    return f"a photo of a {label}."


class FashionMnistSource(Source):
    name = "fashion-mnist"
    required: ClassVar[dict[str, str]] = {f"{p}-{k}": f"IDX {k.split('-')[0]} file (gzipped or not)" for p, _ in PARTS
                for k in ("images-idx3-ubyte", "labels-idx1-ubyte")}

    def find(self, root: Path, stem: str) -> Path:
        for p in (root / f"{stem}.gz", root / stem):
            if p.is_file():
                return p
        raise SourceError(f"fashion-mnist: neither {root / stem}.gz nor {root / stem} exists. {self.expect()} "
                          "(`apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist.)")

    def check(self, input_dir: Path) -> Path:
        root = Path(input_dir)
        if not root.is_dir():
            raise SourceError(f"fashion-mnist: input {root} is not a directory. {self.expect()}")
        return root

    def iter_records(self, input_dir: Path) -> Iterator[Record | Skip]:
        root = self.check(input_dir)
        for prefix, split in PARTS:
            images = self.find(root, f"{prefix}-images-idx3-ubyte")
            labels_path = self.find(root, f"{prefix}-labels-idx1-ubyte")
            # the whole file is checked here (magic, size, truncation): a bad one fails before any shard
            n = len(parse(read_bytes(images), images, IMAGES))
            labels = read_idx(labels_path, LABELS)
            if len(labels) != n:
                raise SourceError(f"fashion-mnist: {labels_path} holds {len(labels)} labels but {images} holds {n} "
                                  "images: the two files must come from the same download; get both again.")
            for i, c in enumerate(labels.tolist()):
                rid = f"{prefix}-{i:05d}"
                if c >= len(CLASSES):
                    yield skip(rid, f"{labels_path}:{i}", "unparsable_row",
                               f"label {c} is not a Fashion-MNIST class (0-9); the labels file is damaged")
                    continue
                label = CLASSES[c]
                yield Record(id=rid, group_id=rid, image_path=images, text=caption(label), split=split,
                             image_index=i, labels={"label": label, "group": GROUP[label], "worn": WORN[GROUP[label]]},
                             meta={"file": images.name, "index": i})


def write_subset(src: Path, dst: Path, n_train: int, n_test: int | None = None) -> Path:
    """The first `n_train` train and `n_test` (None = all) t10k images of the download at `src`, as a smaller
    download at `dst` (same four files): the CPU-sized corpora of the demo and the real-data tests."""
    from .idx import write_idx

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    source = FashionMnistSource()
    for (prefix, _), n in zip(PARTS, (n_train, n_test)):
        for kind, magic in (("images-idx3-ubyte", IMAGES), ("labels-idx1-ubyte", LABELS)):
            array = read_idx(source.find(src, f"{prefix}-{kind}"), magic)
            write_idx(dst / f"{prefix}-{kind}.gz", array[:n])
    return dst
