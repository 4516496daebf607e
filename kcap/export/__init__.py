"""Exporting a trained run for serving: `export_run(run_dir, output)` writes a SavedModel."""

from kcap.export.savedmodel import (
    SERVING_DEFAULT,
    SERVING_IMAGES,
    build_export_archive,
    captions_from_ids,
    export_run,
)

__all__ = ["SERVING_DEFAULT", "SERVING_IMAGES", "build_export_archive", "captions_from_ids", "export_run"]
