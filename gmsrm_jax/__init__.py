"""gmsrm_jax: memory-guided image inpainting (GM-SRM, CICM) in JAX/Flax."""
