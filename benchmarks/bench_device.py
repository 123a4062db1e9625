"""The training loop's step on this machine's devices: compile time, step time, img/s, XLA FLOPs,
achieved TFLOP/s and MFU, device memory, and the input pipeline beside what the step consumes.

  python benchmarks/bench_device.py --config=configs/base.py
  python benchmarks/bench_device.py --config=configs/unet_cicm.py
  python benchmarks/bench_device.py --config=configs/memory_places2.py
  python benchmarks/bench_device.py --config=configs/gmsrm.py:places2
  ... --config.train.batch_size=4 (or --batch_size=4), --steps=10 --warmup=2, --json=row.json,
  --steps=0 (compile and count only: no state is built, nothing runs)

The same command runs on CPU, GPU and TPU. What runs is the loop's own jitted step
(`loop.jit_train_steps`; for stage 1 the variant most steps run, without the lazy regularisers:
the task's step and the device-side health flags, state donated) on the loop's mesh (every device, batch sharded), from the seed's initial state, on random images
with training masks. Frozen pre-trained parts (GM-SRM's memory) keep their random initial
weights, and a missing VGG-19 file is replaced by random weights of its shapes: the FLOPs and
the time do not depend on the values.

One row per run:
  compile s   lowering + XLA compilation of the step (a persistent compilation cache, where
              enabled, turns the second run's into a cache read)
  step s      median of --steps steps after --warmup, each waited for (block_until_ready)
  img/s       global batch / step s
  GFLOP/img   XLA's cost analysis of the compiled step (the program one device runs, times the
              devices) / global batch. It counts both branches of a `lax.cond`: stage 1's lazy
              R1 / path-length phases on accelerators (on CPU they run every step anyway)
  TFLOP/s     per device: its compiled FLOPs / step s
  MFU         TFLOP/s / the device's dense peak for the compute dtype (PEAKS); n/a for a device
              kind without a figure on record (every CPU)
  peak GiB    peak bytes in use on a device (`memory_stats`); n/a where the backend keeps none
              (CPU). "XLA plan" below the row: arguments + outputs + temporaries of the step
  pipe img/s  the training input pipeline (bench_input_pipeline.throughput: synthetic_scenes
              at 256², decode + augment + masks, one thread per core) on this host
  pipe/need   pipeline img/s / the step's img/s: above 1, this host keeps the step fed
Below the row: the state's bytes per field (replicated: every device holds them all), and one
orbax save of the state the loop's way (bytes on disk, seconds before the step could go on,
seconds until written). docs/SCALING.md turns these figures into cluster sizes.
"""

import collections
import dataclasses
import json
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging as absl_logging
import jax
from ml_collections import config_flags
import numpy as np
import tensorflow_datasets as tfds

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from benchmarks import bench_input_pipeline  # pylint: disable=g-import-not-at-top
from gmsrm_jax import config_checks  # pylint: disable=g-import-not-at-top
from gmsrm_jax import masks  # pylint: disable=g-import-not-at-top
from gmsrm_jax import objectives  # pylint: disable=g-import-not-at-top
from gmsrm_jax import precision  # pylint: disable=g-import-not-at-top
from gmsrm_jax import weights  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import health  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import loop  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import parallel  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import tasks  # pylint: disable=g-import-not-at-top


@dataclasses.dataclass(frozen=True)
class Peak:
  """Dense (no structured sparsity) peak TFLOP/s of one JAX device; None: no such units."""

  bf16: float | None
  tf32: float | None
  fp32: float | None
  # Which of the three float32 convolutions run at under JAX's default precision: "float32
  # dot products may be computed with reduced-precision arithmetic internally (bfloat16 on
  # TPU, TF32 on recent GPUs)" (JAX docs, "Matmul precision"); Volta has no TF32.
  float32_default: str


