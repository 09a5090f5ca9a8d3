"""ldpm: undersampled MRI reconstruction with a latent diffusion prior.

Packages: ``mri`` (physics: FFTs, masks, data consistency; imports nothing of ours),
``data`` (fastMRI reader, embedded dataset, slice store), ``models``, ``sampling``,
``train``, ``metrics`` and ``report`` (reads results, never reruns a model).
"""

__version__ = "0.1.0"
