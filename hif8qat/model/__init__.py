"""The Llama-family decoder (hand-written backward) and Hugging Face checkpoint I/O."""
from .config import LlamaConfig
from .io import load_model, save_model
from .linear import PRECISIONS, linear_backward, linear_forward
from .llama import LlamaModel, parameter_shapes
from .safetensors_io import read_safetensors, write_safetensors

__all__ = ["LlamaConfig", "LlamaModel", "load_model", "save_model", "parameter_shapes",
           "read_safetensors", "write_safetensors", "linear_forward", "linear_backward",
           "PRECISIONS"]