# (device_kind pattern, peak), first match wins. Vendors quote tensor-core figures "with
# sparsity" (2x); the dense figure, half of it, is what a dense convolution can reach.
PEAKS: tuple[tuple[str, Peak], ...] = (
    # NVIDIA H200 Tensor Core GPU datasheet: H200 NVL BF16 1,671 / TF32 835 (sparse), FP32 60.
    (r"H200 NVL", Peak(bf16=835.5, tf32=417.5, fp32=60.0, float32_default="tf32")),
    # Same datasheet, H200 SXM: BF16 1,979 / TF32 989 (sparse), FP32 67.
    (r"H200", Peak(bf16=989.5, tf32=494.5, fp32=67.0, float32_default="tf32")),
    # NVIDIA H100 Tensor Core GPU datasheet: H100 NVL BF16 1,671 / TF32 835 (sparse), FP32 60.
    (r"H100 NVL", Peak(bf16=835.5, tf32=417.5, fp32=60.0, float32_default="tf32")),
    # Same datasheet, H100 PCIe: BF16 1,513 / TF32 756 (sparse), FP32 51.
    (r"H100 PCIe", Peak(bf16=756.5, tf32=378.0, fp32=51.0, float32_default="tf32")),
    # Same datasheet, H100 SXM ("NVIDIA H100 80GB HBM3"): BF16 1,979 / TF32 989 (sparse), FP32 67.
    (r"H100", Peak(bf16=989.5, tf32=494.5, fp32=67.0, float32_default="tf32")),
    # NVIDIA A100 Tensor Core GPU datasheet (SXM and PCIe, 40 and 80 GB): BF16 312, TF32 156
    # (dense), FP32 19.5.
    (r"A100", Peak(bf16=312.0, tf32=156.0, fp32=19.5, float32_default="tf32")),
    # NVIDIA L4 Tensor Core GPU datasheet: BF16 242 / TF32 120 (sparse), FP32 30.3.
    (r"\bL4\b", Peak(bf16=121.0, tf32=60.0, fp32=30.3, float32_default="tf32")),
    # NVIDIA V100 Tensor Core GPU datasheet: FP32 16.4 (V100S PCIe), 14 (PCIe), 15.7 (SXM2);
    # its tensor cores take FP16 only, so neither bf16 nor TF32 has units.
    (r"V100S", Peak(bf16=None, tf32=None, fp32=16.4, float32_default="fp32")),
    (r"V100.*PCIE", Peak(bf16=None, tf32=None, fp32=14.0, float32_default="fp32")),
    (r"V100", Peak(bf16=None, tf32=None, fp32=15.7, float32_default="fp32")),
    # Google Cloud TPU docs, per chip (one JAX device each): v4 275, v5e 197, v5p 459, v6e
    # (Trillium) 918 bf16 TFLOP/s; no float32 figure is published (float32 runs as bf16
    # passes). device_kind: "TPU v4", "TPU v5 lite", "TPU v5" (v5p), "TPU v6 lite".
    (r"^TPU v4$", Peak(bf16=275.0, tf32=None, fp32=None, float32_default="bf16")),
    (r"^TPU v5 ?(lite|e)$", Peak(bf16=197.0, tf32=None, fp32=None, float32_default="bf16")),
    (r"^TPU v5p?$", Peak(bf16=459.0, tf32=None, fp32=None, float32_default="bf16")),
    (r"^TPU v6 ?(lite|e)$", Peak(bf16=918.0, tf32=None, fp32=None, float32_default="bf16")),
)


def peak_for(device_kind: str) -> Peak | None:
  for pattern, peak in PEAKS:
    if re.search(pattern, device_kind, re.IGNORECASE):
      return peak
  return None


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """The dense peak the step's convolutions can reach on this device kind, or None."""
  peak = peak_for(device_kind)
  if peak is None:
    return None
  return getattr(peak, "bf16" if dtype == "bfloat16" else peak.float32_default)


