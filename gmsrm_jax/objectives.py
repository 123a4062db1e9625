"""Training objectives: which loss terms a paper uses and how they are weighted.

The train step is shared; an objective turns (prediction, discriminator logits, auxiliary terms
reported by the generator) into named loss terms and one weighted total, and gives the
discriminator's loss. `config.loss.objective` picks one.
"""

from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections

from gmsrm_jax import config_checks
from gmsrm_jax import losses
from gmsrm_jax import weights as weights_lib

VGG19 = "vgg19"


class Objective(Protocol):

  def generator_terms(self, *, image: jax.Array, mask: jax.Array, prediction: jax.Array,
                      real_logits: jax.Array, fake_logits: jax.Array,
                      loss_networks: dict[str, Any]) -> dict[str, jax.Array]:
    """Unweighted loss terms of G. `real_logits` are D on the ground truth (no G gradient);
    both logits are None when the adversarial term is off (no "adv_g" term then);
    `loss_networks` are the frozen networks `loss_networks(config)` loaded."""

  def generator_total(self, terms: dict[str, jax.Array],
                      loss_config: ml_collections.ConfigDict) -> jax.Array:
    """The weighted sum minimised by G."""

  def discriminator_loss(self, real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """The loss minimised by D."""


def weighted_auxiliary(terms: dict[str, jax.Array], known: tuple[str, ...],
                       loss_config: ml_collections.ConfigDict) -> jax.Array:
  """Sum of every term not in `known`, each times `config.loss.<name>_weight`.

  Terms come from the generator (e.g. the KL of GM-SRM eq. 9, the CICM ratio loss); a term
  without a configured weight is an error, never a silent zero.
  """
  total = 0.0
  for name, value in terms.items():
    if name in known:
      continue
    weight_name = f"{name}_weight"
    if weight_name not in loss_config:
      raise KeyError(f"The generator reports loss term {name!r} but config.loss has no "
                     f"{weight_name!r}.")
    total += loss_config[weight_name] * value
  return total


class GMSRMObjective:
  """GM-SRM eq. 14: λ1·L_rec (eq. 10) + λ2·L_perc (eq. 11) + λ3·L_adv (eq. 12) + the terms
  the generator reports (λ4·L_KL, eq. 9, as `kl_weight`).

  The perceptual term is computed when config.loss.perceptual_weight > 0, with the VGG-19
  weights `loss_networks` loads from config.loss.vgg19_weights.
  """

  _OWN = ("rec_known", "rec_hole", "adv_g", "perceptual")

  def generator_terms(self, *, image, mask, prediction, real_logits, fake_logits,
                      loss_networks):
    del real_logits  # Eq. 12 only looks at the fake.
    terms = losses.reconstruction_losses(prediction, image, mask)
    if fake_logits is not None:
      terms["adv_g"] = losses.generator_adversarial_loss(fake_logits)
    if VGG19 in loss_networks:
      terms["perceptual"] = losses.perceptual_loss(loss_networks[VGG19], prediction, image)
    return terms

  def generator_total(self, terms, loss_config):
    total = (loss_config.rec_weight * losses.reconstruction_loss(terms, loss_config.gamma)
             + weighted_auxiliary(terms, self._OWN, loss_config))
    if "adv_g" in terms:
      total += loss_config.adv_weight * terms["adv_g"]
    if "perceptual" in terms:
      total += loss_config.perceptual_weight * terms["perceptual"]
    return total

  def discriminator_loss(self, real_logits, fake_logits):
    return losses.discriminator_hinge_loss(real_logits, fake_logits)


def loss_networks(loss_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The frozen networks the objective needs, as host arrays (the loop places them).

  VGG-19 when config.loss.perceptual_weight > 0. Never random weights: a missing or wrong
  file is a weights.WeightsError naming it and the convert command, raised at start-up.
  """
  if not loss_config.get("perceptual_weight", 0.0):
    return {}
  path = loss_config.get("vgg19_weights", "")
  if not path:
    raise weights_lib.WeightsError(
        f"config.loss.perceptual_weight = {loss_config.perceptual_weight} needs VGG-19 "
        "weights (eq. 11): set --config.loss.vgg19_weights to a file made by "
        f"`{weights_lib.convert_command(VGG19)}` ({weights_lib.DOCS}), or set "
        "--config.loss.perceptual_weight=0 to train without the perceptual term.")
  return {VGG19: weights_lib.load(VGG19, path)}


def relativistic_logits(x_logits: jax.Array, y_logits: jax.Array) -> jax.Array:
  """CICM eq. 6 before the sigmoid: C(x) - E_y[C(y)], the mean over every logit of the batch."""
  return x_logits - jnp.mean(y_logits)


def relativistic_generator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """CICM eq. 5, L_adv: -E[log(1 - D(real, fake))] - E[log D(fake, real)].

  With D = sigmoid(z): -log(1 - sigmoid(z)) = softplus(z), -log sigmoid(z) = softplus(-z).
  """
  return (jnp.mean(jax.nn.softplus(relativistic_logits(real_logits, fake_logits)))
          + jnp.mean(jax.nn.softplus(-relativistic_logits(fake_logits, real_logits))))


def relativistic_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array
                                    ) -> jax.Array:
  """The discriminator's side of eq. 5 (roles swapped): -E[log D(real, fake)] -
  E[log(1 - D(fake, real))]."""
  return (jnp.mean(jax.nn.softplus(-relativistic_logits(real_logits, fake_logits)))
          + jnp.mean(jax.nn.softplus(relativistic_logits(fake_logits, real_logits))))


class CICMObjective:
  """CICM eq. 9: λ1·L_inpaint + λ2·L_adv (eqs. 5-6) + the terms CICM reports.

  L_inpaint is eq. 5's squared error of the raw prediction, a mean over pixels, channels and
  batch (config.loss.inpaint_form = "l2"), or GM-SRM eq. 10's hole-weighted L1 with weight
  config.loss.gamma ("hole_weighted_l1"; measured no different on the demo, DESIGN Q13). The memory's terms
  (ratio, eq. 7; inter and intra, eq. 8) come from the generator and are weighted by
  config.loss.<name>_weight; eq. 9 subtracts λ5·L_intra, so intra_weight = -λ5.
  """

  _OWN = ("inpaint", "adv_g", "rec_known", "rec_hole")

  def generator_terms(self, *, image, mask, prediction, real_logits, fake_logits,
                      loss_networks):
    del loss_networks  # CICM has no frozen loss networks.
    # Both forms are reported (the L1 terms are the base model's curves, for comparison);
    # generator_total picks the one config.loss.inpaint_form trains on.
    terms = {"inpaint": jnp.mean(jnp.square(prediction - image)),
             **losses.reconstruction_losses(prediction, image, mask)}
    if fake_logits is not None:
      terms["adv_g"] = relativistic_generator_loss(real_logits, fake_logits)
    return terms

  def generator_total(self, terms, loss_config):
    form = config_checks.added_field(loss_config, "loss.inpaint_form")
    inpaint = (terms["inpaint"] if form == "l2"
               else losses.reconstruction_loss(terms, loss_config.gamma))
    total = (loss_config.inpaint_weight * inpaint
             + weighted_auxiliary(terms, self._OWN, loss_config))
    if "adv_g" in terms:
      total += loss_config.adv_weight * terms["adv_g"]
    return total

  def discriminator_loss(self, real_logits, fake_logits):
    return relativistic_discriminator_loss(real_logits, fake_logits)


_OBJECTIVES = {"gmsrm": GMSRMObjective, "cicm": CICMObjective}


def register(name: str, objective_class) -> None:
  _OBJECTIVES[name] = objective_class


def get(loss_config: ml_collections.ConfigDict) -> Objective:
  name = loss_config.objective
  if name not in _OBJECTIVES:
    raise ValueError(f"Unknown config.loss.objective {name!r}; known: {sorted(_OBJECTIVES)}.")
  return _OBJECTIVES[name]()
