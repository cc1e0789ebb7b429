"""The ε schedule of certified training: zero during warm-up, then a smoothed ramp to the target.

The ramp is auto_LiRPA's ``SmoothedScheduler`` (Shi et al. 2021, "Fast Certified Robust Training with
Short Warmup"): ε grows like t^β (β = 4) until ``mid_point`` of the ramp, then linearly, with matching
value and slope at the join, so early ε grows gently and the network's bounds are not blown up.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SmoothedEpsSchedule:
    """ε as a function of the global step; ``progress`` is the fraction of the ramp completed."""

    target_eps: float
    warmup_steps: int
    ramp_steps: int
    mid_point: float = 0.25
    exponent: float = 4.0

    def eps(self, step: int) -> float:
        start = self.warmup_steps
        end = start + self.ramp_steps
        if step >= end:
            return self.target_eps
        if step <= start:
            return 0.0
        mid = start + int(self.ramp_steps * self.mid_point)
        if mid <= start:
            return self.target_eps * (step - start) / self.ramp_steps
        slope_scale = (mid - start) ** (self.exponent - 1.0)
        alpha = self.target_eps / ((end - mid) * self.exponent * slope_scale + (mid - start) * slope_scale)
        if step <= mid:
            return alpha * (step - start) ** self.exponent
        mid_value = alpha * (mid - start) ** self.exponent
        return mid_value + (step - mid) * (self.target_eps - mid_value) / (end - mid)

    def progress(self, step: int) -> float:
        """Fraction of the ramp done, in [0, 1]; it drives the κ, β and λ schedules of the objectives."""
        if self.target_eps == 0:
            return 1.0 if step >= self.warmup_steps + self.ramp_steps else 0.0
        return self.eps(step) / self.target_eps

    def in_ramp(self, step: int) -> bool:
        return self.warmup_steps <= step < self.warmup_steps + self.ramp_steps
