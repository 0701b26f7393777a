"""ParaBench's six evaluation axes, in the column order of the paper's Table 2, with their short table headers.

A leaf module: the toy world's exact evaluator and the evaluation harness both score these axes, and neither may
import the other's package for them.
"""

__all__ = ["AXES", "AXIS_HEADERS"]

AXES: tuple[str, ...] = (
    "text_quality",
    "text_alignment",
    "image_consistency",
    "image_alignment",
    "image_quality",
    "output_alignment",
)
AXIS_HEADERS: dict[str, str] = {
    "text_quality": "TextQ",
    "text_alignment": "TextA",
    "image_consistency": "ImgCons",
    "image_alignment": "ImgA",
    "image_quality": "ImgQ",
    "output_alignment": "OutA",
}
