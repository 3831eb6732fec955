"""Model zoo (``bitflow.models``): ``create(name, **kw)``, ``list_models()``."""

from . import mbbn as _mbbn  # noqa: F401
from . import mcn as _mcn  # noqa: F401
from . import resnet as _resnet  # noqa: F401
from . import zoo as _zoo  # noqa: F401  (registers the models)
from ._factory import create, list_models, register_model

__all__ = ["create", "list_models", "register_model"]
