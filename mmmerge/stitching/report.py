"""What `stitch` did, as data and as the lines the CLI prints; the warning for a projector nobody trained."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(kw_only=True)
class StitchReport:
    out: Path
    vision: str
    language: str
    projector: str  # where the projector came from and how it was made
    projector_type: str
    vision_feature_layer: int | list[int]
    vision_feature_select_strategy: str
    num_additional_image_tokens: int
    image_seq_length: int
    image_token_id: int
    added_tokens: list[str]
    vocab_size: tuple[int, int]  # embedding rows before, after
    transfer: object | None = None  # projectors.TransferReport
    fit_residual: float | None = None
    losses: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # also raised as Python warnings (MMMergeWarning)

    def lines(self) -> list[str]:
        out = [f"wrote LLaVA to {self.out}: {self.vision} + {self.projector_type} projector + {self.language}",
               f"  projector: {self.projector}",
               f"  image: {self.image_seq_length} tokens per image, feature layer {self.vision_feature_layer}, "
               f"selection '{self.vision_feature_select_strategy}', <image> id {self.image_token_id}"]
        if self.added_tokens:
            out.append(f"  added tokens {', '.join(self.added_tokens)}; embedding rows {self.vocab_size[0]} -> "
                       f"{self.vocab_size[1]}")
        if self.transfer is not None:
            t = self.transfer
            out.append(f"  transfer: {t.method} map on {t.shared_tokens} shared tokens, residual {t.residual:.4f}")
        if self.fit_residual is not None:
            out.append(f"  fit residual {self.fit_residual:.4f}")
        if self.losses:
            out.append(f"  training loss {self.losses[0]:.4f} -> {self.losses[-1]:.4f} ({len(self.losses)} steps)")
        out += [f"  note: {n}" for n in self.notes]
        return out


def untrained_projector_warning(out: Path) -> str:
    """Warn (Python warning, returned for the report) that `out` holds a random projector: it answers noise."""
    import warnings

    from ..errors import UntrainedProjectorWarning

    message = (f"{out}: the projector is new and untrained (no projector source, no --align-data): the model sees "
               "random image features and will answer noise; fit it with --align-data CAPTIONS.jsonl or take one "
               "with --projector")
    warnings.warn(message, UntrainedProjectorWarning, stacklevel=_outside_mmmerge())
    return message


def _outside_mmmerge() -> int:
    """The `stacklevel` (for the function calling this) of the first caller outside mmmerge: a warning names the
    user's line, not a wrapper's."""
    import sys

    root = str(Path(__file__).resolve().parent.parent)  # the mmmerge package
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(root):
        frame, level = frame.f_back, level + 1
    return level
