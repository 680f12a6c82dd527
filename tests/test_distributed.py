"""Several processes, one run (issue #16): ``accelerate launch`` with 2 CPU processes over gloo.

- PPO (tests/dist_worker.py on the tiny Llama): one update of a fixed batch split between the two ranks
  gives the parameters (LoRA, bridge, value head, E) of the one-process update on the whole batch; E is
  bit-identical on both ranks after several shielded steps (leak ratio < 1e-5) and a flipped bit stops
  the run; through ``run_recrl_cli.run`` only rank 0 writes files and ``--resume auto`` on 2 ranks
  continues exactly where the run left off.
- The ranker: ``train_sasrec.py`` on 2 processes equals one process with the same global batch.
- Without processes: the refusals (ZeRO-3/FSDP, a global batch that cannot shard) and the helpers.

NOTE: ``accelerate launch --cpu --num_processes 2`` starts one process unless MPI is installed; the
launcher used here is accelerate's torchrun one (``--multi_gpu``), which on a machine without a GPU (and
with ``--device cpu``) runs the ranks on the CPU over gloo (code/common/distributed.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shielded_recrl.common import distributed
from shielded_recrl.common.errors import InputError
from shielded_recrl.common.seeding import rank_seed

from test_explainer_unit import converted_smollm2, one_torch_thread, smollm2_dir, tiny_dir, tok  # noqa: F401
from test_trainer_ppo import _tiny_stage_root

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"


def launch(script: str, *args: str, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``script`` on 2 CPU processes (a free port, so concurrent runs do not clash)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), script, *args]
    res = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return res


def close(a, b, what: str, atol: float = 2e-5) -> None:
    """Within float tolerance: AdamW turns the ~1e-7 relative rounding differences of a sum taken in another
    order into parameter differences of up to a few 1e-6 (the parameters moved by 2e-2)."""
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=atol, msg=lambda m: f"{what}[{i}]: {m}")


# --- PPO -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ppo_on_two_ranks(ml100k_processed, tiny_dir, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("RECRL_ROOT", str(tmp_path / "root"))  # the warm start is written there, not into data/
    root, ranker_path = _tiny_stage_root(tmp_path, ml100k_processed, tiny_dir)
    out = tmp_path / "out"
    launch("tests/dist_worker.py", "--tiny_dir", str(tiny_dir), "--ranker", str(ranker_path), "--out", str(out),
           env={"RECRL_ROOT": str(root)})
    ranks = [out / f"rank{r}" for r in range(2)]
    assert [json.loads((d / "world.json").read_text()) for d in ranks] == [
        {"rank": r, "world": 2, "backend": "gloo"} for r in range(2)]

    # 1. one update: each rank on its half of the batch = one process on the whole batch
    upd = [torch.load(d / "update.pt", weights_only=False) for d in ranks]
    for adv in ("rloo", "gae"):
        for r in range(2):
            got, want, before = upd[r][adv]["ddp"], upd[0][adv]["single"], upd[r][adv]["before"]
            for part in ("policy", "bridge", "value_head"):
                close(got[part], want[part], f"{adv} rank {r} {part}")
            # the store: within 0.1% of its largest step. Its lr (5e-2) is 5× the policy's and Adam normalises
            # each entry's gradient, so an entry whose gradient is near its rounding floor can take a step that
            # differs by a few 1e-5 from one machine's summation order to another's (3.1e-5 on 1 of 656 entries
            # on one 2-core machine, < 2e-5 on another)
            step = (want["store"] - before["store"]).abs().max()
            gap = (got["store"] - want["store"]).abs().max()
            assert gap <= 1e-3 * step, (adv, r, step, gap)
            # AdamW's step hardly depends on the gradient's scale; its norm (before clipping) does
            assert upd[r][adv]["ddp_stats"]["grad_norm"] == pytest.approx(
                upd[0][adv]["single_stats"]["grad_norm"], rel=1e-5)
            moved = {part: any(not torch.equal(x, y) for x, y in zip(got[part], before[part]))
                     for part in ("policy", "bridge", "value_head")}  # not a vacuous comparison
            assert moved == {"policy": True, "bridge": True, "value_head": adv == "gae"}, moved
            assert not torch.equal(got["store"], before["store"])
        for part in ("policy", "bridge", "value_head"):  # the two ranks bit for bit
            assert all(torch.equal(x, y) for x, y in zip(upd[0][adv]["ddp"][part], upd[1][adv]["ddp"][part])), part
    for r in range(2):
        w = upd[r]["gae_whitened"]
        torch.testing.assert_close(w["ranks"], w["whole"], rtol=1e-5, atol=1e-6)

    # 2. several shielded steps: E bit-identical on both ranks, still off span(Q); a flipped bit stops both
    steps = [torch.load(d / "steps.pt", weights_only=False) for d in ranks]
    assert steps[0]["checksum"] == steps[1]["checksum"] and torch.equal(steps[0]["E"], steps[1]["E"])
    assert (steps[0]["E"] - steps[0]["E0"]).norm() > 1e-4 and steps[0]["leak"] < 1e-5, steps[0]["leak"]
    assert steps[0]["users"] != steps[1]["users"]  # each rank drew its own prompts
    for k, v in steps[0]["metrics"].items():  # reduced over ranks: the same numbers on both
        assert steps[1]["metrics"][k] == pytest.approx(v, nan_ok=True), k
    for s in steps:
        assert "store E differ across the 2 ranks" in s["caught"], s["caught"]

    # 3. the stage: rank 0 alone writes; --resume auto on 2 ranks repeats step 3 exactly
    runs = [json.loads((d / "run.json").read_text()) for d in ranks]
    assert runs[1]["writes"] == [], runs[1]["writes"][:10]
    assert any("checkpoints/recrl/ml100k/dp/" in w for w in runs[0]["writes"])
    for r in runs:
        assert r["first"]["steps"] == 3 and r["resumed"]["steps"] == 3
    rows = [json.loads(line) for line in (root / "logs" / "ml100k" / "dp" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 3]  # step 3 logged by the first run, then again on resume
    for key in ("env/reward", "objective/kl", "losses/policy", "losses/grad_norm", "shield/leak_ratio",
                "monitor/top10_overlap", "charts/response_len"):
        assert rows[3][key] == pytest.approx(rows[2][key], rel=1e-6, abs=1e-9), key
    assert rows[-1]["shield/leak_ratio"] < 1e-5
    state = torch.load(root / "checkpoints" / "recrl" / "ml100k" / "dp" / "step-000003" / "state.pt",
                       weights_only=True)
    assert len(state["ranks"]) == 2 and not torch.equal(state["ranks"][0]["generator"], state["ranks"][1]["generator"])
    assert {p.name for p in (root / "logs" / "ml100k" / "dp").iterdir()} <= {"metrics.jsonl", "summary.json", "tb",
                                                                             "train.log"}


# --- the ranker ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ranker_on_two_ranks_equals_one_process(ml100k_processed, tmp_path):
    from shielded_recrl.ranker.checkpoint import load_ranker
    from shielded_recrl.ranker.training import SASRecTrainConfig, train_model

    root = tmp_path / "root"
    (root / "data" / "proc").mkdir(parents=True)
    (root / "data" / "proc" / "ml100k").symlink_to(ml100k_processed.folder, target_is_directory=True)
    (root / "experiments").mkdir()
    (root / "experiments" / "none.yaml").write_text("seed: 3\n")
    # dropout 0: the dropout masks are each rank's own draws, so only a deterministic model can match
    flags = dict(hidden=16, n_layers=1, max_len=20, epochs=2, batch_size=256, dropout=0.0, lr=3e-3, grad_clip=1.0,
                 seed=3, device="cpu", threads=1, eval_batch_size=512)
    argv = ["--dataset", "ml100k", "--config", "experiments/none.yaml", "--out", "checkpoints/dp.pt"]
    for k, v in flags.items():
        argv += [f"--{k}", str(v)]
    launch("code/ranker/train_sasrec.py", *argv, env={"RECRL_ROOT": str(root)})
    model, raw = load_ranker(root / "checkpoints" / "dp.pt", expect_id_map=ml100k_processed.id_map_sha256)
    man = json.loads((root / "checkpoints" / "dp.manifest.json").read_text())

    one, history = train_model(SASRecTrainConfig(**flags), ml100k_processed)
    for (k, a), b in zip(one.state_dict().items(), model.state_dict().values(), strict=True):
        # 1e-4 against ~40 Adam steps of 3e-3: the key half of qkv.bias has a zero true gradient (softmax
        # ignores a constant key shift), so Adam turns its rounding noise into ~1e-5 steps on either side
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=lambda m: f"{k}: {m}")
    for h1, h2 in zip(history, man["history"], strict=True):
        assert h2["train/loss"] == pytest.approx(h1["train/loss"], rel=1e-5)
        assert h2["valid/full_masked/ndcg@10"] == pytest.approx(h1["valid/full_masked/ndcg@10"], abs=1e-4)
    assert "test/sasrec/full_masked/ndcg@10" in raw["metrics"] and man["stage"] == "ranker"
    rows = [json.loads(line) for line in (root / "logs" / "ml100k" / "ranker" / "metrics.jsonl").open()]
    assert [r.get("epoch") for r in rows] == [1, 2, None]  # one writer: one row per epoch, then the test row
    assert not (root / "checkpoints" / "dp.resume.pt").exists()


# --- without processes ---------------------------------------------------------------------------------
def test_parameter_sharding_launches_are_refused():
    for env in ({"ACCELERATE_USE_FSDP": "true"},
                {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}):
        with pytest.raises(InputError, match="shield") as err:
            distributed.check_launch(env)
        assert "E whole" in str(err.value) and "--multi_gpu" in str(err.value)
    distributed.check_launch({"ACCELERATE_USE_FSDP": "false", "WORLD_SIZE": "2"})  # plain DDP passes


def test_unshardable_ppo_batch_is_refused(monkeypatch):
    from shielded_recrl.trainer import run_recrl_cli

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(InputError, match=r"3 × --group_size|processes × --group_size \(3 × 4 = 12\)"):
        run_recrl_cli.parse(["--no_projection", "--ppo_batch", "16", "--group_size", "4"])
    assert run_recrl_cli.parse(["--no_projection", "--ppo_batch", "24", "--group_size", "4"]).ppo_batch == 24
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(InputError, match="FSDP"):
        run_recrl_cli.parse(["--no_projection", "--ppo_batch", "24", "--group_size", "4"])


def test_ppo_batch_help_says_global():
    res = subprocess.run([sys.executable, "code/trainer/run_recrl_cli.py", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0, res.stderr
    assert "the global batch, over all processes" in " ".join(res.stdout.split())


def test_one_process_helpers_are_the_identity():
    r = distributed.SINGLE
    g = torch.ones(3)
    assert (r.sum(2.5), r.max(1.0), r.all_true(False), r.broadcast("x"), r.gather(7)) == (2.5, 1.0, False, "x", [7])
    assert r.sum_tensor(g) is g and r.shard(5) == slice(0, 5) and r.reduce_metrics({"a": 1.0}) == {"a": 1.0}
    loss = torch.tensor(0.25)
    assert r.global_mean(loss, 3) == (loss, 0.25)
    assert [distributed.Ranks(k, 3).shard(7) for k in range(3)] == [slice(0, 3), slice(3, 5), slice(5, 7)]
    assert rank_seed(11, 0) == 11 and len({rank_seed(11, k) for k in range(4)}) == 4
    assert distributed.checksum(torch.zeros(2)) != distributed.checksum(torch.zeros(2, dtype=torch.float64))


def test_resume_on_another_number_of_ranks_keeps_or_reseeds_each_rank_stream(caplog):
    from shielded_recrl.trainer.config import RecRLConfig
    from shielded_recrl.trainer.run_recrl_cli import STREAMS, rank_streams

    cfg = RecRLConfig(no_projection=True)
    mine = [{k: f"{k}{r}" for k in STREAMS} for r in range(2)]
    two = {"step": 4, **mine[0], "ranks": mine}
    assert rank_streams(two, distributed.Ranks(1, 2), cfg) == mine[1]
    assert rank_streams(two, distributed.SINGLE, cfg) == mine[0] and "resumes on 1" in caplog.text
    one = {"step": 4, **mine[0]}  # a one-process checkpoint: rank 0 continues it, rank 1 starts its own streams
    assert rank_streams(one, distributed.Ranks(0, 2), cfg) == mine[0]
    fresh = rank_streams(one, distributed.Ranks(1, 2), cfg)
    assert set(fresh) == set(STREAMS)
    assert not torch.equal(fresh["generator"], torch.Generator().manual_seed(0).get_state())
