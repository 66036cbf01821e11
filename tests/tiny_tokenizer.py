"""A tiny real tokenizer built offline (tokenizers WordLevel), saved into a model folder.

    tok = make_tokenizer(folder)              # default sentences, bos/eos/pad/unk, a chat template
    llama_config(vocab_size=len(tok))         # a tiny LM whose embedding rows equal the vocabulary
"""

from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "a red square on a blue field",
    "a green circle in the middle of a white image",
    "the yellow triangle points up",
    "two black lines cross near the corner",
    "what color is the shape ? answer with one word",
    "describe the picture . it shows a small object",
    "is there a circle ? yes no",
]
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: "
                 "{% if m['content'] is string %}{{ m['content'] }}"
                 "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}"
                 "{% endif %}{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


def make_tokenizer(folder: Path | None = None, sentences: list[str] = SENTENCES, *, pad: bool = True,
                   chat_template: str | None = CHAT_TEMPLATE):
    """A PreTrainedTokenizerFast over the words of `sentences` (+ <unk> <s> </s> [<pad>]), bos prepended.

    Saved into `folder` when given (tokenizer.json, tokenizer_config.json, chat template).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS if pad else SPECIALS[:3]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=specials))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    kwargs = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if pad:
        kwargs["pad_token"] = "<pad>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=chat_template, **kwargs)
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(folder)
    return fast
