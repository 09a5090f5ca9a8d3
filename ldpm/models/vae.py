"""MR-VAE (eq. 5): diffusers' ``AutoencoderKL`` plus the loss networks it is trained with.

Image convention: our images are [N, 1, H, W] magnitudes in ~[0, 1]. The VAE sees them
replicated to 3 channels and mapped to [-1, 1] (:func:`to_vae_input`); its output is averaged
over channels and mapped back (:func:`from_vae_output`). A latent is always the posterior
*mean* times ``scaling_factor`` (0.18215 for SD), see :func:`vae_encode` / :func:`vae_decode`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers import AutoencoderKL
from torch import nn

from ..errors import LdpmInputError
from .pretrained import load_sd_component

#: Config-built VAE keys and their defaults. L levels downsample 2^(L-1)x: four levels = 8x,
#: like SD's VAE; three = 4x.
VAE_DEFAULTS: dict[str, Any] = {
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "scaling_factor": 0.18215,
    "mid_block_add_attention": True,
    # Start the posterior nearly deterministic (quant_conv's log-variance bias): a VAE trained
    # from scratch then learns in far fewer steps. None keeps diffusers' init.
    "init_logvar": None,
}


def build_vae(cfg: Mapping[str, Any] | None, sd_path: str | Path | None = None) -> AutoencoderKL:
    """An ``AutoencoderKL``: SD's (``sd_path``/vae, local files only) or a small one from ``cfg``.

    ``cfg`` keys: :data:`VAE_DEFAULTS` (other keys, e.g. training ones, are ignored).
    """
    if sd_path is not None:
        return load_sd_component(AutoencoderKL, sd_path, "vae")
    c = {**VAE_DEFAULTS, **{k: v for k, v in (cfg or {}).items() if k in VAE_DEFAULTS}}
    levels = len(c["block_out_channels"])
    if levels < 2:
        raise LdpmInputError("vae.block_out_channels", f"has {levels} level(s)",
                             "give at least 2 levels (4 = 8x downsampling, as SD's VAE)")
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(c["block_out_channels"]),
        layers_per_block=int(c["layers_per_block"]),
        latent_channels=int(c["latent_channels"]),
        norm_num_groups=int(c["norm_num_groups"]),
        scaling_factor=float(c["scaling_factor"]),
        mid_block_add_attention=bool(c["mid_block_add_attention"]),
    )
    if c["init_logvar"] is not None:
        with torch.no_grad():
            vae.quant_conv.bias[int(c["latent_channels"]):] = float(c["init_logvar"])
    return vae


def to_vae_input(x: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] in [0, 1] -> [N, 3, H, W] in [-1, 1]."""
    return x.expand(-1, 3, -1, -1) * 2.0 - 1.0


def from_vae_output(y: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> [N, 1, H, W] in ~[0, 1] (channel mean; not clamped)."""
    return (y.mean(dim=1, keepdim=True) + 1.0) / 2.0


def _shift(vae: AutoencoderKL) -> float:
    return float(getattr(vae.config, "shift_factor", None) or 0.0)


def vae_encode(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """``z = E(x)``: posterior mean times ``scaling_factor`` (eq. 6's z, eq. 9's E)."""
    mean = vae.encode(to_vae_input(x)).latent_dist.mean
    return (mean - _shift(vae)) * vae.config.scaling_factor


def vae_decode(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """``x = D(z)``: [N, 1, H, W] image in ~[0, 1] (differentiable, not clamped)."""
    y = vae.decode(z / vae.config.scaling_factor + _shift(vae)).sample
    return from_vae_output(y)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix ``NLayerDiscriminator``): one logit per patch.

    Takes [N, in_channels, H, W] images in [-1, 1] (the VAE's input space).
    """

    def __init__(self, in_channels: int = 3, ndf: int = 16, n_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for i in range(1, n_layers + 1):
            out = ndf * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out),
                       nn.LeakyReLU(0.2, True)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


VGG_OFF_NOTE = "VGG term off: no local VGG16 weights"


class VGGPerceptual(nn.Module):
    """``||VGG(x_hat) - VGG(x)||_1`` of eq. 5 on torchvision VGG16 features (relu1_2 ... relu4_3).

    Never downloads: ``weights_path`` is a local torchvision ``vgg16`` state dict
    (``vgg16-397923af.pth``). With ``None`` the term is off (``enabled`` False, loss 0).
    Inputs are [N, 1, H, W] images in [0, 1].
    """

    LAYERS = (3, 8, 15, 22)  # relu1_2, relu2_2, relu3_3, relu4_3 in vgg16().features

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        self.enabled = weights_path is not None
        self.features: nn.Module | None = None
        if not self.enabled:
            return
        from torchvision.models.vgg import cfgs, make_layers

        path = Path(weights_path)
        if not path.is_file():
            raise LdpmInputError(path, "VGG16 weights file not found",
                                 "give a local torchvision vgg16 state dict, or null to turn the VGG term off")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if any(k.startswith("features.") for k in state):  # a whole vgg16() state dict
            state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        features = make_layers(cfgs["D"])  # = torchvision.models.vgg16(weights=None).features
        features.load_state_dict(state)
        self.features = features[: self.LAYERS[-1] + 1].eval()
        self.features.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "VGGPerceptual":
        super().train(mode)
        if self.features is not None:
            self.features.eval()  # frozen feature extractor
        return self

    def per_sample(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The distance of each sample, [N]: the mean absolute feature difference per layer,
        summed over the layers (0 when the term is off)."""
        if self.features is None:
            return x_hat.new_zeros(x_hat.shape[0])
        a = (x_hat.expand(-1, 3, -1, -1) - self.mean) / self.std
        b = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        loss = x_hat.new_zeros(x_hat.shape[0])
        for i, layer in enumerate(self.features):
            a, b = layer(a), layer(b)
            if i in self.LAYERS:
                loss = loss + (a - b).abs().flatten(1).mean(1)
        return loss

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.per_sample(x_hat, x).mean()
