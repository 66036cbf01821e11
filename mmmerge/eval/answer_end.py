"""Where an answer ends: at a stop string after some text, so a one-line VQA answer stops at its line end.

A model that has answered but not (yet) learnt to emit its end-of-sequence token would otherwise generate
`max_new_tokens` of junk that the answer processor then scores. The rule looks at decoded text, not token
ids, so it holds for any tokenizer ("\\n" is `Ċ` in byte-level BPE, `<0x0A>` in SentencePiece), and it looks
at each row alone, so the answers stay independent of the batch.
"""

from __future__ import annotations

import torch
from transformers import StoppingCriteria


def answer_ended(text: str, stops) -> bool:
    """Whether `text` (generated so far) holds a stop string after its first non-space character."""
    body = text.lstrip()
    return bool(body) and any(s in body for s in stops)


def cut_answer(text: str, stops) -> str:
    """`text` up to its first stop string (after the leading white space), stripped."""
    body = text.lstrip()
    ends = [body.find(s) for s in stops if s in body]
    return (body[:min(ends)] if ends else body).strip()


class AnswerEnd(StoppingCriteria):
    """Stops each row of a `generate` call once its new text (after the prompt's `start` tokens) has ended."""

    def __init__(self, tokenizer, start: int, stops):
        self.tokenizer, self.start, self.stops = tokenizer, start, tuple(stops)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor([answer_ended(t, self.stops) for t in texts], dtype=torch.bool, device=input_ids.device)
