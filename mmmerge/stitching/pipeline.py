"""`stitch`: options -> plan (everything checked) -> the folder written, the projector fitted on the way."""

from __future__ import annotations

from pathlib import Path

from ..io.claim import claim_output
from .fitting import FITS
from .options import StitchOptions, options_from
from .plan import plan_stitch
from .report import StitchReport, untrained_projector_warning
from .writer import llava_folder, write_model, write_processor


def stitch(vision: Path | str, language: Path | str, out: Path | str, *, options: StitchOptions | None = None,
           **kwargs) -> StitchReport:
    """Write a LLaVA checkpoint made of the vision encoder at `vision`, a projector and the LLM at `language`.

    The options are a `StitchOptions`, keyword arguments of the same names, or both (the keywords win):
    projector: a LLaVA folder, a projector file (`projectors.save_projector`) or an `mm_projector.bin`;
    projector_type: a fresh projector instead (linear, identity, mlp2x_gelu ...).
    align_data (+ image_folder): image-caption JSONL to fit (`fit`: ridge / procrustes, linear only) or
    train (`fit="train"`, default for MLPs and for a given projector) the projector on.
    transfer / projector_language: re-target the projector at this LLM through shared token embeddings;
    the source LLM is `projector_language`, or the LLaVA the projector comes from.
    dtype: cast every tensor (e.g. "bfloat16"); default keeps each source tensor's dtype.
    max_image_pixels: align_data images larger than this are refused before they are decoded (None: no limit).
    See `StitchOptions` for every option and its default.
    """
    o = options_from(options, kwargs)
    vision, language, out = Path(vision), Path(language), Path(out)
    # the output is locked for the whole run, and may not be, hold or sit inside what the run reads
    with claim_output(out, force=o.force, inputs=[vision, language, o.projector, o.projector_language],
                      data=[o.align_data, o.image_folder]):
        plan = plan_stitch(vision, language, out, o)
        fitted = None
        with llava_folder(out, o.force) as tmp:
            # processor first: fitting and training use it exactly as a user will
            image_processor, processor = write_processor(tmp, plan.preprocess, plan.tokenizer, plan.vision,
                                                         plan.features.strategy, plan.features.additional)
            if plan.fit is not None:
                fitted = FITS[plan.fit](plan, image_processor, processor)
                plan.with_projector(fitted.projector)
            write_model(tmp, plan.config, plan.tensors, language, o.progress)

    report = StitchReport(
        out=out, vision=f"{plan.vision_format} {plan.vision.arch}", language=plan.language.arch,
        projector=fitted.how if fitted else plan.how, projector_type=plan.projector.projector_type,
        vision_feature_layer=plan.features.layer, vision_feature_select_strategy=plan.features.strategy,
        num_additional_image_tokens=plan.features.additional, image_seq_length=plan.features.seq_len,
        image_token_id=plan.tokens.image_token_id, added_tokens=plan.tokens.added,
        vocab_size=plan.tokens.vocab_size,
        transfer=plan.transfer, fit_residual=fitted.residual if fitted else None,
        losses=fitted.losses if fitted else [], notes=plan.notes)
    if plan.source is None and plan.fit is None:
        report.warnings.append(untrained_projector_warning(out))
    return report
