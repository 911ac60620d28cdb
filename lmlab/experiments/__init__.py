"""One module per paper claim; each registers `Experiment`s in `lmlab.registry.EXPERIMENTS`.

Nothing imports experiments (they import everything). `lmlab reproduce` discovers them through the registry.
"""
from lmlab.experiments.base import (ArmResult, Experiment, Verdict, combine, compare, equivalent, exceeds,
                                    noninferior, trend_verdict)

__all__ = ["ArmResult", "Experiment", "Verdict", "combine", "compare", "equivalent", "exceeds", "noninferior",
           "trend_verdict"]
