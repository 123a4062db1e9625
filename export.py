"""Exports a trained run for serving: same flags as train.py, plus --output/--step/--platforms.

Writes <workdir>/export/ (or --output): variables (weights and carried memory), the serialized
completion function, config and manifest; gmsrm_jax/export.py says what each holds.
"""

from absl import app
from absl import flags

from gmsrm_jax import cli
from gmsrm_jax import export as export_lib

_OUTPUT = flags.DEFINE_string("output", None, "Export directory (default <workdir>/export).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_PLATFORMS = flags.DEFINE_list("platforms", list(export_lib.DEFAULT_PLATFORMS),
                               "Platforms the serialized function is lowered for.")


def main(argv):
  del argv
  config, workdir = cli.setup()
  print(export_lib.export(config, workdir, _OUTPUT.value, step=_STEP.value,
                          platforms=_PLATFORMS.value))


if __name__ == "__main__":
  app.run(main)
