"""The README's Commands section as a newcomer runs it: every line of its bash block, on what
examples/make_tiny_models.py writes, with the example folder in a temporary directory."""

import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
from pathlib import Path

import pytest

from mmmerge.adapters import open_checkpoint
from tiny_family_configs import CONFIGS as FAMILIES  # the families the examples build
from mmmerge.cli import build_parser, main
from mmmerge.cli_flags import api_defaults
from mmmerge.commands import COMMANDS

REPO = Path(__file__).resolve().parents[1]
SKIPPED = {"demo"}  # the whole pipeline takes minutes; tests/test_demo.py runs it


def readme_commands() -> list[list[str]]:
    """The command lines of the README's Commands section (its bash blocks), comments dropped."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines()]
    return [argv for argv in (shlex.split(line, comments=True) for line in lines) if argv]


def load_examples():
    spec = importlib.util.spec_from_file_location("make_tiny_models", REPO / "examples" / "make_tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def working_folder(path: Path):
    """`cd path` for the block (contextlib.chdir needs Python 3.11)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_readme(work: Path) -> tuple[Path, list]:
    """Run every README line in order in the folder `work`: the folder the last `cd` went to, and (argv, exit
    code, stdout, stderr) per mmmerge line (benchmarks/readme_times.py times this too)."""
    cwd, results = work, []
    for argv in readme_commands():
        if argv[0] == "python":
            assert argv[1] == "examples/make_tiny_models.py", argv
            load_examples().main(str(cwd / argv[2]))
        elif argv[0] == "cd":
            cwd = cwd / argv[1]
        elif argv[0] == "mmmerge" and argv[1] not in SKIPPED:
            out, err = io.StringIO(), io.StringIO()
            with working_folder(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv[1:])
            results.append((argv, code, out.getvalue(), err.getvalue()))
        else:
            assert argv[0] == "mmmerge", f"the README's Commands block runs `{argv[0]}`, which this test cannot"
    return cwd, results


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    return run_readme(tmp_path_factory.mktemp("readme"))


def test_every_readme_command_runs(ran):
    _, results = ran
    for argv, code, _, err in results:
        assert code == 0, f"`{shlex.join(argv)}` exited {code}: {err}"
        assert "warning:" not in err, f"`{shlex.join(argv)}` warned: {err}"


def test_the_readme_shows_every_command_with_its_defaults():
    shown = {argv[1] for argv in readme_commands() if argv[0] == "mmmerge"}
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) <= shown, f"the README's Commands block does not show: {set(commands) - shown}"
    for argv in readme_commands():  # a value the README shows for --batch-size is the default (its function's)
        if "--batch-size" in argv:
            default = api_defaults(COMMANDS[argv[1]].api)["batch_size"]
            assert argv[argv.index("--batch-size") + 1] == str(default), argv


def test_what_the_commands_wrote(ran):
    """Checked against transformers and the files themselves, not against the commands' own output."""
    import transformers

    root, results = ran
    out = {argv[1]: (stdout, err) for argv, _, stdout, err in results}
    # merge: a LLaVA transformers loads, with a model card in the hub's form
    _, info = transformers.LlavaForConditionalGeneration.from_pretrained(root / "merged", output_loading_info=True)
    assert not any(info.values())
    card = (root / "merged" / "README.md").read_text()
    meta = card.split("---\n")[1]
    assert "library_name: transformers" in meta and "- merge\n- mmmerge\n- ties" in meta and "base_model:" in meta
    # eval recorded its result in that card, and the score is the mean of its samples' scores
    samples = [json.loads(x) for x in (root / "eval" / "merged" / "samples.jsonl").read_text().splitlines()]
    overall = json.loads((root / "eval" / "merged" / "metrics.json").read_text())["overall"]
    assert abs(100 * sum(s["score"] for s in samples) / len(samples) - overall) < 0.01
    assert f"| vqav2 | `questions.json` | {len(samples)} | overall | {overall:.2f} |" in card
    # stitch aligned its projector (no warning), generate printed one answer, eval-compare broke down by type
    assert "training loss" in out["stitch"][0] and out["generate"][0].count("\n") == 1
    assert {s["question_type"] for s in samples} == {"color", "shape", "count", "position", "yes/no"}
    for t in ("color", "shape", "count", "position", "yes/no"):
        assert re.search(rf"^\| {re.escape(t)} \| 2 \| ", out["eval-compare"][0], re.M), t
    assert (root / "compare.png").read_bytes()[:4] == b"\x89PNG"
    transformers.AutoProcessor.from_pretrained(root / "stitched")


def test_examples_hold_every_family_mmmerge_reads(ran):
    root, _ = ran
    formats = {p.relative_to(root).as_posix(): open_checkpoint(p).format
               for p in [*root.iterdir(), *(root / "families").iterdir()]
               if (p / "config.json").exists() or (p / "open_clip_config.json").exists()}
    assert {f"families/{t}" for t in FAMILIES} <= set(formats), "a family of mmmerge's table has no example"
    assert {formats[f"families/{t}"] for t in FAMILIES} == {f"transformers-{t}" for t in FAMILIES}
    expected = {"open_clip": "open_clip", "timm_siglip": "timm", "timm_vit": "timm", "llama": "transformers-causal-lm",
                "clip": "transformers-vision", "siglip": "transformers-vision", "dinov2": "transformers-vision",
                "vit": "transformers-vision"}
    assert {k: formats[k] for k in expected} == expected
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(root / "llama")
    assert tokenizer.chat_template and tokenizer.eos_token
    captions = [json.loads(x) for x in (root / "world" / "captions.jsonl").read_text().splitlines()]
    assert captions and all((root / "world" / c["image"]).is_file() for c in captions)
