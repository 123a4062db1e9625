"""External memories of the inpainting networks. `cicm`: Cross-Image Context Memory (pure)."""

from gmsrm_jax.memory.cicm import (CICMOptions, CICMState, context_augmentation,
                                   context_generalization, init_state, kmeans_centers,
                                   set_similarity_losses, single_image_augmentation)

__all__ = ["CICMOptions", "CICMState", "context_augmentation", "context_generalization",
           "init_state", "kmeans_centers", "set_similarity_losses",
           "single_image_augmentation"]
