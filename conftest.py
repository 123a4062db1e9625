"""Test-session set-up that must happen before JAX is imported anywhere."""

import os

# Eight virtual CPU devices, so every test exercises the sharded (data-parallel) code paths the
# way a multi-accelerator job does. Must be set before jax initialises its backends.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
