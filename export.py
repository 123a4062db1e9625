"""Exports a trained run for serving: same flags as train.py, plus --output/--platforms.

Writes <workdir>/export/ (or --output): variables (weights and carried memory), the serialized
completion function, config and manifest; gmsrm_jax/export.py says what each holds.
"""

from absl import flags

from gmsrm_jax import cli
from gmsrm_jax import export as export_lib

_OUTPUT = flags.DEFINE_string("output", None, "Export directory (default <workdir>/export).")
_PLATFORMS = flags.DEFINE_list("platforms", list(export_lib.DEFAULT_PLATFORMS),
                               "Platforms the serialized function is lowered for.")


def main(argv):
  del argv
  config, workdir = cli.setup()
  print(export_lib.export(config, workdir, _OUTPUT.value, step=cli.STEP.value,
                          platforms=_PLATFORMS.value,
                          allow_config_change=cli.ALLOW_CONFIG_CHANGE.value))


if __name__ == "__main__":
  cli.run(main, saved_config=True)
