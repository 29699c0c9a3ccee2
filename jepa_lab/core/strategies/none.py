"""No collapse prevention: the online encoder is its own target (the collapse baseline)."""

from __future__ import annotations

import torch
from torch import nn

from jepa_lab.core.strategies.base import Strategy
from jepa_lab.spec.experiment import NoneSpec


class NoneStrategy(nn.Module, Strategy):
    """The online encoder's full-image pass is the target; optionally without its gradient."""

    needs_full_pass = True

    def __init__(self, spec: NoneSpec) -> None:
        super().__init__()
        self.spec = spec

    def target_tokens(self, images: torch.Tensor, full: torch.Tensor | None) -> torch.Tensor:
        assert full is not None
        return full.detach() if self.spec.stop_gradient else full
