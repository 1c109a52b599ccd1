"""One entry of the random-model registry (`random/__init__.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RandomModel:
    name: str
    task: str  # tasks.TASK_NAMES
    family: str
    layout: str  # "weights" | "hub"
    config: dict[str, Any]  # config.json with every layer
    seed: int = 0
    stress: bool = False  # plant massive residual activations (fp16 overflow stress)
    # the sentence-transformers head a hub-layout embedding folder ships
    pooling: str = "cls"
    dense: tuple[int, ...] = ()  # Dense widths after pooling (no bias, identity)
    prompts: dict[str, str] = field(default_factory=dict)
    max_seq_length: int = 512

    @property
    def layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    def config_for(self, layers: int | None = None) -> dict[str, Any]:
        """config.json with the first `layers` layers (all by default)."""
        if layers is None:
            return dict(self.config)
        if not 1 <= layers <= self.layers:
            raise ValueError(f"layers must be in 1..{self.layers}, got {layers}")
        return dict(self.config, num_hidden_layers=layers, max_window_layers=layers)
