"""The one in-memory form every caption format is read into."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class CaptionedImage:
    """One image and all of its reference captions.

    `source_id` is the image's id in its caption file where the format has one
    (COCO's `id`, Karpathy's `cocoid`): COCO results files name images by it.
    """

    path: Path
    captions: list[str]
    split: str | None = None
    source_id: int | str | None = None

    @property
    def name(self) -> str:
        return self.path.name


@dataclasses.dataclass
class CaptionDataset:
    """Images with captions, as read from any supported caption file.

    `images` keeps the order of the caption file; `split` is `None` until a
    split list or `kcap.data.splits.assign_splits` sets it. `excluded` holds
    images the file has captions for but that official split lists leave out
    (Flickr8k images in none of its lists): they are not in `images`, so no
    split, random or given, ever holds them.
    """

    images: list[CaptionedImage]
    images_dir: Path
    source: str
    excluded: list[CaptionedImage] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[CaptionedImage]:
        return iter(self.images)

    @property
    def num_captions(self) -> int:
        return sum(len(image.captions) for image in self.images)

    def subset(self, split: str) -> list[CaptionedImage]:
        return [image for image in self.images if image.split == split]

    def split_sizes(self) -> dict[str, int]:
        return {split: len(self.subset(split)) for split in SPLITS}

    def to_manifest(self, splits: Sequence[str] = SPLITS) -> dict:
        """JSON-able listing of every image and its captions, by split."""
        return {
            "source": self.source,
            "images_dir": str(self.images_dir),
            "splits": {
                split: [
                    {"image": str(image.path), "captions": list(image.captions)}
                    | ({"id": image.source_id} if image.source_id is not None else {})
                    for image in self.subset(split)
                ]
                for split in splits
            },
        }
