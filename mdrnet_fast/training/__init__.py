"""Training MDRNet as a library: `train(TrainConfig(...))` runs what `mdrnet-fast train` runs.

data: samples whose order is a function of (seed, sample number) alone; models: the networks of each stage;
precision: fp32 / bf16 / fp16 autocast; loop: the Trainer (steps, checkpoints, exact resume, data parallelism).
"""
from .loop import RESUME_KEYS, TrainConfig, Trainer, train
from .models import STAGES, build, load_module, set_checkpoint_activations
from .precision import TRAIN_PRECISIONS, resolve_training_precision

__all__ = ["TrainConfig", "Trainer", "train", "build", "load_module", "set_checkpoint_activations", "STAGES",
           "RESUME_KEYS", "TRAIN_PRECISIONS", "resolve_training_precision"]