def compiled_flops(compiled) -> float:
  """FLOPs of one call of the program one device runs (XLA's cost analysis)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # One entry per program in older JAX releases.
    cost = cost[0]
  return float(cost["flops"])


def accounting(*, flops_per_device: float, num_devices: int, batch_size: int,
               step_s: float | None, peak: float | None) -> dict[str, float | None]:
  """Per-step, per-image and per-second figures of a step; None where an input is missing."""
  result = {"gflop_per_step": flops_per_device * num_devices / 1e9,
            "gflop_per_image": flops_per_device * num_devices / batch_size / 1e9,
            "img_per_s": None, "tflops_per_device": None, "mfu": None}
  if step_s:
    result["img_per_s"] = batch_size / step_s
    result["tflops_per_device"] = flops_per_device / step_s / 1e12
    if peak:
      result["mfu"] = result["tflops_per_device"] / peak
  return result


def peak_memory_bytes(devices) -> int | None:
  """The largest peak_bytes_in_use over `devices`; None where the backend keeps no stats."""
  stats = [device.memory_stats() for device in devices]
  if any(not s or "peak_bytes_in_use" not in s for s in stats):
    return None
  return max(int(s["peak_bytes_in_use"]) for s in stats)


def planned_bytes(compiled) -> int | None:
  """XLA's memory plan of the step on one device: arguments + outputs (less the donated
  buffers they reuse) + temporaries."""
  plan = compiled.memory_analysis()
  if plan is None:
    return None
  return (plan.argument_size_in_bytes + plan.output_size_in_bytes - plan.alias_size_in_bytes
          + plan.temp_size_in_bytes)


def state_bytes(abstract_state) -> dict[str, int]:
  """Bytes of each TrainState field: what every device holds, the state being replicated."""
  return {field.name: sum(x.size * x.dtype.itemsize
                          for x in jax.tree.leaves(getattr(abstract_state, field.name)))
          for field in dataclasses.fields(abstract_state)}


def _loss_networks(config, task, mesh) -> tuple[dict[str, Any], str]:
  try:
    return loop.load_loss_networks(config, task, mesh), ""
  except weights.WeightsError:
    if not config.loss.get("perceptual_weight", 0.0):
      raise
    note = (f"no usable VGG-19 weights at {config.loss.vgg19_weights}: random weights of its "
            "shapes instead (the same FLOPs)")
    return jax.device_put({objectives.VGG19: weights.random_params(objectives.VGG19)},
                          parallel.replicated(mesh)), note


def random_batch(config, mesh) -> dict[str, jax.Array]:
  """This process's share of a global batch: uniform images, the config's training masks."""
  size = config.data.crop_size
  local = config.train.batch_size // jax.process_count()
  rng = np.random.default_rng(jax.process_index())
  batch = {"image": rng.uniform(-1, 1, (local, size, size, 3)).astype(np.float32),
           "mask": np.stack([masks.training_mask(config.masks, size, seed=0, step=0, index=i)
                             for i in range(local)])[..., None].astype(np.float32)}
  return parallel.global_batch(batch, mesh)


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """The loop's step for a config, compiled for a mesh, with the inputs it runs on."""

  config: Any
  mesh: Any
  lowered: Any
  compiled: Any
  compile_s: float
  init_fn: Callable[[], Any]  # The seed's initial state (built only when steps run).
  abstract_state: Any
  batch: dict[str, jax.Array]
  loss_networks: dict[str, Any]
  notes: tuple[str, ...]


def common_variant(config, task, period: int = 256) -> str:
  """The step variant the loop runs most often (stage 1: the step without the lazy
  regularisers, which run one step in `r1_interval` / `pl_interval`); the only one for the
  inpainting task."""
  counts = collections.Counter(task.variant_for_step(config, s) for s in range(period))
  return counts.most_common(1)[0][0]


def compile_step(config, mesh=None) -> CompiledStep:
  """Lowers and compiles the loop's jitted step for `config` on `mesh` (default: the loop's
  mesh, every device) from abstract shapes: no state is built."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_batch_size(config.train.batch_size, mesh)
  task = tasks.get(config)
  components = task.create_components(config)
  init_fn, abstract_state = loop.abstract_train_state(config, task, components, mesh)
  loss_networks, note = _loss_networks(config, task, mesh)
  batch = random_batch(config, mesh)
  replicated = parallel.replicated(mesh)
  abstract_health = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(health.initial, abstract_state))
  start = time.perf_counter()
  variant = common_variant(config, task)
  lowered = loop.jit_train_steps(config, task, components, mesh)[variant].lower(
      abstract_state, batch, loss_networks, abstract_health)
  compiled = lowered.compile()
  return CompiledStep(config=config, mesh=mesh, lowered=lowered, compiled=compiled,
                      compile_s=time.perf_counter() - start, init_fn=init_fn,
                      abstract_state=abstract_state, batch=batch, loss_networks=loss_networks,
                      notes=(note,) if note else ())


def measure(step: CompiledStep, *, steps: int, warmup: int, save_checkpoint: bool = False
            ) -> dict[str, Any]:
  """Counts the compiled step and (steps > 0) times it from the seed's initial state."""
  config, mesh = step.config, step.mesh
  devices = mesh.devices.size
  kind = mesh.devices.flat[0].device_kind
  dtype = precision.compute_dtype(config).name
  flops = compiled_flops(step.compiled)
  result = {"device_kind": kind, "platform": mesh.devices.flat[0].platform, "devices": devices,
            "compute_dtype": dtype, "image": config.data.crop_size,
            "batch": config.train.batch_size, "compile_s": step.compile_s,
            "flops_per_device_per_step": flops, "peak_tflops": peak_tflops(kind, dtype),
            "xla_plan_bytes": planned_bytes(step.compiled),
            "state_bytes": state_bytes(step.abstract_state), "notes": list(step.notes)}
  step_s = None
  if steps > 0:
    state = parallel.create_sharded(step.init_fn, mesh)
    device_health = jax.device_put(health.initial(state), parallel.replicated(mesh))
    times = []
    for i in range(warmup + steps):
      start = time.perf_counter()
      state, metrics, device_health = step.compiled(state, step.batch, step.loss_networks,
                                                    device_health)
      jax.block_until_ready((state, metrics, device_health))
      if i >= warmup:
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    result["step_times_s"] = times
    result["finite"] = bool(jax.device_get(device_health.first_bad_step) < 0)
    if save_checkpoint:
      result.update(checkpoint_save(state, config))
  result["step_s"] = step_s
  result.update(accounting(flops_per_device=flops, num_devices=devices,
                           batch_size=config.train.batch_size, step_s=step_s,
                           peak=result["peak_tflops"]))
  result["peak_memory_bytes"] = peak_memory_bytes(mesh.devices.flat)
  return result


