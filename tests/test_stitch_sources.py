"""Projectors from elsewhere: a LLaVA folder, a projector file, LLaVA's mm_projector.bin, and a projector transferred
to another LLM. Each stitched LLaVA is checked against transformers running the source (the source LLaVA, or the
source tower with the projector applied by hand), and the transfer map against numpy's least squares on the shared
vocabulary, found here by comparing token strings."""

import json

import numpy as np
import pytest
import torch
import transformers

from mmmerge import stitch
from mmmerge.projectors import build, from_state_dict, save_projector
from stitch_parts import PROMPT, image, load_checked, make_lm, make_vision
from tiny import llama_config, max_diff, randomize
from tiny_llava import build_tiny_llava
from tiny_tokenizer import SENTENCES, make_tokenizer

PX = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def tower_states(folder, px=PX):
    tower = transformers.CLIPVisionModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return tower(pixel_values=px, output_hidden_states=True).hidden_states


def image_features(folder, px=PX):
    """What a LLaVA folder's projector outputs for `px`, as transformers computes it: [batch, tokens, hidden]."""
    model = transformers.LlavaForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        return torch.stack(model.model.get_image_features(pixel_values=px).pooler_output)


def generates(model, processor):
    inputs = processor(images=image((32, 32)), text=PROMPT, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == model.config.image_seq_length
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


# ---- projector sources: (projector path, vision folder, expected features, layer, selection, tokens) -------------

def from_llava(tmp_path):
    """A LLaVA made for feature layer 1; its own tower is the vision encoder: the stitched LLaVA sees what it sees."""
    llava = build_tiny_llava(tmp_path / "llava")
    cfg = json.loads((llava / "config.json").read_text())
    cfg["vision_feature_layer"] = 1
    (llava / "config.json").write_text(json.dumps(cfg))
    return llava, llava, image_features(llava), 1, "default", 16


def from_file(tmp_path):
    """A file `save_projector` wrote, made for all tokens of the last layer."""
    p = build("mlp2x_gelu", 32, 32, seed=3).eval()
    with torch.no_grad():
        p.linear_2.bias.normal_(generator=torch.Generator().manual_seed(4))  # nn.Linear's init is small: make it count
    path = save_projector(tmp_path / "proj", p, vision_feature_layer=-1, vision_feature_select_strategy="full")
    vision = make_vision(tmp_path / "vision")
    with torch.no_grad():
        want = p(tower_states(vision)[-1])
    return path, vision, want, -1, "full", 17


def from_mm_projector_bin(tmp_path):
    """LLaVA's pretraining output for a linear projector: `model.mm_projector.weight/bias` in mm_projector.bin."""
    torch.manual_seed(5)
    linear = torch.nn.Linear(32, 32)
    torch.save({f"model.mm_projector.{k}": v for k, v in linear.state_dict().items()}, tmp_path / "mm_projector.bin")
    vision = make_vision(tmp_path / "vision")
    with torch.no_grad():
        want = linear(tower_states(vision)[-2][:, 1:])
    return tmp_path / "mm_projector.bin", vision, want, -2, "default", 16


SOURCES = {"llava": from_llava, "file": from_file, "mm_projector_bin": from_mm_projector_bin}


@pytest.mark.parametrize("kind", SOURCES)
def test_projector_from_a_llava_or_a_file_computes_what_its_source_computes(kind, tmp_path):
    projector, vision, want, layer, strategy, tokens = SOURCES[kind](tmp_path)
    lm = make_lm(tmp_path / "lm")
    report = stitch(vision, lm, tmp_path / "out", projector=projector, progress=False)
    model, processor = load_checked(tmp_path / "out")
    cfg = model.config
    assert (cfg.vision_feature_layer, cfg.vision_feature_select_strategy) == (layer, strategy)
    assert cfg.image_seq_length == report.image_seq_length == tokens == want.shape[1]
    assert report.projector_type == {"llava": "mlp2x_gelu", "file": "mlp2x_gelu", "mm_projector_bin": "linear"}[kind]
    with torch.no_grad():
        got = torch.stack(model.model.get_image_features(pixel_values=PX).pooler_output)
    assert got.shape == want.shape and max_diff(got, want) <= 1e-5
    generates(model, processor)


# ---- transfer to another LLM ------------------------------------------------------------------------------------

WORDS = " ".join(f"w{i}" for i in range(60))


def related_lm(folder, source_lm, hidden_size=48, noise=0.001, seed=1, related=True):
    """An LLM whose tokenizer numbers words differently (and knows others), with embeddings for the words it shares
    with `source_lm` equal to M · e + c + noise (M random [48, 32]); unrelated random rows when not `related`."""
    tok = make_tokenizer(folder, ["zebra zebra zebra quartz quartz", *reversed(SENTENCES), WORDS])
    src_tok = transformers.AutoTokenizer.from_pretrained(source_lm)
    src = transformers.LlamaForCausalLM.from_pretrained(source_lm).get_input_embeddings().weight.detach()
    torch.manual_seed(seed)
    lm = randomize(transformers.LlamaForCausalLM(llama_config(vocab_size=len(tok), hidden_size=hidden_size)), seed)
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(hidden_size, src.shape[1], generator=g) / src.shape[1] ** 0.5
    c = torch.randn(hidden_size, generator=g)
    emb = lm.get_input_embeddings().weight
    with torch.no_grad():
        for word, i in tok.get_vocab().items():
            j = src_tok.get_vocab().get(word)
            if related and j is not None:
                emb[i] = src[j] @ M.T + c + noise * torch.randn(hidden_size, generator=g)
    lm.save_pretrained(folder)
    return folder


def shared_rows(source_lm, target_lm):
    """(source rows, target rows) of the word strings both vocabularies hold, specials left out."""
    a, b = (transformers.AutoTokenizer.from_pretrained(p) for p in (source_lm, target_lm))
    special = set(a.all_special_tokens) | set(b.all_special_tokens) | {"<image>"}
    words = sorted((set(a.get_vocab()) & set(b.get_vocab())) - special)
    ea, eb = (transformers.AutoModelForCausalLM.from_pretrained(p).get_input_embeddings().weight.detach()
              for p in (source_lm, target_lm))
    ea, eb = ea.double().numpy(), eb.double().numpy()
    return ea[[a.get_vocab()[w] for w in words]], eb[[b.get_vocab()[w] for w in words]]


def lstsq_map(X, Y):
    """Affine least squares Y ≈ X Wᵀ + b by numpy, and the relative residual ||err|| / ||Y - mean(Y)||."""
    A = np.concatenate([X, np.ones((len(X), 1))], 1)
    sol = np.linalg.lstsq(A, Y, rcond=None)[0]
    W, b = sol[:-1].T, sol[-1]
    residual = np.linalg.norm(X @ W.T + b - Y) / np.linalg.norm(Y - Y.mean(0))
    return torch.from_numpy(W).float(), torch.from_numpy(b).float(), float(residual)


@pytest.fixture(scope="module")
def transfer_models(tmp_path_factory):
    """LLaVA A (made by stitching with LLM A), LLM B related to A by a linear map, and LLM C unrelated to A."""
    d = tmp_path_factory.mktemp("transfer")
    make_vision(d / "vision")
    tok = make_tokenizer(d / "lm_a", [*SENTENCES, WORDS])  # more words than the embedding size: an overdetermined fit
    torch.manual_seed(0)
    randomize(transformers.LlamaForCausalLM(llama_config(vocab_size=len(tok))), 0).save_pretrained(d / "lm_a")
    stitch(d / "vision", d / "lm_a", d / "llava_a", projector_type="mlp2x_gelu", seed=2, progress=False)
    related_lm(d / "lm_b", d / "lm_a")
    related_lm(d / "lm_c", d / "lm_a", related=False, seed=3)
    return d


@pytest.mark.parametrize("how", ["llava", "file"])
def test_transferred_projector_is_the_embedding_map_after_the_projector(how, transfer_models, tmp_path):
    d = transfer_models
    if how == "llava":  # the LLaVA's own language model is the source
        kw = dict(projector=d / "llava_a", transfer=True)
    else:  # a projector file, its LLM named
        model_a = transformers.LlavaForConditionalGeneration.from_pretrained(d / "llava_a")
        p = from_state_dict({k: v.detach() for k, v in model_a.model.multi_modal_projector.state_dict().items()})
        kw = dict(projector=save_projector(tmp_path / "p.safetensors", p), projector_language=d / "lm_a")
    report = stitch(d / "vision", d / "lm_b", tmp_path / "out", alpha=0.0, progress=False, **kw)

    X, Y = shared_rows(d / "lm_a", d / "lm_b")
    W, b, residual = lstsq_map(X, Y)
    t = report.transfer
    assert t.shared_tokens == len(X) > 33 and (t.source_hidden_size, t.target_hidden_size) == (32, 48)
    assert t.residual == pytest.approx(residual, rel=1e-3, abs=1e-6)
    assert residual < 0.05  # the noise level (rows spread ~0.05, noise 0.001): B is a linear image of A
    assert f"residual {t.residual:.4f}" in "\n".join(report.lines())

    model, processor = load_checked(tmp_path / "out")
    with torch.no_grad():
        got = torch.stack(model.model.get_image_features(pixel_values=PX).pooler_output)
    want = image_features(d / "llava_a") @ W.T + b  # map ∘ projector, the tower unchanged
    assert got.shape == (2, 16, 48) and max_diff(got, want) <= 1e-4
    inputs = processor(images=[image((32, 32)), image((32, 32), 1)], text=[PROMPT, PROMPT], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    generates(model, processor)


def test_transfer_residual_tells_unrelated_embeddings_apart(transfer_models, tmp_path):
    d = transfer_models
    report = stitch(d / "vision", d / "lm_c", tmp_path / "out", projector=d / "llava_a", transfer=True, alpha=0.0,
                    progress=False)
    _, _, residual = lstsq_map(*shared_rows(d / "lm_a", d / "lm_c"))
    assert report.transfer.residual == pytest.approx(residual, rel=1e-3) and residual > 0.5


def test_procrustes_transfer_recovers_a_scaled_rotation(transfer_models, tmp_path):
    """LLM D's shared rows are s·R·e + c exactly: Procrustes finds the map with no residual."""
    d = transfer_models
    tok = make_tokenizer(tmp_path / "lm_d", [*reversed(SENTENCES), WORDS])
    src_tok = transformers.AutoTokenizer.from_pretrained(d / "lm_a")
    src = transformers.LlamaForCausalLM.from_pretrained(d / "lm_a").get_input_embeddings().weight.detach()
    R, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(8)))
    lm = randomize(transformers.LlamaForCausalLM(llama_config(vocab_size=len(tok))), 4)
    with torch.no_grad():
        for word, i in tok.get_vocab().items():
            if word in src_tok.get_vocab():
                lm.get_input_embeddings().weight[i] = 2.0 * src[src_tok.get_vocab()[word]] @ R.T + 0.5
    lm.save_pretrained(tmp_path / "lm_d")
    report = stitch(d / "vision", tmp_path / "lm_d", tmp_path / "out", projector=d / "llava_a", transfer=True,
                    transfer_method="procrustes", progress=False)
    assert report.transfer.method == "procrustes" and report.transfer.residual < 1e-5
    model, _ = load_checked(tmp_path / "out")
    with torch.no_grad():
        got = torch.stack(model.model.get_image_features(pixel_values=PX).pooler_output)
    assert max_diff(got, 2.0 * image_features(d / "llava_a") @ R.T + 0.5) <= 1e-4
