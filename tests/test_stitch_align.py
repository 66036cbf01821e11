"""Projectors fitted on image-caption data: the closed-form fits against numpy's least squares and scipy's Procrustes
on features that transformers computes from the source tower and LLM, and the training loop against the captioning
loss transformers computes before and after it."""

import json
import random

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from scipy.linalg import orthogonal_procrustes

from mmmerge import stitch
from stitch_parts import image, load_checked, make_lm, make_vision
from tiny_tokenizer import SENTENCES

PAIRS = 40  # more than the 33 unknowns per output of an affine map from 32 features: an overdetermined fit
BARS = ("image features", "projector training", "writing LLaVA", "Loading weights")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A CLIP tower, an LLM, and PAIRS image-caption pairs: half plain lines, half in LLaVA's conversation format."""
    d = tmp_path_factory.mktemp("align")
    make_vision(d / "vision")
    make_lm(d / "lm")
    (d / "images").mkdir()
    words = " ".join(SENTENCES).split()
    rng = random.Random(0)
    lines, captions = [], []
    for i in range(PAIRS):
        image((32, 32), seed=100 + i).save(d / "images" / f"{i}.png")
        caption = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
        captions.append(caption)
        lines.append({"image": f"{i}.png", "caption": caption} if i % 2 else
                     {"image": f"{i}.png", "conversations": [{"from": "human", "value": "<image>\ndescribe it"},
                                                             {"from": "gpt", "value": caption}]})
    (d / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return d, captions


def pixels(d, n=PAIRS):
    processor = transformers.CLIPImageProcessor.from_pretrained(d / "vision")
    images = [Image.open(d / "images" / f"{i}.png").convert("RGB") for i in range(n)]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def paired_features(d, captions):
    """X: each image's mean CLIP feature at layer -2 without the class token; Y: each caption's mean token embedding."""
    tower = transformers.CLIPVisionModel.from_pretrained(d / "vision").eval()
    with torch.no_grad():
        X = tower(pixel_values=pixels(d), output_hidden_states=True).hidden_states[-2][:, 1:].mean(1)
    tok = transformers.AutoTokenizer.from_pretrained(d / "lm")
    emb = transformers.LlamaForCausalLM.from_pretrained(d / "lm").get_input_embeddings().weight.detach()
    Y = torch.stack([emb[tok(c, add_special_tokens=False)["input_ids"]].mean(0) for c in captions])
    return X.double().numpy(), Y.double().numpy()


def mean_image_features(folder, px):
    """The stitched LLaVA's projector output per image, averaged over tokens (a linear map commutes with the mean)."""
    model, _ = load_checked(folder)
    with torch.no_grad():
        return torch.stack(model.model.get_image_features(pixel_values=px).pooler_output).mean(1).double().numpy()


def relative_residual(P, Y):
    return float(np.linalg.norm(P - Y) / np.linalg.norm(Y - Y.mean(0)))


def no_bars(err):
    return not any(bar in err for bar in BARS)


def test_ridge_fit_is_least_squares_on_image_and_caption_features(models, tmp_path, capsys):
    d, captions = models
    capsys.readouterr()
    report = stitch(d / "vision", d / "lm", tmp_path / "out", projector_type="linear", align_data=d / "data.jsonl",
                    image_folder=d / "images", fit="ridge", alpha=0.0, progress=False)
    assert no_bars(capsys.readouterr().err)
    X, Y = paired_features(d, captions)
    A = np.concatenate([X, np.ones((PAIRS, 1))], 1)
    want = A @ np.linalg.lstsq(A, Y, rcond=None)[0]
    got = mean_image_features(tmp_path / "out", pixels(d))
    assert np.abs(got - want).max() <= 1e-4 * np.abs(Y).max()
    assert report.fit_residual == pytest.approx(relative_residual(want, Y), rel=1e-3)
    assert 0 < report.fit_residual < 1  # better than predicting the mean caption
    assert report.projector_type == "linear" and "ridge" in report.projector and str(PAIRS) in report.projector


def test_procrustes_fit_matches_scipy(models, tmp_path):
    d, captions = models
    report = stitch(d / "vision", d / "lm", tmp_path / "out", projector_type="linear", align_data=d / "data.jsonl",
                    image_folder=d / "images", fit="procrustes", progress=False)
    X, Y = paired_features(d, captions)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Q, singular_sum = orthogonal_procrustes(Xc, Yc)  # Xc Q ≈ Yc, Q orthogonal
    scale = singular_sum / (Xc * Xc).sum()  # the best scalar for the rotated features
    want = scale * Xc @ Q + Y.mean(0)
    got = mean_image_features(tmp_path / "out", pixels(d))
    assert np.abs(got - want).max() <= 1e-4 * np.abs(Y).max()
    assert report.fit_residual == pytest.approx(relative_residual(want, Y), rel=1e-3)
    # a rotation cannot fit random captions as well as a free linear map
    A = np.concatenate([X, np.ones((PAIRS, 1))], 1)
    assert report.fit_residual > relative_residual(A @ np.linalg.lstsq(A, Y, rcond=None)[0], Y)


def caption_loss(folder, d, captions, n):
    """LLaVA's captioning loss on the first n pairs, as transformers computes it: `<image>\\n` caption eos, loss on
    the caption and eos only."""
    model, processor = load_checked(folder)
    tok = processor.tokenizer
    tok.padding_side = "right"
    images = [Image.open(d / "images" / f"{i}.png").convert("RGB") for i in range(n)]
    batch = processor(images=images, text=[f"<image>\n{c}{tok.eos_token}" for c in captions[:n]], return_tensors="pt",
                      padding=True)
    labels = batch["input_ids"].clone()
    prompt = 1 + model.config.image_seq_length  # <s> and the image tokens (the tokenizer drops the newline)
    assert (batch["input_ids"][:, 1:prompt] == model.config.image_token_id).all()
    labels[:, :prompt] = -100
    labels[batch["attention_mask"] == 0] = -100
    with torch.no_grad():
        return float(model(**batch, labels=labels).loss), model


def test_training_lowers_the_captioning_loss_and_touches_only_the_projector(models, tmp_path, capsys):
    d, captions = models
    n = 4
    lines = [json.dumps({"image": str(d / "images" / f"{i}.png"), "caption": c}) for i, c in enumerate(captions[:n])]
    (tmp_path / "few.jsonl").write_text("".join(line + "\n" for line in lines))  # absolute image paths
    stitch(d / "vision", d / "lm", tmp_path / "before", projector_type="mlp2x_gelu", seed=1, progress=False)
    capsys.readouterr()
    report = stitch(d / "vision", d / "lm", tmp_path / "after", projector_type="mlp2x_gelu", seed=1,
                    align_data=tmp_path / "few.jsonl", fit="train", train_steps=8, lr=1e-2, batch_size=n, device="cpu",
                    progress=False)
    assert no_bars(capsys.readouterr().err)
    assert len(report.losses) == 8 and report.losses[-1] < report.losses[0]
    assert "trained 8 steps" in report.projector

    before, untrained = caption_loss(tmp_path / "before", d, captions, n)
    after, trained = caption_loss(tmp_path / "after", d, captions, n)
    assert report.losses[0] == pytest.approx(before, rel=1e-4)  # step 1 sees all n pairs with the initial projector
    assert after < before - 0.2, (before, after)  # about 4.18 -> 3.75 here
    changed = {k for k, v in trained.state_dict().items() if not torch.equal(v, untrained.state_dict()[k])}
    assert changed and all(k.startswith("model.multi_modal_projector.") for k in changed)


def test_progress_bars_show_unless_turned_off(models, tmp_path, capsys):
    d, captions = models
    (tmp_path / "one.jsonl").write_text(json.dumps({"image": "0.png", "caption": captions[0]}) + "\n"
                                        + json.dumps({"image": "1.png", "caption": captions[1]}) + "\n")
    capsys.readouterr()
    stitch(d / "vision", d / "lm", tmp_path / "out", projector_type="linear", align_data=tmp_path / "one.jsonl",
           image_folder=d / "images", fit="train", train_steps=2, batch_size=2, device="cpu", progress=True)
    err = capsys.readouterr().err
    assert "projector training" in err and "writing LLaVA" in err
    stitch(d / "vision", d / "lm", tmp_path / "out2", projector_type="linear", align_data=tmp_path / "one.jsonl",
           image_folder=d / "images", fit="ridge", progress=True)
    assert "image features" in capsys.readouterr().err
    # transformers' own bars are back on after a quiet stitch
    stitch(d / "vision", d / "lm", tmp_path / "out3", projector_type="linear", progress=False)
    assert transformers.utils.logging.is_progress_bar_enabled()