def checkpoint_save(state, config) -> dict[str, float]:
  """One save of `state` the loop's way (checkpoint.save, asynchronous): seconds until the
  step could continue, seconds until written, and bytes on disk."""
  with tempfile.TemporaryDirectory() as workdir:
    manager = checkpoint.create_manager(workdir)
    start = time.perf_counter()
    checkpoint.save(manager, 1, state, config, force=True)
    blocking_s = time.perf_counter() - start
    manager.wait_until_finished()
    written_s = time.perf_counter() - start
    manager.close()
    size = sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(workdir) for name in names)
  return {"checkpoint_blocking_s": blocking_s, "checkpoint_written_s": written_s,
          "checkpoint_bytes": size}


def pipeline_throughput(config, *, batches: int, data_dir: str = "") -> dict[str, float]:
  """The real training iterator's img/s with `config`'s data settings on synthetic_scenes/256,
  one thread per core (bench_input_pipeline's measurement)."""
  tfds.disable_progress_bar()  # Its bars would run into the table.
  cores = os.cpu_count() or 1
  with tempfile.TemporaryDirectory() as scratch:
    data_dir = data_dir or scratch
    name = bench_input_pipeline.prepare_dataset("synthetic", data_dir, num_examples=256)
    pipeline_config = config.copy_and_resolve_references()
    pipeline_config.data.name = name
    pipeline_config.data.builder_config = "256"
    pipeline_config.data.data_dir = data_dir
    pipeline_config.data.num_threads = cores
    rate, per_cpu_second = bench_input_pipeline.throughput(pipeline_config, batches)
  return {"pipeline_img_per_s": rate, "pipeline_img_per_cpu_s": per_cpu_second,
          "host_cores": cores}


def _format(value, spec: str, width: int) -> str:
  return f"{'n/a':>{width}}" if value is None else f"{value:>{width}{spec}}"


HEADER = (f"{'config':<34} {'device':<22} {'n':>2} {'dtype':>8} {'image':>5} {'batch':>5} "
          f"{'compile s':>9} {'step s':>8} {'img/s':>7} {'GFLOP/img':>9} {'TFLOP/s':>8} "
          f"{'MFU':>6} {'peak GiB':>8} {'pipe img/s':>10} {'pipe/need':>9}")


def row(name: str, r: dict[str, Any]) -> str:
  """The result as one line under HEADER ("pipe/need" > 1: the host keeps the step fed)."""
  mfu = None if r["mfu"] is None else 100 * r["mfu"]
  peak_gib = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**30
  pipeline = r.get("pipeline_img_per_s")
  feed = pipeline / r["img_per_s"] if pipeline and r["img_per_s"] else None
  return (f"{name:<34} {r['device_kind'][:22]:<22} {r['devices']:>2} {r['compute_dtype']:>8} "
          f"{r['image']:>5} {r['batch']:>5} {r['compile_s']:>9.1f} "
          f"{_format(r['step_s'], '.3f', 8)} {_format(r['img_per_s'], '.1f', 7)} "
          f"{r['gflop_per_image']:>9.4g} {_format(r['tflops_per_device'], '.3g', 8)} "
          f"{_format(mfu, '.1f', 5)}{'%' if mfu is not None else ' '} "
          f"{_format(peak_gib, '.1f', 8)} {_format(pipeline, '.0f', 10)} "
          f"{_format(feed, '.1f', 8)}{'x' if feed is not None else ' '}")


