"""Natural photographs that ship inside scikit-image, for the VAE that MR-VAE is fine-tuned from.

The paper fine-tunes MR-VAE from Stable Diffusion's VAE, a VAE trained on natural images. Without
SD weights, the ``vae_natural`` stage trains a VAE of the default's size on these photographs
first; MR-VAE then starts from it, and "w/o MR-VAE" / Fig. 3 compare the two, as in the paper.

Images (all bundled in the scikit-image wheel, loaded offline; licences as each
``skimage.data`` function's docstring gives them): astronaut (NASA, public domain), brick and
gravel and grass (CC0 textures), camera (CC0, Lav Varshney), cat/chelsea and coffee (CC0,
Stefan van der Walt / Rachel Michetti), coins (public domain, Walters Art Museum), hubble_deep_field
(NASA, public domain), immunohistochemistry (public domain), moon (public domain), retina
(CC0, Häggström), rocket (SpaceX, public domain), cell (CC0), clock (CC0).

Each photograph is converted to grey levels in [0, 1] and cut into ``size x size`` tiles at two
scales (shorter side ``size`` and ``2 size``), so tiles are the MR slices' size.
"""

from __future__ import annotations

import numpy as np

#: ``skimage.data`` loaders whose files are inside the wheel (no download)
PHOTOGRAPHS = ("astronaut", "brick", "camera", "cat", "coffee", "coins", "grass", "gravel",
               "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket", "cell",
               "clock")


def _grey(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3:
        img = img[..., :3] @ np.array([0.2125, 0.7154, 0.0721])  # skimage's rgb2gray weights
    lo, hi = float(img.min()), float(img.max())
    return ((img - lo) / max(hi - lo, 1e-12)).astype(np.float32)


def _tiles(img: np.ndarray, size: int, short_side: int) -> list[np.ndarray]:
    from skimage.transform import resize

    h, w = img.shape
    f = short_side / min(h, w)
    img = resize(img, (max(size, round(h * f)), max(size, round(w * f))), anti_aliasing=True)
    rows, cols = img.shape[0] // size, img.shape[1] // size
    top, left = (img.shape[0] - rows * size) // 2, (img.shape[1] - cols * size) // 2
    return [img[top + r * size: top + (r + 1) * size, left + c * size: left + (c + 1) * size]
            for r in range(rows) for c in range(cols)]


def natural_images(size: int) -> np.ndarray:
    """All tiles of :data:`PHOTOGRAPHS` as [N, size, size] float32 grey levels in [0, 1]."""
    import skimage.data

    tiles: list[np.ndarray] = []
    for name in PHOTOGRAPHS:
        img = _grey(getattr(skimage.data, name)())
        for short in (size, 2 * size):
            tiles += _tiles(img, size, short)
    return np.stack(tiles).astype(np.float32)
