"""The bundled example: an experiment spec and a stand-in model server for demos and tests."""

from pathlib import Path

#: The experiment `abrouter serve` runs without --config.
EXPERIMENT_PATH = Path(__file__).parent / "experiment.yaml"