def _config_name(argv: list[str]) -> str:
  name = os.path.relpath(flags.FLAGS["config"].config_filename)
  overrides = [a.split("--config.", 1)[1] for a in argv[1:] if a.startswith("--config.")]
  return ",".join([name, *overrides])


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save phase at INFO.
  f = flags.FLAGS
  config = f.config
  if f.batch_size is not None:
    config.train.batch_size = f.batch_size
  name = _config_name(sys.argv) + (f",batch={f.batch_size}" if f.batch_size else "")
  result = measure(compile_step(config), steps=f.steps, warmup=f.warmup,
                   save_checkpoint=f.checkpoint and f.steps > 0)
  if f.pipeline and config.data.crop_size == 256:
    result.update(pipeline_throughput(config, batches=f.pipeline_batches,
                                      data_dir=f.data_dir))
  print(HEADER)
  print(row(name, result))
  mebibytes = {k: v / 2**20 for k, v in result["state_bytes"].items() if v}
  print(f"  state (replicated on every device): {sum(mebibytes.values()):.1f} MiB = "
        + ", ".join(f"{k} {v:.1f}" for k, v in mebibytes.items()))
  if result["xla_plan_bytes"] is not None:
    print(f"  XLA plan of the step per device: {result['xla_plan_bytes'] / 2**30:.2f} GiB")
  if "checkpoint_bytes" in result:
    print(f"  orbax save: {result['checkpoint_bytes'] / 2**20:.1f} MiB on disk, "
          f"{result['checkpoint_blocking_s']:.2f} s before the step can go on, "
          f"{result['checkpoint_written_s']:.2f} s until written")
  if "pipeline_img_per_s" in result:
    need = result["img_per_s"]
    print(f"  input pipeline: {result['pipeline_img_per_s']:.0f} img/s on "
          f"{result['host_cores']} cores ({result['pipeline_img_per_cpu_s']:.0f} per CPU-second)"
          + (f"; the step needs {need:.1f} img/s = "
             f"{need / result['pipeline_img_per_cpu_s']:.3g} cores" if need else ""))
  if result["peak_tflops"] is None:
    print(f"  MFU n/a: no peak on record for device kind {result['device_kind']!r} "
          f"({result['compute_dtype']})")
  if not result.get("finite", True):
    print("  WARNING: the step produced non-finite values (see train/health.py)")
  for note in result["notes"]:
    print(f"  note: {note}")
  if f.json:
    with open(f.json, "w") as out:
      json.dump({"config": name, **result}, out, indent=2)


def _define_flags() -> None:
  """Only when run as a program: importing this module (the tests) defines no flag, so it
  cannot collide with the entry points' --config."""
  config_flags.DEFINE_config_file(
      "config", None, "Config file, e.g. configs/base.py or configs/gmsrm.py:places2; override "
      "fields with --config.train.batch_size=8.", lock_config=True)
  flags.mark_flags_as_required(["config"])
  flags.DEFINE_integer("steps", 5, "Timed steps (0: compile and count only).")
  flags.DEFINE_integer("warmup", 1, "Untimed steps after the compile.")
  flags.DEFINE_integer("batch_size", None, "Global batch; the same as "
                       "--config.train.batch_size.")
  flags.DEFINE_string("json", "", "Write the row (every figure) to this JSON file.")
  flags.DEFINE_bool("pipeline", True, "Measure the input pipeline (256² configs).")
  flags.DEFINE_integer("pipeline_batches", 20, "Timed pipeline batches.")
  flags.DEFINE_string("data_dir", "", "A data_dir already holding synthetic_scenes/256 for the "
                      "pipeline (default: prepared in a temporary one).")
  flags.DEFINE_bool("checkpoint", True, "Time one orbax save of the state.")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with an unknown --config.* override named as the entry points name it."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    config_checks.exit_if_unknown_override(error, argv)
    raise


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=_parse_flags)
