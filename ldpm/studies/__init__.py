"""The studies beside LDPM, one package each, each declaring itself to the core with a
:class:`ldpm.methods.graph.Study` that it registers when imported:

* :mod:`.lora` low-rank adapters on LDPM's frozen denoiser against fewer sampling steps;
* :mod:`.diffcode` DiffCode's all-in-one restoration with a codebook bank (Chen et al.).

Importing this package registers them all; the command line (:mod:`ldpm.cli`) and the
Snakefile do so before they read a config. The core (graph, training, reconstruction, metrics,
report, config) never imports a study.
"""

from . import lora  # noqa: F401  (registers it)
from . import diffcode  # noqa: F401  (registers it)
