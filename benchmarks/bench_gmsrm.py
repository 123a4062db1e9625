"""GM-SRM stage 2: FLOPs per 256² image of every Table IV row, and the step time on this CPU.

  python benchmarks/bench_gmsrm.py                       # FLOPs at 256², step time at demo size
  python benchmarks/bench_gmsrm.py --time_variants=tiny,demo --rows=gm_srm
  python benchmarks/bench_gmsrm.py --upsample=transposed,fir_then_conv --time_variants=
      # both forms of the memory's upsampling conv (model.memory.architecture.upsample)

FLOPs come from XLA's cost analysis of the lowered (unoptimised) programs, so no 256² compile
is needed: "inference" is the completion evaluation and export run (`step.predict`), "train"
the whole step (G forward + backward through the frozen memory, D twice, Adam, EMA), both
divided by the batch; --compiled adds the compiled train step's count (minutes at 256² on a
CPU). Step times compile and run the train step (bench_train_step.py).
"""

import functools
import sys

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from benchmarks import bench_train_step  # pylint: disable=g-import-not-at-top
from configs import gmsrm as gmsrm_config  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import parallel  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
from gmsrm_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

_ROWS = flags.DEFINE_list("rows", ["base", "gm_bm", "gm_csv", "gm_srm", "gmsrm_cicm"],
                          "configs/gmsrm.py ablations (Table IV rows).")
_FLOP_VARIANT = flags.DEFINE_string("flop_variant", "places2",
                                    "configs/gmsrm.py variant for the FLOP count (256²).")
_TIME_VARIANTS = flags.DEFINE_list("time_variants", ["tiny", "demo"],
                                   "configs/gmsrm.py variants whose step time is measured.")
_COMPILED = flags.DEFINE_bool("compiled", False, "Also compile the 256² train step and report "
                               "the optimised program's FLOPs.")
_UPSAMPLE = flags.DEFINE_list("upsample", [""], "The memory's upsampling forms to measure, "
                              "each in turn ('': the config's).")


def _config(arg: str, upsample: str):
  config = gmsrm_config.get_config(arg)
  if upsample and "memory" in config.model:
    config.model.memory.architecture.upsample = upsample
  return config


def _inputs(config, batch_size):
  size = config.data.crop_size
  rng = np.random.default_rng(0)
  return {"image": rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32),
          "mask": (rng.uniform(size=(batch_size, size, size, 1)) < 0.3).astype(np.float32)}


def flops_per_image(config) -> dict[str, float]:
  """GFLOP per image of inference and of one train step, from the lowered programs."""
  config.loss.perceptual_weight = 0.0  # The VGG-19 term is counted separately (below).
  components = state_lib.create_components(config)
  size = config.data.crop_size
  state = jax.eval_shape(functools.partial(state_lib.init_state, components,
                                           jax.random.PRNGKey(0), (1, size, size, 3)))
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                       _inputs(config, config.train.batch_size))
  variables = jax.eval_shape(step_lib.generator_variables, state.g_params, state.g_state,
                             state.frozen)
  predict = jax.jit(functools.partial(step_lib.predict, components)).lower(
      variables, batch["image"], batch["mask"])
  train = jax.jit(functools.partial(step_lib.train_step, components, config)).lower(
      state, batch)
  per_image = lambda lowered: lowered.cost_analysis()["flops"] / config.train.batch_size / 1e9
  trainable = sum(x.size for x in jax.tree.leaves(state.g_params))
  frozen = sum(x.size for x in jax.tree.leaves(state.frozen))
  return {"inference": per_image(predict), "train": per_image(train),
          "train_compiled": per_image(train.compile()) if _COMPILED.value else float("nan"),
          "trainable_m": trainable / 1e6, "frozen_m": frozen / 1e6}


def main(argv):
  del argv
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}")
  for upsample in _UPSAMPLE.value:
    print(f"\nFLOPs per image, configs/gmsrm.py:{_FLOP_VARIANT.value},<row> "
          f"(XLA cost analysis, unoptimised HLO), upsample {upsample or 'as configured'}")
    print(f"{'row':>11} {'G params M':>11} {'frozen M':>9} {'inference GFLOP':>16} "
          f"{'train step GFLOP':>17} {'compiled':>9}")
    for row in _ROWS.value:
      r = flops_per_image(_config(f"{_FLOP_VARIANT.value},{row}", upsample))
      print(f"{row:>11} {r['trainable_m']:>11.2f} {r['frozen_m']:>9.2f} "
            f"{r['inference']:>16.1f} {r['train']:>17.1f} {r['train_compiled']:>9.1f}")
  if not _TIME_VARIANTS.value:
    return
  print("\nTrain step on this machine (random data, memory with random weights)")
  print(f"{'config':>18} {'upsample':>13} {'image':>6} {'batch':>6} {'compile s':>10} "
        f"{'step s':>8} {'img/s':>8}")
  for variant in _TIME_VARIANTS.value:
    for row in _ROWS.value:
      for upsample in _UPSAMPLE.value:
        config = _config(f"{variant},{row}", upsample)
        r = bench_train_step.bench_config(config)
        form = config.model.memory.architecture.upsample if "memory" in config.model else "-"
        print(f"{variant + ',' + row:>18} {form:>13} {r['image']:>6} {r['batch']:>6} "
              f"{r['compile_s']:>10.2f} {r['step_s']:>8.3f} {r['img_per_s']:>8.1f}")


if __name__ == "__main__":
  app.run(main)
