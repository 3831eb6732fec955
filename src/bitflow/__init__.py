"""bitflow: binarized neural networks from PyTorch training to an integer-only native engine.

Sub-packages (imported on demand so that deployment needs neither torch nor training code):

- ``bitflow.nn``       quantizers (straight-through estimators) and binary layers   [torch]
- ``bitflow.models``   model zoo: ``create(name, **kw)``, ``list_models()``           [torch]
- ``bitflow.data``     Fashion-MNIST (IDX), image folders, 11K Hands, k-fold splits
- ``bitflow.train``    trainer, recipes, sign-changing-rate metrics                   [torch]
- ``bitflow.convert``  BatchShift fusion -> integer graph -> ``.bfn`` file             [torch]
- ``bitflow.engine``   native engine: ``load(path).predict(x)``                       [numpy only]
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
