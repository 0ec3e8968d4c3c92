"""Classification metrics (numpy only): accuracy, macro/weighted F1, per-class P/R/F1, confusion matrix.

Classes absent from a split (the settingA humanitarian split has no `not_humanitarian` rows) never break
anything: they get support 0 and are left out of the macro average unless they are predicted, as in
scikit-learn's default.
"""

from __future__ import annotations

# The formulas live in the torch-free runtime, so that `crisis-tool bench` computes the same numbers.
from crisis_tool.runtime.classification_metrics import classification_report, confusion_matrix

__all__ = ["classification_report", "confusion_matrix"]
