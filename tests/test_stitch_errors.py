"""`mmmerge stitch` as a user runs it: bad input gives one `error:` line naming the file or parameter, exit code 2 and
no output folder (an existing one is left as it was); good input gives a folder transformers loads."""

import pytest
import torch
import transformers

from cli_run import one_line_error, run
from stitch_parts import PROMPT, image, load_checked, make_lm, make_vision
from tiny import llama_config, max_diff
from tiny_llava import build_tiny_llava


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    d = tmp_path_factory.mktemp("parts")
    make_vision(d / "vision")
    make_vision(d / "vision48", hidden_size=48)
    make_lm(d / "lm")
    make_lm(d / "lm_no_tokenizer")
    for f in d.joinpath("lm_no_tokenizer").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            f.unlink()
    for size in (48, 16):
        vocab = len(transformers.AutoTokenizer.from_pretrained(make_lm(d / f"lm{size}")))
        transformers.LlamaForCausalLM(llama_config(hidden_size=size, vocab_size=vocab)).save_pretrained(d / f"lm{size}")
    build_tiny_llava(d / "llava")  # a 32 -> 32 projector
    (d / "unknown").mkdir()
    (d / "unknown" / "weights.npz").write_bytes(b"not a model")
    (d / "images").mkdir()
    image((32, 32)).save(d / "images" / "ok.png")
    (d / "images" / "broken.png").write_bytes(b"not a png")
    return d


def refused(tmp_path, *args, needles=(), out=None):
    """Run `stitch ...`; it must fail with one line holding `needles`, and leave the output's folder as it was."""
    out = out or tmp_path / "out"
    before = sorted(p.name for p in out.parent.iterdir())
    r = run("stitch", *args, "--out", out, "--quiet")
    one_line_error(r, *needles)
    assert sorted(p.name for p in out.parent.iterdir()) == before  # no output, no temporary folder left behind
    return r


def test_vision_features_that_do_not_fit_the_projector(parts, tmp_path):
    refused(tmp_path, "--vision", parts / "vision48", "--language", parts / "lm", "--projector", parts / "llava",
            needles=(str(parts / "llava"), "takes 32 features", str(parts / "vision48"), "gives 48"))


def test_language_embeddings_that_do_not_fit_the_projector(parts, tmp_path):
    refused(tmp_path, "--vision", parts / "vision", "--language", parts / "lm48", "--projector", parts / "llava",
            needles=(str(parts / "llava"), "outputs 32 features", str(parts / "lm48"), "48", "--transfer"))


def test_language_folder_without_tokenizer(parts, tmp_path):
    refused(tmp_path, "--vision", parts / "vision", "--language", parts / "lm_no_tokenizer",
            "--projector-type", "linear", needles=(str(parts / "lm_no_tokenizer"), "has no tokenizer"))


def test_vision_encoder_of_unknown_format(parts, tmp_path):
    refused(tmp_path, "--vision", parts / "unknown", "--language", parts / "lm", "--projector-type", "linear",
            needles=(str(parts / "unknown"), "weights.npz", "recognised formats"))
    refused(tmp_path, "--vision", parts / "nowhere", "--language", parts / "lm", "--projector-type", "linear",
            needles=(str(parts / "nowhere"), "no such file or folder"))


def test_existing_output_is_left_alone_without_force(parts, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    args = ("--vision", parts / "vision", "--language", parts / "lm", "--projector-type", "linear")
    refused(tmp_path, *args, needles=(str(tmp_path / "out"), "not empty", "--force"))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"
    # --force replaces only a folder mmmerge wrote: a user's folder is left alone with it too
    refused(tmp_path, *args, "--force", needles=(str(tmp_path / "out"), "--force replaces only", ".mmmerge-output"))
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"
    (tmp_path / "out" / "mine.txt").unlink()  # an empty folder may be written
    for _ in range(2):  # and a previous mmmerge output replaced
        r = run("stitch", *args, "--out", tmp_path / "out", "--quiet", "--force")
        assert r.returncode == 0 and r.stdout == "" and "writing LLaVA" not in r.stderr and "Loading" not in r.stderr
        assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / ".mmmerge-output").is_file()


