"""The generator of MRControlNet: a frozen denoiser U-Net plus a trainable control branch (eq. 6-7).

* :func:`build_denoiser` gives diffusers' ``UNet2DConditionModel``: SD 2-1-base's ``unet`` from a
  local folder, or a tiny one from a config dict (trained on MR latents when no SD is at hand).
* The text prompt is empty (paper III-A-2): :func:`null_text_embedding` is a fixed context.
* :class:`MRControlNet` follows IRControlNet (DiffBIR): the control branch is a trainable copy
  of the denoiser's encoder and middle block whose input is ``concat(z_t, c_latent)``, the extra
  input weights initialised to zero. Since a convolution is linear in its input channels,
  ``conv_in(concat(z_t, c))`` equals ``conv_in(z_t) + conv_c(c)`` with ``conv_c`` the extra
  weights; diffusers' ControlNet computes ``conv_in(z_t) + controlnet_cond_embedding(c)``, so we
  replace its (8x downsampling, image-space) condition embedding by :class:`LatentConditionEmbedding`,
  a zero-initialised, bias-free conv with ``conv_in``'s kernel on the 4-channel latent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import LdpmInputError
from .pretrained import load_sd_component

#: Config-built (tiny) denoiser keys and their defaults.
DENOISER_DEFAULTS: dict[str, Any] = {
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 16,
    "latent_channels": 4,
}

NULL_EMBEDDING_FILE = "null_text_embedding.safetensors"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def build_denoiser(cfg: Mapping[str, Any] | None,
                   sd_path: str | Path | None = None) -> UNet2DConditionModel:
    """ε-prediction U-Net: SD's (``sd_path``/unet, local files only) or a tiny one from ``cfg``."""
    if sd_path is not None:
        return load_sd_component(UNet2DConditionModel, sd_path, "unet")
    c = {**DENOISER_DEFAULTS, **{k: v for k, v in (cfg or {}).items() if k in DENOISER_DEFAULTS}}
    return UNet2DConditionModel(
        in_channels=int(c["latent_channels"]), out_channels=int(c["latent_channels"]),
        down_block_types=tuple(c["down_block_types"]), up_block_types=tuple(c["up_block_types"]),
        block_out_channels=tuple(c["block_out_channels"]),
        layers_per_block=int(c["layers_per_block"]),
        cross_attention_dim=int(c["cross_attention_dim"]),
        attention_head_dim=int(c["attention_head_dim"]),
        norm_num_groups=int(c["norm_num_groups"]),
    )


