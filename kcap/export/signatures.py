"""The names of the exported SavedModel's endpoints, and what each takes and gives.

Kept apart from `kcap.export.savedmodel`, which builds them: `kcap.serve`
reads an export with TensorFlow alone and imports these names from here,
never kcap's model code.

Example:

>>> sorted(SIGNATURES)
['caption_details', 'decode_image', 'serving_default', 'serving_images']
"""

from __future__ import annotations

SERVING_DEFAULT = "serving_default"
SERVING_IMAGES = "serving_images"
DECODE_IMAGE = "decode_image"
CAPTION_DETAILS = "caption_details"

# As written to the export's assets/export.json: inputs and outputs by name, with dtype and shape.
SIGNATURES = {
    SERVING_DEFAULT: {
        "inputs": {"image_bytes": "string [None]"},
        "outputs": {"caption": "string [None]", "score": "float32 [None]"},
    },
    SERVING_IMAGES: {
        "inputs": {"images": "float32 [None, H, W, 3] in [0, 255]"},
        "outputs": {"caption": "string [None]", "score": "float32 [None]"},
    },
    DECODE_IMAGE: {
        "inputs": {"image_bytes": "string [], one image"},
        "outputs": {"pixels": "uint8 [H, W, 3], as serving_default and kcap caption decode and resize it"},
    },
    CAPTION_DETAILS: {
        "inputs": {"images": "float32 [None, H, W, 3] in [0, 255]"},
        "outputs": {
            "caption": "string [None], as serving_images",
            "score": "float32 [None], as serving_images",
            "candidates": "string [None, K], the search's finished captions, best first (K = beam size)",
            "candidate_scores": "float32 [None, K], their log-probabilities; -inf where a slot is empty",
            "attention": "float32 [None, T, h*w], the caption's attention over the feature map, a row per word, "
            "then <end>, then zeros (T = max_length + 1)",
        },
    },
}
