"""Vision encoder + projector + causal LLM -> one LLaVA checkpoint with its processor.

The output folder loads with `LlavaForConditionalGeneration.from_pretrained` and
`AutoProcessor.from_pretrained` with no missing or unexpected keys:

- config.json: the encoder's and the LLM's configs, `<image>`'s id, the feature layer, the feature selection
  the encoder needs ("default" drops a class token; SigLIP has none: "full"), image_seq_length, the
  projector's activation;
- weights, streamed tensor by tensor: the vision tower, the projector, the LLM, the embedding rows grown when
  `<image>` (or a pad token) is new (vocab.py);
- the tokenizer with `<image>` (chat template kept), the encoder's own preprocessing as the image
  processor, and a LlavaProcessor whose image-token count equals the number of image features.

The projector comes from a LLaVA folder or a projector file (optionally transferred to this LLM through
shared token embeddings), or is made fresh by type, then optionally fitted in closed form or trained on
image-caption data. Everything is validated before the first tensor is written; the folder appears whole
or not at all.

    options.py   StitchOptions: every option, its default and what it does (the API's and the CLI's)
    plan.py      every check and every source opened, before anything is written or trained
    vision.py    feature layer and selection, preprocessing, image tokens per image
    vocab.py     <image> in the tokenizer, new embedding rows
    fitting.py   one function per fitting method (FITS), and the transfer to another LLM
    writer.py    config, tensors checked against the architecture, processor, weights, the atomic folder
    pipeline.py  stitch(): options -> plan -> folder
    report.py    StitchReport, the untrained-projector warning
"""

from .options import StitchOptions
from .pipeline import stitch
from .report import StitchReport

__all__ = ["stitch", "StitchOptions", "StitchReport"]
