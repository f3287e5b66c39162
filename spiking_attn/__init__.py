"""spiking-attn: thalamo-cortical attention mechanisms as spiking LIF populations.

Tensors in spiking models are time-first, ``[T, B, ...]``. See README.md for the data flow.
"""
from .attention import DenseSelfAttention, SpikingSelfAttention
from .block import DenseTransformerBlock, SpikingTransformerBlock
from .checkpoint import load_model, save_checkpoint
from .encoders import DirectEncoder, LatencyEncoder, RateEncoder, make_encoder
from .errors import CheckpointError, DTypeError, NonFiniteError, ShapeError, SpikingAttnError
from .layers import LinearBN
from .models import DenseClassifier, ModelConfig, SpikingClassifier, build_model
from .neuron import LIFPopulation, lif_sequence
from .recorder import SpikeRecorder
from .spike_driven import SpikeDrivenReport, spike_driven_report
from .training import evaluate, train

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "DTypeError", "DenseClassifier", "DenseSelfAttention", "DenseTransformerBlock",
    "DirectEncoder", "LIFPopulation", "LatencyEncoder", "LinearBN", "ModelConfig", "NonFiniteError",
    "RateEncoder", "ShapeError", "SpikeDrivenReport", "SpikeRecorder", "SpikingAttnError",
    "SpikingClassifier", "SpikingSelfAttention", "SpikingTransformerBlock", "build_model", "evaluate",
    "lif_sequence", "load_model", "make_encoder", "save_checkpoint", "spike_driven_report", "train",
]
