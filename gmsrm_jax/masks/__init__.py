"""Inpainting masks: float32 [H, W] arrays with 1 = hole and 0 = known. See docs/MASKS.md."""

from gmsrm_jax.masks.bins import bin_of
from gmsrm_jax.masks.bins import CICM_BINS
from gmsrm_jax.masks.bins import GMSRM_BINS
from gmsrm_jax.masks.bins import HOLE_RATIO_BINS
from gmsrm_jax.masks.folder import load_mask_file
from gmsrm_jax.masks.folder import MaskFolder
from gmsrm_jax.masks.generators import center_mask
from gmsrm_jax.masks.generators import free_form_mask
from gmsrm_jax.masks.generators import hole_ratio
from gmsrm_jax.masks.generators import rectangle_mask
from gmsrm_jax.masks.sampling import mask_in_bin
from gmsrm_jax.masks.sampling import training_mask

__all__ = [
    "bin_of",
    "center_mask",
    "CICM_BINS",
    "free_form_mask",
    "GMSRM_BINS",
    "HOLE_RATIO_BINS",
    "hole_ratio",
    "load_mask_file",
    "mask_in_bin",
    "MaskFolder",
    "rectangle_mask",
    "training_mask",
]
