"""Does a state dict fit a model? The key/shape comparison and its error message, shared by every
strict loader (Predictor, `--eval-only`, tools/visualize_predictions through YolactCheckpointer)."""
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

__all__ = ["CLASS_DEPENDENT_KEYS", "WeightsMismatchError", "StateDictDiff", "is_class_dependent"]

# Parameters whose shape depends on the number of classes (head class scores, semantic-seg conv,
# YOLACT++ mask-IoU net output).
CLASS_DEPENDENT_KEYS = (r"(^|\.)cls_score\.", r"(^|\.)semantic_seg_conv\.", r"(^|\.)mask_rescoring\.")

Shape = Tuple[int, ...]


class WeightsMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model built from the config."""


def is_class_dependent(key: str, patterns: Sequence[str] = CLASS_DEPENDENT_KEYS) -> bool:
    return any(re.search(p, key) for p in patterns)


def _listed(items: List[str], limit: int = 5) -> str:
    return "; ".join(items[:limit]) + (f" ... ({len(items)} in all)" if len(items) > limit else "")


@dataclass
class StateDictDiff:
    """missing: model key -> model shape; unexpected: checkpoint key -> its shape (None: unknown);
    wrong: [(key, checkpoint shape, model shape)]."""

    missing: Dict[str, Shape] = field(default_factory=dict)
    unexpected: Dict[str, object] = field(default_factory=dict)
    wrong: List[Tuple[str, Shape, Shape]] = field(default_factory=list)

    @classmethod
    def between(cls, expected: Mapping[str, Sequence[int]], got: Mapping[str, Sequence[int]]) -> "StateDictDiff":
        """expected: the model's key -> shape; got: the checkpoint's key -> shape."""
        return cls(
            missing={k: tuple(v) for k, v in expected.items() if k not in got},
            unexpected={k: tuple(v) for k, v in got.items() if k not in expected},
            wrong=[(k, tuple(got[k]), tuple(v)) for k, v in expected.items() if k in got and tuple(got[k]) != tuple(v)],
        )

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong)

    def message(self, source: str, who: str = "") -> str:
        """What does not fit, with the fix. `who` prefixes the first line (e.g. "Predictor: ")."""
        parts = [f"{who}weights '{source}' do not fit the model built from the config."]
        if self.wrong:
            parts.append(
                "Shape mismatch: "
                + _listed([f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.wrong])
            )
            if any(is_class_dependent(k) for k, _, _ in self.wrong):
                parts.append(
                    "The class count differs: set the config's num_classes to the checkpoint's "
                    "(yolact_d2.modeling.set_num_classes, or the model.num_classes/model.head.num_classes "
                    "overrides). To fine-tune on another class count, train with train.init_checkpoint."
                )
        if self.missing:
            parts.append("Missing in the checkpoint: " + _listed([f"{k} {list(s)}" for k, s in self.missing.items()]))
            if all(k.startswith(("flow_net.", "spa.")) for k in self.missing):
                parts.append(
                    "Only YolactEdge's video parts (flow_net / spa) are missing: this is an image-model checkpoint "
                    "and the config a video model. Use the image config (configs/yolact_edge/yolact_edge_*.py "
                    "without vid_), or a video checkpoint (the flow net and SPA cannot stay random)."
                )
        if self.unexpected:
            parts.append(
                "Not in the model: "
                + _listed([f"{k} {list(s)}" if s is not None else k for k, s in self.unexpected.items()])
            )
        parts.append("Use the config the checkpoint was trained with (backbone depth, YOLACT vs YOLACT++).")
        return "\n".join(parts)

    def raise_if_mismatch(self, source: str, who: str = "") -> None:
        if not self.fits:
            raise WeightsMismatchError(self.message(source, who))
