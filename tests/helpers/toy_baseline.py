"""A trained baseline declared in one module outside the package (tests/test_add_baseline.py
registers it through LDPM_BASELINE_MODULES): the zero-filled magnitude plus one learned 3x3
convolution of it, trained with the L1 loss."""

from ldpm.baselines import PIXEL_LOSS_SCHEMA, Baseline, pixel_loss_of


def build(cfg):
    import torch

    return torch.nn.Conv2d(1, 1, int(cfg["model"]["kernel"]), padding="same")


def forward(model, batch, cfg, options):
    return batch["x_u"] + model(batch["x_u"])


_PRESET = {"model": {"kernel": 3}, "loss": "l1", "optimizer": "adam", "lr": 1e-3,
           "batch_size": 2, "crop": None, "n_steps": 2}

BASELINE = Baseline(name="toy", title="Toy (one conv)", build=build, forward=forward,
                    loss=pixel_loss_of(forward), image_domain=True,
                    schema={"loss": PIXEL_LOSS_SCHEMA}, default=_PRESET, paper=_PRESET)
