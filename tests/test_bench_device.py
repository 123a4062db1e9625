"""benchmarks/bench_device.py: it measures the loop's own step, and its accounting is right."""

import jax
import pytest

from benchmarks import bench_device
from configs import base as base_config
from gmsrm_jax.train import health
from gmsrm_jax.train import loop
from gmsrm_jax.train import parallel
from gmsrm_jax.train import tasks


@pytest.fixture(scope="module")
def tiny_step():
  config = base_config.get_config("tiny")
  # A small program for the loop to compile (~3 CPU-s instead of ~5.5 for the tiny config):
  # one encoder level, no discriminator, one device (its program is the whole step).
  config.model.encoder_channels = (8,)
  config.loss.adv_weight = 0.0
  return bench_device.compile_step(config, parallel.make_mesh(jax.devices()[:1]))


def test_the_benchmark_compiles_the_loops_step(tiny_step):
  config, mesh = tiny_step.config, tiny_step.mesh
  task = tasks.get(config)
  components = task.create_components(config)
  _, abstract_state = loop.abstract_train_state(config, task, components, mesh)
  replicated = parallel.replicated(mesh)
  size, batch_size = config.data.crop_size, config.train.batch_size
  batch = {name: jax.ShapeDtypeStruct((batch_size, size, size, channels), jax.numpy.float32,
                                      sharding=parallel.batch_sharded(mesh))
           for name, channels in (("image", 3), ("mask", 1))}
  abstract_health = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(health.initial, abstract_state))
  lowered = loop.jit_train_steps(config, task, components, mesh)[tasks.ONLY_VARIANT].lower(
      abstract_state, batch, {}, abstract_health)
  assert lowered.as_text() == tiny_step.lowered.as_text()


def test_reported_figures_are_the_compiled_steps(tiny_step):
  # steps=0: counted, not run (the time arithmetic is checked by hand below).
  result = bench_device.measure(tiny_step, steps=0, warmup=0)
  flops = tiny_step.compiled.cost_analysis()["flops"]
  batch = tiny_step.config.train.batch_size
  assert result["flops_per_device_per_step"] == flops
  assert result["gflop_per_step"] == pytest.approx(flops / 1e9)
  assert result["gflop_per_image"] == pytest.approx(flops / batch / 1e9)
  assert result["step_s"] is result["img_per_s"] is result["tflops_per_device"] is None
  # No peak on record for a CPU, and no device memory statistics.
  assert result["device_kind"] == "cpu" and result["peak_tflops"] is result["mfu"] is None
  assert result["peak_memory_bytes"] is None
  # The replicated state's bytes from the parameter count: float32 params, Adam's two moments
  # and its int32 step count.
  params = sum(x.size for x in jax.tree.leaves(tiny_step.abstract_state.g_params))
  assert result["state_bytes"]["g_params"] == 4 * params
  assert result["state_bytes"]["g_opt_state"] == 2 * 4 * params + 4


def test_accounting_against_hand_computed_values():
  # 4 devices each running 2 TFLOP per step of a global batch of 32 in 0.5 s, peak 100 TFLOP/s.
  figures = bench_device.accounting(flops_per_device=2e12, num_devices=4, batch_size=32,
                                    step_s=0.5, peak=100.0)
  assert figures == pytest.approx({"gflop_per_step": 8000.0, "gflop_per_image": 250.0,
                                   "img_per_s": 64.0, "tflops_per_device": 4.0, "mfu": 0.04})
  counted_only = bench_device.accounting(flops_per_device=2e12, num_devices=4, batch_size=32,
                                         step_s=None, peak=100.0)
  assert counted_only["gflop_per_image"] == 250.0
  assert counted_only["img_per_s"] is counted_only["mfu"] is None


@pytest.mark.parametrize("device_kind, bf16, float32", [
    ("NVIDIA H100 80GB HBM3", 989.5, 494.5),  # SXM; float32 convolutions run as TF32.
    ("NVIDIA H100 PCIe", 756.5, 378.0),
    ("NVIDIA H100 NVL", 835.5, 417.5),
    ("NVIDIA H200", 989.5, 494.5),
    ("NVIDIA H200 NVL", 835.5, 417.5),
    ("NVIDIA A100-SXM4-80GB", 312.0, 156.0),
    ("NVIDIA A100-PCIE-40GB", 312.0, 156.0),
    ("NVIDIA L4", 121.0, 60.0),
    ("Tesla V100-SXM2-16GB", None, 15.7),  # No bf16 or TF32 units: float32 at the FP32 rate.
    ("Tesla V100-PCIE-32GB", None, 14.0),
    ("Tesla V100S-PCIE-32GB", None, 16.4),
    ("TPU v4", 275.0, 275.0),  # float32 runs as one bf16 MXU pass at the default precision.
    ("TPU v5 lite", 197.0, 197.0),
    ("TPU v5", 459.0, 459.0),
    ("TPU v5p", 459.0, 459.0),
    ("TPU v6 lite", 918.0, 918.0),
    ("TPU v4 lite", None, None),  # v4i: no figure on record.
    ("cpu", None, None),
])
def test_peak_lookup(device_kind, bf16, float32):
  assert bench_device.peak_tflops(device_kind, "bfloat16") == bf16
  assert bench_device.peak_tflops(device_kind, "float32") == float32
