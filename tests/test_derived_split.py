"""Parts split into their children (#24): where transformers writes one part under several file prefixes, or a part at
the top level beside others (Kimi-K2.5, Mistral-Large-4, Cosmos 3, Unlimited-OCR), the derivation splits the part.
Its renamings are derived from the first block of each kind; transformers' own save path over every tensor of the
class (every block) is the independent check: each file name it writes reads back into the part that holds the
tensor it was written from.
"""

import pytest
import torch

from mmmerge.adapters.families import FAMILIES, rename
from mmmerge.adapters.hf_export import to_file_names
from test_derived_families import ALL_TYPES, NOT_SPLIT, NOT_TINY, contract_family
from tiny_any_family import model_class, tiny_config


def _split_into_children(family):
    """A part nested under another part of the same component: the derivation split it."""
    return any(p != q and p.startswith(q) and c == d for c, p, _ in family.parts for d, q, _ in family.parts)


SPLIT = [t for t in ALL_TYPES if t not in NOT_SPLIT and t not in FAMILIES and _split_into_children(contract_family(t))]
TINY_SPLIT = [t for t in SPLIT if t not in NOT_TINY]  # transformers' save path refuses the others' tiny config


def _part(family, memory_name):
    return max((p for _, p, _ in family.parts if memory_name.startswith(p)), key=len, default=None)


def test_the_types_transformers_writes_apart_are_split():
    assert {"kimi_k25", "mistral_large4", "cosmos3_edge", "cosmos3_omni", "unlimited_ocr"} <= set(SPLIT)


@pytest.mark.parametrize("model_type", TINY_SPLIT)
def test_every_file_name_reads_back_into_its_part(model_type):
    family = contract_family(model_type)
    with torch.device("meta"):
        model = model_class(model_type)._from_config(tiny_config(model_type))
    state = model.state_dict()
    memory_of = {id(t): n for n, t in state.items()}
    files = to_file_names(model, state)
    renamed = {f: memory_of[id(t)] for f, t in files.items() if id(t) in memory_of}  # converters make new tensors
    for file_name, memory_name in renamed.items():
        back = rename(file_name, family.layout("saved"), to_memory=True)
        assert _part(family, back) == _part(family, memory_name), (file_name, memory_name, back)
