"""Training: TrainConfig, the Trainer loop, data, AdamW, checkpoints."""
from .config import ScalingRecipe, TrainConfig
