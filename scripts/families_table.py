"""The README's list of image-text-to-text families, made from what the contract test proves.

    python scripts/families_table.py          # print the README as it should be
    python scripts/families_table.py update   # write it

Every model type transformers' image-text-to-text mapping lists gets one row: read into components (derived from
transformers, or by a hand-written override), and what tests/test_derived_families.py proves on a tiny model of it
(merged whole, with a text-only causal LM, by a `components:` recipe, with a LoRA, refused by stitch); or the
reason it is not read. The README's "N image-text-to-text families"
figures are the number read into components. tests/test_derived_families.py keeps the README equal to this output.
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


def rows() -> list[tuple[str, str, str]]:
    """(model_type, how it is read, what the contract proves on a tiny model) per type transformers lists."""
    from mmmerge.adapters.families import FAMILIES, family_named

    c = contract()
    out = []
    for t in c.ALL_TYPES:
        family = family_named(t)
        if family is None:
            out.append((t, "not split: " + c.NOT_SPLIT.get(t, "no reason listed"), "—"))
            continue
        how = "hand-written override" if t in FAMILIES else "derived"
        out.append((t, f"{how}; {_language(family)}", _proven(c, t, family)))
    return out


def _language(family) -> str:
    from mmmerge.adapters.hf_common import auto_class_names

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
    if t in c.TEXT_ONLY_FAILS:
        return proven + "; LM + text-only fails: " + c.TEXT_ONLY_FAILS[t]
    if family.language_arch is None and t not in c.HEAVY:
        proven += ", LM + text-only LM"
    for check, fails, name in ((c.WITH_COMPONENTS, c.COMPONENTS_FAILS, "`components:`"),
                               (c.WITH_LORA, c.LORA_FAILS, "LoRA")):
        if t in fails:
            proven += f"; {name} fails: {fails[t]}"
        elif t in check:
            proven += f", {name}"
    if t in c.REFUSED_BUT_RUNS:
        proven += "; stitch refuses its tower, which runs on images alone: " + c.REFUSED_BUT_RUNS[t]
    elif t in c.REFUSED_BY_STITCH:
        proven += "; stitch refuses its tower in one line"
    return proven


def section(table: list[tuple[str, str, str]]) -> str:
    read = sum(1 for _, how, _ in table if not how.startswith("not split"))
    lines = [BEGIN,
             f"transformers lists {len(table)} image-text-to-text model types; mmmerge reads {read} into components "
             "(made by `scripts/families_table.py` from `tests/test_derived_families.py`).",
             "", "| model_type | read | proven on a tiny model |", "|---|---|---|"]
    lines += [f"| `{t}` | {how} | {proven} |" for t, how, proven in table]
    return "\n".join(lines + [END])


def render(readme: str) -> str:
    """The README with the generated section and every "N image-text-to-text families" figure made current."""
    table = rows()
    read = sum(1 for _, how, _ in table if not how.startswith("not split"))
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return COUNT.sub(f"{read} image-text-to-text families", head + section(table) + tail)


if __name__ == "__main__":
    text = render(README.read_text())
    if sys.argv[1:] == ["update"]:
        README.write_text(text)
    else:
        print(text, end="")
