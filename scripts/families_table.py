"""The README's list of image-text-to-text families, made from what the contract test proves.

    python scripts/families_table.py          # print the README as it should be
    python scripts/families_table.py update   # write it

Every model type transformers' image-text-to-text mapping lists gets one row: read into components (derived from
transformers, or by a hand-written override), and what tests/test_derived_families.py proves on a tiny model of it
(merged whole, with a text-only causal LM, by a `components:` recipe, with a LoRA, refused by stitch) and what
tests/test_derived_generate.py proves (generate and eval with a processor built tiny, or why not); or the reason it
is not read, and what tests/test_not_split_whole.py proves of it (merged whole) or why not; then the multimodal
LMs transformers lists beyond image-text-to-text, with what that test proves of each. The README's
"N image-text-to-text families" figures are the number read into components. tests/test_derived_families.py keeps
the README equal to this output.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN, END = "<!-- families-table -->", "<!-- /families-table -->"
COUNT = re.compile(r"\d+ image-text-to-text families")


def contract():
    """The contract test's module: its tables say what is proven and what is not, and why."""
    for folder in ("tests", "examples"):
        if str(ROOT / folder) not in sys.path:
            sys.path.insert(0, str(ROOT / folder))
    import test_derived_families

    return test_derived_families


def whole_contract():
    """The whole-model contract over the types the first does not split (tests/test_not_split_whole.py)."""
    contract()
    import test_not_split_whole

    return test_not_split_whole


def rows() -> list[tuple[str, str, str]]:
    """(model_type, how it is read, what the contract proves on a tiny model) per type transformers lists."""
    from mmmerge.adapters.families import FAMILIES, family_named

    c = contract()
    out = []
    for t in c.ALL_TYPES:
        family = c.contract_family(t)
        if family is None:
            out.append((t, "not split: " + c.NOT_SPLIT.get(t, "no reason listed"), _proven_whole(t)))
            continue
        how = ("hand-written override" if t in FAMILIES else "derived" if family_named(t) is not None
               else "derived from a checkpoint's config (its default config does not build or split)")
        none = "" if any(part == "projector" for part, _, _ in family.parts) else \
            "; no projector (its vision tower writes the language model's width)"
        out.append((t, f"{how}{none}; {_language(family)}", _proven(c, t, family)))
    return out


def _language(family) -> str:
    from mmmerge.adapters.families import TOP_LEVEL
    from mmmerge.adapters.hf_common import auto_class_names

    if family.text_config == TOP_LEVEL:
        return f"decoder configured at the top level: no class holds the language model alone (`{family.cls}`'s names)"
    if family.language_arch and not family.language_arch.endswith("ForCausalLM"):
        return f"no text-only counterpart (language as `{family.language_arch}`)"
    if family.language_arch:
        return f"language as `{family.language_arch}`"
    if family.language_type:
        return f"language as `{auto_class_names('MODEL_FOR_CAUSAL_LM_MAPPING_NAMES')[family.language_type]}`"
    return "language as its text type's `*ForCausalLM`"


def _proven(c, t: str, family) -> str:
    if t in c.NOT_TINY:
        return "not built tiny: " + c.NOT_TINY[t]
    if t in c.TRANSFORMERS_FAILS:
        return "merge fails (transformers): " + c.TRANSFORMERS_FAILS[t]
    if t not in c.TINY:
        return "—"
    proven = "read, merged whole" + (" (slow tests)" if t in c.HEAVY else "")
    text_only_fails = c.TEXT_ONLY_FAILS.get(t)
    if family.language_arch is None and t not in c.HEAVY and not text_only_fails:
        proven += ", LM + text-only LM"
    for check, fails, name in ((c.WITH_COMPONENTS, c.COMPONENTS_FAILS, "`components:`"),
                               (c.WITH_LORA, c.LORA_FAILS, "LoRA")):
        if t in fails:
            proven += f"; {name} fails: {fails[t]}"
        elif t in check:
            proven += f", {name}"
    proven += _generates(t)
    if text_only_fails:
        proven += "; LM + text-only fails: " + text_only_fails
    if t in c.TOP_LEVEL_TYPES:
        proven += "; LM + text-only refused in one line"
    if t in c.REFUSED_BUT_RUNS:
        proven += "; stitch refuses its tower, which runs on images alone: " + c.REFUSED_BUT_RUNS[t]
    elif t in c.REFUSED_BY_STITCH:
        proven += "; stitch refuses its tower in one line"
    return proven


