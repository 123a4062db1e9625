"""Exports a trained run for serving: python export.py --workdir=RUN [--output=DIR].

Writes <workdir>/export/ (or --output): variables (weights and carried memory), the serialized
completion function, config, model card and manifest; gmsrm_jax/export.py says what each
holds. The config is the one saved with the checkpoint, as for evaluate.py.
"""

from gmsrm_jax import commands

if __name__ == "__main__":
  commands.export()
