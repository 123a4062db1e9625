"""Datasets (TFDS builders), robust decoding, preprocessing and the input pipeline.

Prepare once (offline), then load:
  python -m gmsrm_jax.data.prepare --dataset=synthetic_scenes/64 --data_dir=DIR
or from Python: `from gmsrm_jax.data.prepare import prepare` (not re-exported here, where the
name would shadow the `prepare` module that `python -m` runs). See docs/DATA.md.
"""

from gmsrm_jax.data.builders import DatasetNotPreparedError
from gmsrm_jax.data.builders import load_builder
from gmsrm_jax.data.builders import make_builder
from gmsrm_jax.data.builders import prepare_command
from gmsrm_jax.data.pipeline import create_eval_iterator
from gmsrm_jax.data.pipeline import create_train_iterator
from gmsrm_jax.data.pipeline import dataset_info
from gmsrm_jax.data.pipeline import num_examples

__all__ = [
    "create_eval_iterator",
    "create_train_iterator",
    "dataset_info",
    "DatasetNotPreparedError",
    "load_builder",
    "make_builder",
    "num_examples",
    "prepare_command",
]
