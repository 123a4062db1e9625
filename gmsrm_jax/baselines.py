"""Classical inpainting: the floor every learned model is judged against.

OpenCV's Telea (fast marching) and Navier-Stokes methods and scikit-image's biharmonic
inpainting know nothing of the training data: a learned model that does not beat them on its
own test images has not learned to inpaint. Evaluation runs them on exactly the images and
masks the model sees (`config.eval.baselines`) and reports them as rows beside the model.

Images are [-1, 1] float NHWC arrays decoded from 8-bit files and masks are NHW1 with 1 = hole,
as the evaluation pipeline yields them. Outputs are composited, so every known pixel equals the
input's.
"""

from typing import Callable

import numpy as np

# OpenCV's inpaintRadius: the neighbourhood each filled pixel is estimated from. 3 px is the
# value OpenCV's own documentation uses, and larger radii blur more at these image sizes.
OPENCV_RADIUS = 3


def _telea(image_u8: np.ndarray, hole_u8: np.ndarray) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top  # Only evaluation with baselines needs it.
  return cv2.inpaint(image_u8, hole_u8, OPENCV_RADIUS, cv2.INPAINT_TELEA)


def _navier_stokes(image_u8: np.ndarray, hole_u8: np.ndarray) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top
  return cv2.inpaint(image_u8, hole_u8, OPENCV_RADIUS, cv2.INPAINT_NS)


def _biharmonic(image_u8: np.ndarray, hole_u8: np.ndarray) -> np.ndarray:
  from skimage import restoration  # pylint: disable=g-import-not-at-top
  filled = restoration.inpaint_biharmonic(image_u8.astype(np.float64) / 255.0, hole_u8 > 0,
                                          channel_axis=-1)
  return np.round(np.clip(filled, 0.0, 1.0) * 255.0).astype(np.uint8)


# Name -> (uint8 HxWx3 image, uint8 HxW hole mask 0/255) -> uint8 HxWx3.
METHODS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "telea": _telea,
    "navier_stokes": _navier_stokes,
    "biharmonic": _biharmonic,
}
DISPLAY_NAMES = {"telea": "Telea (OpenCV)", "navier_stokes": "Navier-Stokes (OpenCV)",
                 "biharmonic": "biharmonic (scikit-image)"}
SHORT_NAMES = {"telea": "Telea", "navier_stokes": "N-S", "biharmonic": "biharm."}  # Grid labels.


def check_names(names) -> None:
  unknown = [name for name in names if name not in METHODS]
  if unknown:
    raise ValueError(f"Unknown config.eval.baselines entries {unknown}; known: "
                     f"{sorted(METHODS)}.")


def inpaint(method: str, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Composited completion of a batch by a classical method.

  Args:
    method: a key of METHODS.
    image: float [N, H, W, 3] in [-1, 1] whose values are 8-bit levels (as decoded files are).
    mask: [N, H, W, 1], 1 = hole (binary).

  Returns:
    float32 [N, H, W, 3] in [-1, 1]: the method's fill in the holes, the input elsewhere.
  """
  check_names([method])
  image = np.asarray(image, np.float32)
  mask = np.asarray(mask, np.float32)
  image_u8 = np.round((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
  holes = (mask[..., 0] > 0.5).astype(np.uint8) * 255
  filled = np.stack([
      METHODS[method](np.ascontiguousarray(image_u8[i]), np.ascontiguousarray(holes[i]))
      if holes[i].any() else image_u8[i] for i in range(image.shape[0])])
  prediction = filled.astype(np.float32) / 127.5 - 1.0
  return mask * prediction + (1.0 - mask) * image
