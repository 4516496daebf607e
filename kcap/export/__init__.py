"""Exporting a trained run for serving: `export_run(run_dir, output)` writes a SavedModel."""

__all__ = [
    "CAPTION_DETAILS", "DECODE_IMAGE", "SERVING_DEFAULT", "SERVING_IMAGES", "build_export_archive", "captions_from_ids", "export_run",
]


def __getattr__(name: str):
    # On first use: importing the package alone should not wait for TensorFlow.
    if name in __all__:
        from kcap.export import savedmodel

        return getattr(savedmodel, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
