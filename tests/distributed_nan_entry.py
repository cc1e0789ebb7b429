"""``maar`` with one more objective, for the NaN test of data-parallel training: NaN on rank 1 once ε > 0."""
import os

import torch.nn.functional as F

from maar_plugin.cli import main
from maar_plugin.objectives import LossTerms, Objective, register_objective


@register_objective("test-nan-on-rank-1")
class _NanOnRankOne(Objective):
    description = "test only: cross-entropy, NaN on rank 1 after warm-up"

    def loss(self, x, y, eps, progress):
        logits = self.model(x)
        total = F.cross_entropy(logits, y)
        if eps > 0 and os.environ.get("RANK") == "1":
            total = total * float("nan")
        return LossTerms(total, logits, {})


if __name__ == "__main__":
    main()
