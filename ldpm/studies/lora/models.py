"""Low-rank adapters (LoRA) on the denoiser U-Net's attention projections.

A LoRA adapter adds ``ΔW = (alpha / r) · B A`` (``A``: r x d_in, ``B``: d_out x r, ``B = 0`` at
init) beside each targeted linear layer ``W`` of the frozen U-Net, so the adapted layer computes
``W x + s · (alpha / r) · B A x`` with ``s`` the adapter's weight at sampling time. The base
weights ``W`` are never touched. Adapters are made by ``peft`` through diffusers'
``UNet2DConditionModel.add_adapter(LoraConfig(...))``, saved and loaded as diffusers LoRA weights
(``pytorch_lora_weights.safetensors``, the ``LoraConfig`` in its metadata), and combined with
``set_adapters([...], weights=[...])``: with two adapters the layer adds ``s1 ΔW1 + s2 ΔW2``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from ...errors import LdpmInputError
from ...logs import warnings_once
from ...models.pretrained import check_checkpoint_folder, loading_checkpoint

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
#: the attention projections of every (self and cross) attention block of the U-Net
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@contextmanager
def _several_adapters_expected() -> Iterator[None]:
    """peft warns that a second adapter joins the first (that is the point here): logged once."""
    with warnings_once("LoRA adapters"):
        yield


def _is_adapter_param(param_name: str, adapter: str) -> bool:
    return (".lora_A." in param_name or ".lora_B." in param_name) and f".{adapter}." in param_name


def adapter_parameters(unet: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    """The LoRA parameters (``lora_A``/``lora_B``) of one named adapter, by parameter name."""
    params = {n: p for n, p in unet.named_parameters() if _is_adapter_param(n, adapter)}
    if not params:
        raise LdpmInputError(f"adapter {adapter!r}", "has no LoRA parameters in this U-Net",
                             "add or load the adapter first")
    return params


def count_parameters(params) -> int:
    """Number of scalars in an iterable (or mapping) of tensors."""
    values = params.values() if isinstance(params, Mapping) else params
    return int(sum(p.numel() for p in values))


def add_lora(unet: UNet2DConditionModel, adapter: str, rank: int, alpha: float | None = None,
             targets: Sequence[str] = DEFAULT_TARGETS, seed: int = 0) -> dict[str, nn.Parameter]:
    """Add adapter ``adapter`` (rank ``rank``, ``lora_alpha = alpha`` or ``rank``) on ``targets``.

    The adapter becomes the only active one; its parameters are the only trainable ones of the
    U-Net (every base weight has ``requires_grad = False``). ``A`` is drawn from a generator seeded
    with ``seed`` (kaiming-uniform, peft's default), ``B = 0``: the adapted U-Net starts equal to
    the base one. Returns the adapter's parameters.
    """
    from peft import LoraConfig

    if int(rank) < 1:
        raise LdpmInputError(f"LoRA adapter {adapter!r}", f"rank {rank} is not positive", "use rank >= 1")
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n, _ in unet.named_modules())]
    if missing:
        raise LdpmInputError(f"LoRA adapter {adapter!r}", f"target modules {missing} are not in the U-Net",
                             f"use module names such as {', '.join(DEFAULT_TARGETS)}")
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                        target_modules=list(targets), init_lora_weights=True, lora_dropout=0.0)
    with torch.random.fork_rng(devices=[]), _several_adapters_expected():
        torch.manual_seed(int(seed))
        unet.add_adapter(config, adapter_name=adapter)
    unet.set_adapters([adapter])
    unet.requires_grad_(False)
    params = adapter_parameters(unet, adapter)
    for p in params.values():
        p.requires_grad_(True)
    return params


def save_lora(unet: UNet2DConditionModel, adapter: str, directory: str | Path) -> Path:
    """Write ``directory/pytorch_lora_weights.safetensors`` (diffusers' LoRA layout + config)."""
    directory = Path(directory)
    unet.save_lora_adapter(directory, adapter_name=adapter, weight_name=LORA_WEIGHTS_FILE)
    return directory / LORA_WEIGHTS_FILE


def load_lora(unet: UNet2DConditionModel, directory: str | Path, adapter: str) -> None:
    """Load the adapter saved in ``directory`` into ``unet`` under the name ``adapter``."""
    directory = Path(directory)
    if not (directory / LORA_WEIGHTS_FILE).is_file():
        raise LdpmInputError(directory, f"no {LORA_WEIGHTS_FILE}", "train the LoRA stage first")
    fix = f"delete {directory} and rerun its LoRA stage"
    check_checkpoint_folder(directory, fix)
    with _several_adapters_expected(), loading_checkpoint(directory, fix):
        unet.load_lora_adapter(directory, prefix=None, weight_name=LORA_WEIGHTS_FILE,
                               adapter_name=adapter, local_files_only=True)


def combine_adapters(unet: UNet2DConditionModel, adapters: Sequence[str],
                     weights: Sequence[float] | None = None) -> None:
    """Activate ``adapters`` with weights ``s_i`` (default 1): each LoRA layer adds ``Σ s_i ΔW_i``."""
    adapters = list(adapters)
    weights = [1.0] * len(adapters) if weights is None else [float(w) for w in weights]
    if len(weights) != len(adapters):
        raise LdpmInputError("LoRA combination", f"{len(adapters)} adapters but {len(weights)} weights",
                             "give one weight per adapter")
    unet.set_adapters(adapters, weights=weights)


class AdapterState(nn.Module):
    """One adapter's weights as a module for the training loop's ``last.pt``.

    ``state_dict`` / ``load_state_dict`` see only the adapter's ``lora_A``/``lora_B`` tensors (the
    frozen base U-Net is not written into every checkpoint); loading copies into the very
    parameters the U-Net uses. ``train()`` / ``eval()`` leave the U-Net as it is.
    """

    def __init__(self, unet: nn.Module, adapter: str):
        super().__init__()
        self._params = adapter_parameters(unet, adapter)  # a plain dict: not registered twice
        self.adapter = adapter

    def parameters(self, recurse: bool = True):  # what data-parallel ranks broadcast
        return iter(self._params.values())

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {n: p.detach().clone() for n, p in self._params.items()}

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        if set(state_dict) != set(self._params):
            raise LdpmInputError(f"adapter {self.adapter!r}", "checkpoint keys do not match its parameters",
                                 "delete the checkpoint folder to train from scratch")
        with torch.no_grad():
            for n, p in self._params.items():
                p.copy_(state_dict[n])
        return nn.modules.module._IncompatibleKeys([], [])

    def train(self, mode: bool = True) -> "AdapterState":
        self.training = mode
        return self
