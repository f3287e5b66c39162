"""spiking-attn: thalamo-cortical attention mechanisms as spiking LIF populations.

Tensors in spiking models are time-first, ``[T, B, ...]``. See README.md for the data flow.
"""
from .attention import DenseSelfAttention, SpikingSelfAttention
from .block import DenseTransformerBlock, SpikingTransformerBlock
from .checkpoint import load_model, save_checkpoint
from .data import TASKS, TaskSpec, TokenDataset, register_task
from .encoders import DirectEncoder, LatencyEncoder, RateEncoder, make_encoder
from .errors import CheckpointError, DTypeError, NonFiniteError, ShapeError, SpikingAttnError
from .layers import LinearBN
from .mechanisms import MECHANISMS, MechanismSpec, get_mechanism, register_mechanism
from .models import DenseClassifier, ModelConfig, SpikingClassifier, build_model
from .neuron import (LIFOutput, LIFParams, LIFPopulation, attach_constraints, constrain_parameters, lif_sequence,
                     lif_step)
from .recorder import SpikeRecorder
from .spike_driven import SpikeDrivenReport, spike_driven_report
from .training import evaluate, train

__version__ = "0.2.0"

__all__ = [
    "CheckpointError", "DTypeError", "DenseClassifier", "DenseSelfAttention", "DenseTransformerBlock",
    "DirectEncoder", "LIFOutput", "LIFParams", "LIFPopulation", "LatencyEncoder", "LinearBN", "MECHANISMS",
    "MechanismSpec", "ModelConfig", "NonFiniteError", "RateEncoder", "ShapeError", "SpikeDrivenReport",
    "SpikeRecorder", "SpikingAttnError", "SpikingClassifier", "SpikingSelfAttention", "SpikingTransformerBlock",
    "TASKS", "TaskSpec", "TokenDataset", "attach_constraints", "build_model", "constrain_parameters", "evaluate",
    "get_mechanism", "lif_sequence", "lif_step", "load_model", "make_encoder", "register_mechanism",
    "register_task", "save_checkpoint", "spike_driven_report", "train",
]
