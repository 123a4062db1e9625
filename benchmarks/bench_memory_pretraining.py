"""Stage-1 (generative memory) step cost, phase by phase: G main, G path length, D main, D R1.

  python benchmarks/bench_memory_pretraining.py --configs=memory_synthetic:tiny,memory_synthetic
  python benchmarks/bench_memory_pretraining.py --configs=memory_places2 --notime
  python benchmarks/bench_memory_pretraining.py --configs=memory_places2 --nocompile

For each config: every phase jitted on its own and each variant of the train step (the lazy
phases it runs: "pl+r1", "plain", "pl", "r1"; `mp.step_variants`), on this machine's default
device, batch = config.train.batch_size. Prints compile seconds, the median seconds per call
over --steps timed calls after a warm-up (skipped with --notime, e.g. for 256x256 on a CPU),
and XLA's cost-analysis FLOPs per image (of the compiled program; with --nocompile, of the
lowered one: seconds instead of minutes at 256², nothing compiled or run), then the amortised
FLOPs per step: the variants weighted by how often steps pick them over one period of the
intervals.
  python benchmarks/bench_memory_pretraining.py --configs=memory_places2 --notime \
      --phases="G forward" --upsample=transposed,fir_then_conv   # the two upsampling forms
  python benchmarks/bench_memory_pretraining.py --upsampling_layer=16,16,64 --steps=10

"G forward" is the memory alone (mapping + synthesis, the training form of the modulated
convs), the network stage 2 runs every step. --phases picks phases (labels as printed; the
step variants are "step <name>"); --upsample measures each model.upsample form in turn.

--upsampling_layer=B,H,C times one modulated upsampling layer alone ([B,H,H,C] -> [B,2H,2H,C],
training form), forward and each gradient, in every form considered for it (DESIGN M5):
the one the memory uses and three that compute the same function differently (checked
before timing) or, FIR then conv, the same away from a 1-pixel border.
"""

import collections
import functools
import importlib
import math
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from gmsrm_jax.stylegan import layers  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import memory_pretraining as mp  # pylint: disable=g-import-not-at-top

_CONFIGS = flags.DEFINE_list("configs", ["memory_synthetic:tiny", "memory_synthetic"],
                             "configs/<module>[:variant] to measure.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per phase.")
_TIME = flags.DEFINE_bool("time", True, "Run the phases (not only compile + cost analysis).")
_COMPILE = flags.DEFINE_bool("compile", True,
                             "Compile; --nocompile: FLOPs of the lowered programs only.")
_UPSAMPLING_LAYER = flags.DEFINE_list("upsampling_layer", [], "B,H,C: time the upsampling "
                                      "layer's forms instead of the configs.")
_UPSAMPLE = flags.DEFINE_list("upsample", [""], "model.upsample forms to measure, each in turn "
                              "('': the config's).")


def generator_forward(components, config, state, real, key):
  z = layers.standard_normal(key, (real.shape[0], config.model.z_dim))
  return components.generator.apply({"params": state.g_params}, z, rngs={"noise": key})


PHASES = (("G forward", generator_forward), ("G main", mp.generator_main),
          ("G path length", mp.generator_path_length), ("D main", mp.discriminator_main),
          ("D R1", mp.discriminator_r1))
STEP = "steps"  # Every step variant ("step <name>" picks one).
_PHASES = flags.DEFINE_list("phases", [label for label, _ in PHASES] + [STEP],
                            "Phases to measure (labels as printed).")


def _config(name: str, upsample: str = ""):
  module, _, variant = name.partition(":")
  config = importlib.import_module(f"configs.{module}").get_config(variant)
  if upsample:
    config.model.upsample = upsample
  return config


def _measure(fn, args, timed: bool) -> dict[str, float]:
  jitted = jax.jit(fn)
  if not _COMPILE.value:
    return {"compile_s": float("nan"), "flops": jitted.lower(*args).cost_analysis()["flops"]}
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  result = {"compile_s": time.perf_counter() - start,
            "flops": (compiled.cost_analysis() or {}).get("flops", float("nan"))}
  if timed:
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(_STEPS.value):
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - start)
    result["call_s"] = statistics.median(times)
  return result


def bench(name: str, upsample: str = "") -> list[tuple[str, dict[str, float]]]:
  config = _config(name, upsample)
  batch, size = config.train.batch_size, config.data.crop_size
  components = mp.create_components(config)
  init = functools.partial(mp.init_state, components, config, jax.random.PRNGKey(0))
  real = jax.numpy.asarray(np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)),
                           jax.numpy.float32)
  if _COMPILE.value:
    state = jax.jit(init)()
  else:
    state, real = jax.eval_shape(init), jax.ShapeDtypeStruct(real.shape, real.dtype)
  key = jax.random.PRNGKey(1)
  timed = _TIME.value and _COMPILE.value
  rows = []
  for label, phase in PHASES:
    if label in _PHASES.value:
      rows.append((label, _measure(functools.partial(phase, components, config),
                                   (state, real, key), timed)))
  for name, step in mp.step_variants(config).items():
    if f"step {name}" in _PHASES.value or STEP in _PHASES.value:
      rows.append((f"step {name}", _measure(functools.partial(step, components, config),
                                            (state, {"image": real}), timed)))
  for _, row in rows:
    row["gflop_per_image"] = row["flops"] / batch / 1e9
  return rows


