"""Models: registry, the [0,1]-input contract, and user-model loading."""

from rfbench.models import cnn3 as _cnn3  # noqa: F401  (registers cnn3, ours)
from rfbench.models import resnet as _resnet  # noqa: F401  (registers resnet18, preact_resnet18)
from rfbench.models import smallcnn as _smallcnn  # noqa: F401
from rfbench.models import wideresnet as _wrn  # noqa: F401
from rfbench.models.base import MODELS, Normalize, RFModel, create_model, list_models, register_model, unwrap

__all__ = ["MODELS", "Normalize", "RFModel", "create_model", "list_models", "register_model", "unwrap"]
