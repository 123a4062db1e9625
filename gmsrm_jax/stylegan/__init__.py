"""The GM-SRM generative memory as a StyleGAN2 generator, its discriminator and objectives.

Stage 1 (`gmsrm_jax/train/memory_pretraining.py`) trains `Generator` against `Discriminator`;
stage 2 loads the exported memory (`load_memory`) and drives `SynthesisNetwork.block` with the
encoder's embeddings, features and noise.
"""

from gmsrm_jax.stylegan.memory import (FrozenMemory, MemoryMismatchError, export_memory,
                                       load_memory, merge_adapters, split_adapters)
from gmsrm_jax.stylegan.networks import (Discriminator, EncoderFusion, Generator,
                                         MappingNetwork, MemoryBlock, SynthesisNetwork,
                                         create_discriminator, create_generator,
                                         minibatch_stddev, truncate)

__all__ = ["Discriminator", "EncoderFusion", "FrozenMemory", "Generator", "MappingNetwork",
           "MemoryBlock", "MemoryMismatchError", "SynthesisNetwork", "create_discriminator",
           "create_generator", "export_memory", "load_memory", "merge_adapters",
           "minibatch_stddev", "split_adapters", "truncate"]