def null_text_embedding(denoiser: UNet2DConditionModel,
                        sd_path: str | Path | None = None) -> torch.Tensor:
    """The fixed context for the empty prompt, [1, L, cross_attention_dim].

    Config-built denoisers: zeros of shape [1, 1, D]. SD: ``sd_path/null_text_embedding.safetensors``
    if present, else the CLIP text encoder's output for ``""`` (needs ``transformers``).
    """
    dim = int(denoiser.config.cross_attention_dim)
    if sd_path is None:
        return torch.zeros(1, 1, dim)
    path = Path(sd_path)
    cached = path / NULL_EMBEDDING_FILE
    if cached.is_file():
        return load_file(cached)["null"]
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as e:
        raise LdpmInputError(path, "the empty-prompt embedding of SD needs the CLIP text encoder, "
                             "but `transformers` is not installed",
                             f"pip install transformers, or put a precomputed [1, 77, {dim}] tensor "
                             f"under key 'null' in {cached}") from e
    tok = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
    enc = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
    ids = tok([""], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        return enc(ids)[0].float()


class LatentConditionEmbedding(nn.Module):
    """Zero-initialised, bias-free conv on ``c_latent``: the extra input weights of IRControlNet."""

    def __init__(self, cond_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(cond_channels, out_channels, kernel_size, padding=kernel_size // 2,
                              bias=False)
        nn.init.zeros_(self.conv.weight)

    def forward(self, c_latent: torch.Tensor) -> torch.Tensor:
        return self.conv(c_latent)


def _latent_conditioned(controlnet: ControlNetModel, cond_channels: int) -> ControlNetModel:
    k = controlnet.conv_in.kernel_size[0]
    controlnet.controlnet_cond_embedding = LatentConditionEmbedding(
        cond_channels, controlnet.conv_in.out_channels, k)
    return controlnet


def build_controlnet(denoiser: UNet2DConditionModel, cond_channels: int = 4) -> ControlNetModel:
    """A trainable copy of ``denoiser``'s encoder + middle block taking a latent condition."""
    cn = ControlNetModel.from_unet(denoiser, conditioning_channels=cond_channels,
                                   conditioning_embedding_out_channels=(16,))
    return _latent_conditioned(cn, cond_channels)


def save_controlnet(controlnet: ControlNetModel, directory: str | Path) -> None:
    """diffusers layout: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (one file)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    controlnet.save_config(directory)
    state = {k: v.detach().contiguous() for k, v in controlnet.state_dict().items()}
    save_file(state, directory / WEIGHTS_FILE)
    (directory / "ldpm_condition.json").write_text(json.dumps(
        {"controlnet_cond_embedding": "LatentConditionEmbedding",
         "cond_channels": int(controlnet.config.conditioning_channels)}, indent=2) + "\n")


def load_controlnet_model(directory: str | Path) -> ControlNetModel:
    """Inverse of :func:`save_controlnet`."""
    directory = Path(directory)
    if not (directory / WEIGHTS_FILE).is_file():
        raise LdpmInputError(directory, f"no {WEIGHTS_FILE}", "train the controlnet stage first")
    config = ControlNetModel.load_config(directory)
    cn = _latent_conditioned(ControlNetModel.from_config(config), int(config["conditioning_channels"]))
    cn.load_state_dict(load_file(directory / WEIGHTS_FILE), strict=True)
    return cn


def _timesteps(t: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device)
    return t.expand(batch) if t.ndim == 0 else t


class NullContextEps(nn.Module):
    """``eps_fn(z_t, t, c_latent=None)`` of an unconditional denoiser with the empty prompt."""

    def __init__(self, denoiser: UNet2DConditionModel, null_embedding: torch.Tensor):
        super().__init__()
        self.denoiser = denoiser
        self.register_buffer("null_embedding", null_embedding.detach().clone(), persistent=False)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor | int,
                c_latent: torch.Tensor | None = None) -> torch.Tensor:
        b = z_t.shape[0]
        ctx = self.null_embedding.to(z_t.dtype).expand(b, -1, -1)
        return self.denoiser(z_t, _timesteps(t, b, z_t.device), encoder_hidden_states=ctx,
                             return_dict=False)[0]


class MRControlNet(nn.Module):
    """``eps_theta(z_t, p="", t, c_latent)`` of eq. 7: frozen denoiser + trainable control branch."""

    def __init__(self, denoiser: UNet2DConditionModel, controlnet: ControlNetModel,
                 null_embedding: torch.Tensor):
        super().__init__()
        self.denoiser = denoiser
        self.denoiser.requires_grad_(False)
        self.denoiser.eval()
        self.controlnet = controlnet
        self.register_buffer("null_embedding", null_embedding.detach().clone(), persistent=False)

    @classmethod
    def from_denoiser(cls, denoiser: UNet2DConditionModel, null_embedding: torch.Tensor,
                      cond_channels: int = 4) -> "MRControlNet":
        return cls(denoiser, build_controlnet(denoiser, cond_channels), null_embedding)

    def train(self, mode: bool = True) -> "MRControlNet":
        super().train(mode)
        self.denoiser.eval()  # frozen
        return self

    def forward(self, z_t: torch.Tensor, t: torch.Tensor | int, c_latent: torch.Tensor,
                conditioning_scale: float = 1.0) -> torch.Tensor:
        b = z_t.shape[0]
        t = _timesteps(t, b, z_t.device)
        ctx = self.null_embedding.to(z_t.dtype).expand(b, -1, -1)
        down, mid = self.controlnet(z_t, t, encoder_hidden_states=ctx, controlnet_cond=c_latent,
                                    conditioning_scale=conditioning_scale, return_dict=False)
        return self.denoiser(z_t, t, encoder_hidden_states=ctx,
                             down_block_additional_residuals=down,
                             mid_block_additional_residual=mid, return_dict=False)[0]