@pytest.mark.parametrize("args, needles", [
    # LLaVA's projector is in -> text -> text: an MLP hidden layer (32) wider than the new LLM (16) has no place
    (("--projector", "{llava}", "--transfer", "--language", "{lm16}"), ("llava: a mlp2x_gelu", "hidden size 32", "16")),
    (("--projector-type", "conv"), ("conv", "mlp2x_gelu")),
    (("--projector-type", "linear", "--fit", "ridge"), ("fit='ridge'", "--align-data")),
    (("--projector", "{llava}", "--projector-language", "{lm48}"), ("outputs 32 features", "lm48", "not made for")),
    (("--projector-type", "linear", "--vision-feature-layer", "7"), ("vision feature layer 7", "out of range")),
    (("--projector-type", "identity", "--fit", "train", "--align-data", "{images}/ok.jsonl"), ("identity",)),
    (("--projector-type", "linear", "--align-data", "{images}/missing.jsonl"), ("missing.jsonl", "no such")),
    (("--projector-type", "linear", "--align-data", "{images}/gone.jsonl"), ("gone.jsonl:1", "nope.png")),
    (("--projector-type", "linear", "--align-data", "{images}/broken.jsonl"), ("broken.png", "not a readable image")),
    (("--projector-type", "linear", "--dtype", "float9"), ("dtype 'float9'",)),
])
def test_bad_parameters_and_data(parts, tmp_path, args, needles):
    (parts / "images" / "ok.jsonl").write_text('{"image": "ok.png", "caption": "a red square"}\n')
    (parts / "images" / "gone.jsonl").write_text('{"image": "nope.png", "caption": "a red square"}\n')
    (parts / "images" / "broken.jsonl").write_text('{"image": "broken.png", "caption": "a red square"}\n'
                                                   '{"image": "ok.png", "caption": "a blue field"}\n')
    paths = dict(images=parts / "images", llava=parts / "llava", lm48=parts / "lm48", lm16=parts / "lm16")
    args = [a.format(**paths) for a in args]
    language = [] if "--language" in args else ["--language", parts / "lm"]
    refused(tmp_path, "--vision", parts / "vision", *language, *args, needles=needles)


def test_transfer_of_a_file_needs_its_language_model(parts, tmp_path):
    from mmmerge.projectors import build, save_projector

    path = save_projector(tmp_path / "p.safetensors", build("linear", 32, 32))
    refused(tmp_path, "--vision", parts / "vision", "--language", parts / "lm48", "--projector", path, "--transfer",
            needles=(str(path), "--projector-language"))


def test_cli_stitch_end_to_end(parts, tmp_path):
    """One command, every option on its way: a fitted projector on two concatenated layers, bf16 weights."""
    (tmp_path / "caps.jsonl").write_text(''.join(f'{{"image": "{parts / "images" / "ok.png"}", "caption": "{c}"}}\n'
                                                 for c in ("a red square", "a blue field", "the yellow triangle")))
    out = tmp_path / "llava"
    r = run("stitch", "--vision", parts / "vision", "--language", parts / "lm", "--projector-type", "mlp2x_gelu",
            "--align-data", tmp_path / "caps.jsonl", "--fit", "train", "--train-steps", "2", "--batch-size", "2",
            "--device", "cpu", "--vision-feature-layer", "-2", "-1", "--dtype", "bfloat16", "--seed", "3", "--out", out)
    assert r.returncode == 0, r.stderr
    assert f"wrote LLaVA to {out}" in r.stdout and "training loss" in r.stdout and "2 steps" in r.stdout
    model, processor = load_checked(out)
    cfg = model.config
    assert cfg.vision_feature_layer == [-2, -1] and cfg.vision_feature_select_strategy == "default"
    assert model.dtype == torch.bfloat16 and model.model.multi_modal_projector.linear_1.weight.shape == (32, 64)
    model = model.float()
    inputs = processor(images=image((32, 32)), text=PROMPT, return_tensors="pt")
    assert int((inputs["input_ids"] == cfg.image_token_id).sum()) == cfg.image_seq_length == 16
    tower = transformers.CLIPVisionModel.from_pretrained(parts / "vision").eval()
    px = inputs["pixel_values"]
    with torch.no_grad():
        hidden = model.model.vision_tower(pixel_values=px, output_hidden_states=True).hidden_states
        want = tower(pixel_values=px, output_hidden_states=True).hidden_states
        assert max_diff(hidden[-1], want[-1]) <= 0.05 * want[-1].abs().max()  # the source tower, rounded to bf16
        selected = torch.cat([hidden[-2][:, 1:], hidden[-1][:, 1:]], -1)  # both layers, class token dropped
        got = torch.stack(model.model.get_image_features(pixel_values=px).pooler_output)
        assert max_diff(got, model.model.multi_modal_projector(selected)) <= 1e-5
        out_ids = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out_ids.shape[1] == inputs["input_ids"].shape[1] + 2
