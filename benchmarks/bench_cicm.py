"""The memory's share of the UNet-CICM train step at the paper's sizes, on this machine.

  python benchmarks/bench_cicm.py --channels=256,512 --steps=3

Paper sizes (§5): 256x256 images, batch 8, the UNet's 32x32 bottleneck as the regions
(8 * 32 * 32 = 8192 regional features per step), C channels, L = 13 sets of K = 40 features.
For each C it prints the median train-step time of UNet-CICM and of the same UNet without CICM
(configs/unet_cicm.py and its "unet" ablation, through benchmarks/bench_train_step.py), their
difference as CICM's share of the UNet-CICM step, and the memory alone: eqs. 1-4 and 8 on
random regional features, forward and backward, jitted in isolation, also as a share of the
UNet-CICM step (the steadier estimate when the difference drowns in timing noise), and XLA's
FLOP count of both train steps (noise-free).
"""

import functools
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from benchmarks import bench_train_step  # pylint: disable=g-import-not-at-top
from configs import unet_cicm  # pylint: disable=g-import-not-at-top
from gmsrm_jax.memory import cicm  # pylint: disable=g-import-not-at-top

_CHANNELS = flags.DEFINE_list("channels", ["256", "512"], "Bottleneck widths C to measure.")


def _config(channels: int, ablation: str = ""):
  config = unet_cicm.get_config("," + ablation if ablation else "")
  config.model.unet_channels = (64, 128, 256, channels)
  return config


def bench_memory_alone(config) -> float:
  """Median seconds of one memory step: augmentation, generalization, eq. 8, gradients."""
  cicm_config = config.model.cicm
  options = cicm.CICMOptions(normalized=cicm_config.normalized,
                             temperature=cicm_config.temperature)
  channels = config.model.unet_channels[-1]
  regions = config.train.batch_size * (config.data.crop_size // 8) ** 2
  state = cicm.init_state(jax.random.key(0), cicm_config.num_sets, cicm_config.set_size,
                          channels, options)
  keys = jax.random.split(jax.random.key(1), 3)
  features = jax.random.normal(keys[0], (regions, channels))
  complete = jax.random.uniform(keys[1], (regions,)) < 0.5
  ratio = jax.random.uniform(keys[2], (regions,))

  def memory_loss(features, ratio):
    augmented = cicm.context_augmentation(state, features, ratio, options)
    new_state = cicm.context_generalization(state, features, complete, options)
    inter, intra = cicm.set_similarity_losses(new_state)
    return jnp.mean(jnp.square(augmented)) + 20.0 * inter - 0.5 * intra, new_state

  step = jax.jit(jax.value_and_grad(memory_loss, argnums=(0, 1), has_aux=True))
  jax.block_until_ready(step(features, ratio))
  times = []
  for _ in range(max(bench_train_step._STEPS.value, 5)):  # pylint: disable=protected-access
    start = time.perf_counter()
    jax.block_until_ready(step(features, ratio))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}")
  print(f"{'C':>4} {'regions':>8} {'UNet s/step':>12} {'UNet-CICM s/step':>17} "
        f"{'CICM share':>11} {'memory alone s':>15} {'alone share':>12} "
        f"{'UNet GFLOP':>11} {'UNet-CICM GFLOP':>16}")
  for channels in map(int, _CHANNELS.value):
    with_cicm = _config(channels)
    plain = bench_train_step.bench_config(_config(channels, "unet"))
    equipped = bench_train_step.bench_config(with_cicm)
    alone = bench_memory_alone(with_cicm)
    share = (equipped["step_s"] - plain["step_s"]) / equipped["step_s"]
    regions = with_cicm.train.batch_size * (with_cicm.data.crop_size // 8) ** 2
    print(f"{channels:>4} {regions:>8} {plain['step_s']:>12.3f} {equipped['step_s']:>17.3f} "
          f"{share:>11.1%} {alone:>15.3f} {alone / equipped['step_s']:>12.1%} "
          f"{plain['gflop_per_step']:>11.1f} {equipped['gflop_per_step']:>16.1f}")


if __name__ == "__main__":
  app.run(main)