def generate_contract():
    """The generate/eval contract over derived types with a processor built tiny (tests/test_derived_generate.py)."""
    contract()
    import test_derived_generate

    return test_derived_generate


def _generates(t: str) -> str:
    from tiny_family_checkpoints import BUILDERS  # hand-built processors: tests/test_eval_families.py

    g = generate_contract()
    if t in g.WITH_PROCESSOR:
        return ", generate and eval as transformers"
    if t in BUILDERS:
        return ", eval with a hand-built processor"
    if t in g.NO_PROCESSOR:
        return f"; no generate/eval (no processor built tiny: {g.NO_PROCESSOR[t]})"
    if t in g.ANSWERS_NOTHING:
        return f"; generate on a decoder started at a word (its tiny model answers nothing: {g.ANSWERS_NOTHING[t]})"
    return ""


def _proven_whole(t: str) -> str:
    w = whole_contract()
    for table, what in ((w.NOT_BUILT_TINY, "not built tiny"), (w.TOO_SLOW_TO_BUILD, "not built tiny"),
                        (w.TOO_LARGE, "not merged in tests"),
                        (w.TRANSFORMERS_FAILS, "merged whole; the output does not load (transformers)")):
        if t in table:
            return f"{what}: {table[t]}"
    if t not in w.WHOLE:
        return "—"
    proven = "merged whole" + (" (slow tests)" if t in w.HEAVY else "")
    if t in w.READ_BY_ANOTHER:
        adapter, why = w.READ_BY_ANOTHER[t]
        return f"{proven}; read by `{adapter}`: {why}"
    return proven + "; inspect says why it is whole"


def other_rows() -> list[tuple[str, str]]:
    """(model_type, what tests/test_not_split_whole.py proves) per multimodal LM beyond image-text-to-text."""
    return [(t, _proven_whole(t)) for t in whole_contract().AUDIO_TEXT]


def section(table: list[tuple[str, str, str]], others: list[tuple[str, str]]) -> str:
    read = sum(1 for _, how, _ in table if not how.startswith("not split"))
    lines = [BEGIN,
             f"transformers lists {len(table)} image-text-to-text model types; mmmerge reads {read} into components "
             "(made by `scripts/families_table.py` from `tests/test_derived_families.py`).",
             "", "| model_type | read | proven on a tiny model |", "|---|---|---|"]
    lines += [f"| `{t}` | {how} | {proven} |" for t, how, proven in table]
    lines += ["", f"transformers lists {len(others)} more multimodal LMs (audio-text models, and the Qwen omni models "
              "whole) that are not image-text-to-text: none has a vision tower to split off, so they merge whole "
              "(`tests/test_not_split_whole.py`).", "", "| model_type | proven on a tiny model |", "|---|---|"]
    lines += [f"| `{t}` | {proven} |" for t, proven in others]
    return "\n".join(lines + [END])


def render(readme: str) -> str:
    """The README with the generated section and every "N image-text-to-text families" figure made current."""
    table = rows()
    read = sum(1 for _, how, _ in table if not how.startswith("not split"))
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return COUNT.sub(f"{read} image-text-to-text families", head + section(table, other_rows()) + tail)


if __name__ == "__main__":
    text = render(README.read_text())
    if sys.argv[1:] == ["update"]:
        README.write_text(text)
    else:
        print(text, end="")
