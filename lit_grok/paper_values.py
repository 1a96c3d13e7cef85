"""The paper's numbers that ``lit-grok report`` prints beside its own (the method spec, section 12; docs/methods.md §12.3).

Each value names the report's metric (a logged tag, or a run-level name of ``lit_grok.population``), the phase,
the task (the data module's module name), the regime (``grok`` ω > 0, ``memo`` ω = 0, ``wd→ω′ reset`` for the
intervention) and its source. Fractions stay fractions (grad% 97.6 % is 0.976); the report draws percent.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Optional


@dataclass(frozen=True)
class PaperValue:
    metric: str
    phase: str  # a phase of lit_grok.phases, or "run" for a run-level quantity
    task: str
    regime: str
    value: float
    source: str  # the method spec's section 12 row (or another section) and the reference's step / seeds
    seed: Optional[int] = None  # a single seed's value (None: the paper's summary)

    @property
    def rounding(self) -> float:
        """Half a unit of the value's last printed digit (2.28 -> 0.005, 12 -> 0.5): the paper's number is rounded."""
        return 0.5 * 10.0 ** min(Decimal(repr(float(self.value))).normalize().as_tuple().exponent, 0)


def _rows(metric: str, task: str, regime: str, source: str, **by_phase: float) -> list[PaperValue]:
    return [PaperValue(metric, phase, task, regime, value, source) for phase, value in by_phase.items()]


PAPER_VALUES: tuple[PaperValue, ...] = (
    *(PaperValue("grok_step", "run", "dyck", "grok", v, "spec 12 row 1 (sweep)", seed=s)
      for s, v in ((42, 600), (137, 1400), (2024, 1000))),
    *(PaperValue("grok_step", "run", "scan", "grok", v, "spec 12 row 1 (sweep)", seed=s)
      for s, v in ((42, 3000), (137, 4000), (2024, 2500))),
    *_rows("edge/grad_frac_v1", "dyck", "grok", "spec 12 rows 3-4 (D42, windows ending 300/600/1500/4000)",
           pre=0.976, at=0.053, post=0.995, late=0.87),
    *_rows("edge/grad_frac_v1", "scan", "grok", "spec 12 row 3 (S2024, windows ending 2500/5000/10000)",
           pre=0.887, at=0.002, post=0.021),
    *_rows("edge/g23", "dyck", "grok", "spec 5.4 (author, D42 windows 300/600/1500)", pre=7.1, at=1.7, post=1.2),
    *_rows("edge/g23", "scan", "grok", "spec 12 row 21 (S2024 windows 2500/5000/10000)", pre=26.3, at=1.9, post=0.6),
    *_rows("ablation/edge/delta_acc", "dyck", "grok", "spec 12 row 5 (D42, steps 200/1400)", early=-0.40, post=-0.29),
    *_rows("ablation/edge/delta_acc", "dyck", "grok", "spec 12 row 5 (3 seeds, steps 500/3900)", pre=-0.26, late=-0.58),
    *_rows("ablation/bulk/delta_acc", "dyck", "grok", "spec 12 row 6 (D42, steps 500/1400/3900)", pre=-0.34, post=-0.03,
           late=-0.13),
    *_rows("perturb/v1/max_kl", "dyck", "grok", "spec 12 row 8 (D42, step 3900)", late=0.00005),
    *(PaperValue(f"curvature/v{k}/fd", "late", "dyck", regime, v, "spec 12 row 9 (D42, step 3900, finite difference)")
      for regime, values in (("grok", (0.078, 0.001, 0.020, 0.068)), ("memo", (0.173, 0.987, 0.851, 1.838)))
      for k, v in zip((1, 2, 3, 4), values)),
    *(PaperValue(f"curvature/v{k}/{key}", "late", "dyck", regime, v, "spec 12 row 10 / spec 6.3 (D42, late)")
      for regime, rows in (("grok", ((1, 2.30, 0.00005), (3, 0.92, 0.00035), (4, 0.80, 0.00021))),
                           ("memo", ((1, 0.15, 0.00079), (3, 0.03, 0.00397), (4, 0.01, 0.00689))))
      for k, sigma, change in rows for key, v in (("sigma", sigma), ("delta_loss", change))),
    *_rows("probe/layer_1_raw/linear_r2", "dyck", "grok", "spec 12 row 11 (D42, steps 200/600/2000/5000, raw features)",
           pre=0.965, at=0.981, post=0.960, final=0.667),
    *_rows("probe/layer_1_raw/linear_r2", "dyck", "grok", "spec 12 row 12 (3 seeds, step 3900)", late=0.862),
    *_rows("probe/layer_1/quadratic_r2", "dyck", "grok", "spec 12 row 11 (D42, raw features; ours standardised)",
           pre=0.975, at=0.995, post=0.976, final=0.591),
    *_rows("probe/layer_1/mlp_r2", "dyck", "grok", "spec 12 row 11 (D42, raw features; ours standardised)",
           pre=0.975, at=0.993, post=0.994, final=0.988),
    *_rows("probe/layer_1/mlp_r2", "dyck", "grok", "spec 12 row 12 (3 seeds, step 3900)", late=0.990),
    *(PaperValue(metric, "final", "dyck", f"wd→{w} reset", v, "spec 12 row 13 (start 1000, +3000 steps)")
      for w, values in (("0.0", (0.973, 0.987, 40.4)), ("0.5", (0.972, 0.898, 17.7)), ("1.0", (0.982, 0.851, 15.3)),
                        ("2.0", (0.985, 0.709, 14.3)))
      for metric, v in zip(("val/acc", "probe/layer_1_raw/linear_r2", "weights/norm_all"), values)),
    PaperValue("rotation_v1_mean", "run", "dyck", "grok", 17.8, "spec 12 row 14 (mean per window)"),
    PaperValue("rotation_v1_mean", "run", "dyck", "memo", 22.2, "spec 12 row 14 (mean per window)"),
    PaperValue("rotation_v1_mean", "run", "scan", "grok", 7.7, "spec 12 row 14 (mean per window)"),
    PaperValue("rotation_v1_mean", "run", "scan", "memo", 28.8, "spec 12 row 14 (mean per window)"),
    PaperValue("fourier_edge/v1/elevation", "pre", "dyck", "grok", 4.1, "spec 12 row 17 (3 seeds, step 500)"),
    *_rows("fourier/layer_1/ref_omega_star", "dyck", "grok", "spec 12 row 18 (step 5000)", final=12),
    *_rows("fourier/layer_1/ref_top3", "dyck", "grok", "spec 12 row 18 (step 5000)", final=0.541),
    *_rows("fourier/layer_1/ref_omega_star", "dyck", "memo", "spec 12 row 18 (step 5000)", final=0),
    *_rows("fourier/layer_1/ref_top1", "dyck", "memo", "spec 12 row 18 (step 5000)", final=0.771),
    *_rows("fourier/layer_1/ref_top3", "dyck", "memo", "spec 12 row 18 (step 5000)", final=0.917),
    *_rows("attention/encoder.layers.0.self_attn/entropy_all", "dyck", "grok", "spec 12 row 19 (step 5000, pads included)", final=2.28),
)


def paper_value(metric: str, phase: str, task: str, regime: str, seed: Optional[int] = None) -> Optional[PaperValue]:
    """The paper's value for this metric, phase, task and regime (and seed, for per-seed values), if it has one."""
    for v in PAPER_VALUES:
        if (v.metric, v.phase, v.task, v.regime, v.seed) == (metric, phase, task, regime, seed):
            return v
    return None
