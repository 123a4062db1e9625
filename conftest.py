"""Test-session set-up that must happen before JAX is imported anywhere."""

import os

# Eight virtual CPU devices, so every test exercises the sharded (data-parallel) code paths the
# way a multi-accelerator job does. Must be set before jax initialises its backends.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# One persistent XLA compilation cache per test session, in a fresh directory that the
# subprocesses the tests start (and pytest-xdist's workers) inherit through the environment:
# many tests run the same tiny programs through fresh `jax.jit` closures (a resumed run, a
# second loop, a CLI in a subprocess), and on CI's two cores compiling is most of the suite's
# time. Fresh per session, so no test depends on what an earlier session compiled.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  _cache_dir = tempfile.mkdtemp(prefix="gmsrm_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