def amortised_gflop_per_image(config, rows) -> float:
  """The variants' FLOPs weighted by how often a step picks each (one period of intervals)."""
  period = math.lcm(*mp.lazy_phases(config).values())
  picks = collections.Counter(mp.pick_variant(config, step) for step in range(period))
  per_variant = {label.removeprefix("step "): row["gflop_per_image"] for label, row in rows}
  return sum(count * per_variant[name] for name, count in picks.items()) / period


def _polyphase_convs(x, kernel):
  # Output phase (a, b) of the transposed conv: the kernel taps of parities (a, b) as one conv
  # at input resolution (2x2, 2x1, 1x2, 1x1), each padded to (H+1) x (W+1).
  pads = lambda a, b: ((1 - a, 1), (1 - b, 1))
  phases = [[jax.lax.conv_general_dilated(x, kernel[a::2, b::2], (1, 1), pads(a, b),
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
             for b in (0, 1)] for a in (0, 1)]
  batch, height, width, _ = x.shape
  full = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2).reshape(
      batch, 2 * height + 2, 2 * width + 2, -1)[:, :2 * height + 1, :2 * width + 1]
  return layers.blur_for_upsampled(full)


def _conv_transpose(x, kernel):
  full = jax.lax.conv_transpose(x, kernel, (2, 2), "VALID",
                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return layers.blur_for_upsampled(full)


def _modulated(upsampling_conv):
  def layer(x, kernel, styles):
    y = upsampling_conv(x * styles[:, None, None, :], kernel)
    return y * layers.demodulation(kernel, styles)[:, None, None, :]
  return layer


UPSAMPLING_FORMS = (
    ("matmul + overlap-add (used)", lambda x, k, s: layers.modulated_conv(x, k, s, up=True)),
    ("FIR, then 3x3 conv", lambda x, k, s: layers.modulated_conv(layers.upsample_2x(x), k, s)),
    ("conv_transpose + FIR", _modulated(_conv_transpose)),
    ("polyphase convs + FIR", _modulated(_polyphase_convs)))


def bench_upsampling_layer(batch: int, size: int, channels: int) -> None:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, channels, channels)), jnp.float32)
  styles = jnp.asarray(rng.uniform(0.5, 1.5, (batch, channels)), jnp.float32)
  print(f"\nmodulated upsampling layer [{batch},{size},{size},{channels}] -> "
        f"[{batch},{2 * size},{2 * size},{channels}], ms per call (median of {_STEPS.value})")
  print(f"{'form':>28} {'forward':>8} {'d/dx':>8} {'d/dkernel':>10} {'fwd GFLOP':>10}")
  used = jax.jit(UPSAMPLING_FORMS[0][1])(x, kernel, styles)
  for label, layer in UPSAMPLING_FORMS:
    border = 1 if label.startswith("FIR") else 0
    inner = lambda y: np.asarray(y)[:, border:y.shape[1] - border, border:y.shape[2] - border]
    np.testing.assert_allclose(inner(jax.jit(layer)(x, kernel, styles)), inner(used),
                               rtol=1e-3, atol=1e-3, err_msg=label)
    loss = lambda *args: jnp.sum(jnp.square(layer(*args)))
    rows = [_measure(fn, (x, kernel, styles), True)
            for fn in (layer, jax.grad(loss, 0), jax.grad(loss, 1))]
    print(f"{label:>28} {rows[0]['call_s'] * 1e3:>8.2f} {rows[1]['call_s'] * 1e3:>8.2f} "
          f"{rows[2]['call_s'] * 1e3:>10.2f} {rows[0]['flops'] / 1e9:>10.3f}")


def _print_rows(rows) -> None:
  print(f"{'phase':>14} {'compile s':>10} {'s/call':>8} {'GFLOP/img':>10}")
  for label, row in rows:
    call = f"{row['call_s']:8.4f}" if "call_s" in row else f"{'-':>8}"
    compile_s = f"{row['compile_s']:10.2f}" if _COMPILE.value else f"{'-':>10}"
    print(f"{label:>14} {compile_s} {call} {row['gflop_per_image']:>10.3f}")


def main(argv):
  del argv
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}")
  if _UPSAMPLING_LAYER.value:
    bench_upsampling_layer(*map(int, _UPSAMPLING_LAYER.value))
    return
  for name in _CONFIGS.value:
    for upsample in _UPSAMPLE.value:
      config = _config(name, upsample)
      print(f"\n{name}: {config.data.crop_size}x{config.data.crop_size}, batch "
            f"{config.train.batch_size}, pl every {config.loss.pl_interval}, R1 every "
            f"{config.loss.r1_interval}, upsample {config.model.get('upsample')}")
      rows = bench(name, upsample)
      _print_rows(rows)
      if all(f"step {v}" in dict(rows) for v in mp.step_variants(config)):
        print(f"amortised step: {amortised_gflop_per_image(config, rows):.3f} GFLOP/img")


if __name__ == "__main__":
  app.run(main)
