"""The engine: training (fit), scoring (score, evaluate), runs and checkpoints. Prints nothing."""

from patchvq.engine.checkpoint import CheckpointError
from patchvq.engine.evaluate import Evaluation, evaluate, score
from patchvq.engine.run import Run
from patchvq.engine.train import RunExists, fit

__all__ = ["CheckpointError", "Evaluation", "Run", "RunExists", "evaluate", "fit", "score"]
