"""Frozen pre-trained feature networks (flax linen) and the metrics built on them.

  vgg19      VGG-19 / VGG-16 `features` in torchvision's layout; GM-SRM eq. 11's perceptual loss.
  lpips      LPIPS v0.1 (AlexNet or VGG-16 backbone + learned linear heads).
  inception  the FID Inception-v3 (pytorch-fid's port of the TF 2015-12-05 graph), pool-3.
  fid        streaming feature statistics and the Fréchet distance.

Weights are never downloaded: `python -m gmsrm_jax.weights convert` turns the published files
into the project's format and `gmsrm_jax.weights.load` reads them (docs/WEIGHTS.md).
"""
