"""The seed README's two verification commands, run as a new user runs them, from the repository root:

- ``python gpu_test.py`` (root entry point → ``scripts/gpu_test.py``): argv and exit code forwarded, with
  the venv's python or re-executed into it from another python; the CPU path's real behaviour;
- ``bash environment_check.sh`` (→ ``scripts/environment_check.sh``): exit 0 on a fresh checkout, one
  "not yet run: <command>" line per missing stage output, and where an output is when it exists;
- no CPU stage prints bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" notice
  (peft imports bitsandbytes on every device; ``shielded_recrl.common.quiet`` filters that one line).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shielded_recrl.common.quiet import BNB_CPU_LOGGER, BNB_KERNELS_NOTICE

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parents[1]  # the interpreter running the tests is the project's venv


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(cmd: list[str], env: dict | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RECRL_VENV": str(VENV), **(env or {})})


# --- python gpu_test.py ----------------------------------------------------------------------------------
@pytest.mark.skipif(_cuda(), reason="the CPU path is what this tests")
def test_root_gpu_test_cpu_path():
    ok = run([sys.executable, "gpu_test.py", "--allow_cpu", "--skip_lora"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "no CUDA GPU" in ok.stdout and re.search(r"\[ ok \] matmul fp32 512x512 on CPU \(TFLOP/s\): \d", ok.stdout)
    assert "gpu_test: CPU only, accepted (--allow_cpu); 0 CPU check(s) failed" in ok.stdout
    assert "LoRA" not in ok.stdout
    assert "project's venv" not in ok.stderr  # already the venv's python: runs in this process

    plain = run([sys.executable, "gpu_test.py"])  # what the seed README says to type
    out = plain.stdout + plain.stderr
    assert plain.returncode == 1, out
    assert "gpu_test: FAILED - the full configuration needs a CUDA GPU (pass --allow_cpu to accept CPU)" in plain.stdout
    assert re.search(r"\[ ok \] LoRA forward/backward on CPU: loss \d", plain.stdout), out
    assert BNB_KERNELS_NOTICE not in out  # the LoRA check imports peft, and peft imports bitsandbytes


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_root_gpu_test_gpu_path():
    res = run([sys.executable, "gpu_test.py", "--skip_lora"], timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "gpu_test: all GPU checks passed" in res.stdout and "[ ok ] bitsandbytes int8" in res.stdout


def test_root_gpu_test_forwards_argv_errors():
    res = run([sys.executable, "gpu_test.py", "--no_such_flag"])
    assert res.returncode == 2 and "unrecognized arguments: --no_such_flag" in res.stderr


def _python_outside_venv() -> str | None:
    """A ``python3`` on PATH that is not the venv's interpreter (what "plain python3" means to a new user)."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and Path(p).resolve() != (VENV / "bin").resolve())
    exe = shutil.which("python3", path=path)
    if exe is None:
        return None
    prefix = subprocess.run([exe, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                            env={**os.environ, "PATH": path}, timeout=60).stdout.strip()
    return exe if prefix and Path(prefix).resolve() != VENV.resolve() else None


@pytest.mark.skipif(_cuda(), reason="the CPU path is what this tests")
def test_root_gpu_test_reexecs_into_the_venv_from_plain_python3():
    exe = _python_outside_venv()
    if exe is None:
        pytest.skip("no python3 outside the venv on PATH")
    ok = run([exe, "gpu_test.py", "--allow_cpu", "--skip_lora"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"with the project's venv: {VENV / 'bin' / 'python'}" in ok.stderr
    assert "gpu_test: CPU only, accepted (--allow_cpu)" in ok.stdout
    strict = run([exe, "gpu_test.py", "--skip_lora"])  # the exit code comes back through the re-exec
    assert strict.returncode == 1 and "FAILED - the full configuration needs a CUDA GPU" in strict.stdout


# --- bash environment_check.sh ---------------------------------------------------------------------------
STAGES = {  # label → the stage script its "not yet run" command names
    "processed data [ml100k]": "code/dataset/make_splits.py",
    "ranker checkpoint [ml100k]": "code/ranker/train_sasrec.py",
    "basis [ml100k]": "code/projection/run_basis.py",
    "warm start [ml100k]": "code/explainer/init_lora.py",
    "PPO run [ml100k]": "code/trainer/run_recrl_cli.py",
    "eval [ml100k/shielded]": "code/eval/evaluate_run.py",
    "audit [ml100k/shielded]": "code/audit/run_audit.py",
    "aggregate": "code/eval/aggregate_main.py",
}


def env_check(root: Path) -> subprocess.CompletedProcess:
    return run(["bash", "environment_check.sh"], env={"RECRL_ROOT": str(root)}, timeout=120)


def test_root_environment_check_on_a_fresh_checkout(tmp_path):
    res = env_check(tmp_path)  # nothing under the root: no stage has run
    assert res.returncode == 0, res.stderr
    for section in ("== system", "== python", "== offline assets", "== data and stage outputs", "torch "):
        assert section in res.stdout
    lines = res.stdout.splitlines()
    for label, script in STAGES.items():
        line = next((ln for ln in lines if ln.startswith(f"{label}: ")), None)
        assert line is not None, f"no line for {label}:\n{res.stdout}"
        assert line.startswith(f"{label}: not yet run: python "), line
        named = re.findall(r"python (code/\S+\.py)", line)
        assert script in named and all((REPO / s).exists() for s in named), line
    assert "--dataset ml100k" in next(ln for ln in lines if ln.startswith("ranker checkpoint [ml100k]"))


def test_environment_check_reports_where_outputs_are(tmp_path):
    root = tmp_path
    for d in ("ml100k", "steam"):
        (root / "data" / "proc" / d).mkdir(parents=True)
        (root / "data" / "proc" / d / "manifest.json").write_text("{}")
    ck = root / "checkpoints"
    (ck / "lora_init_ml100k").mkdir(parents=True)  # a folder without its manifest: an interrupted run
    (ck / "sasrec_ml100k.pt").write_bytes(b"x" * 10)
    (ck / "recrl" / "ml100k" / "shielded").mkdir(parents=True)
    (ck / "recrl" / "ml100k" / "shielded" / "latest").write_text(json.dumps({"step": 2, "folder": "step-000002"}))
    (root / "logs" / "ml100k" / "shielded").mkdir(parents=True)
    (root / "logs" / "ml100k" / "shielded" / "eval.json").write_text("{}")
    res = env_check(root)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "processed data [ml100k]: data/proc/ml100k/ (" in out and "processed data [steam]: data/proc/steam/ (" in out
    assert "ranker checkpoint [ml100k]: checkpoints/sasrec_ml100k.pt (" in out
    assert "ranker checkpoint [steam]: not yet run: python code/ranker/train_sasrec.py --dataset steam" in out
    assert "warm start [ml100k]: checkpoints/lora_init_ml100k/ is incomplete (no manifest.json); re-run: " \
           "python code/explainer/init_lora.py --dataset ml100k" in out
    assert re.search(r'PPO run \[ml100k/shielded\]: checkpoints/recrl/ml100k/shielded/ \(latest \{"step":2', out), out
    assert "eval [ml100k/shielded]: logs/ml100k/shielded/eval.json (" in out
    assert "audit [ml100k/shielded]: not yet run: python code/audit/run_audit.py --model_ckpt " \
           "checkpoints/recrl/ml100k/shielded/latest" in out


# --- bitsandbytes' CPU kernel notice ----------------------------------------------------------------------
def _py(code: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-c", code], timeout=300)


def test_quiet_filter_drops_exactly_the_bitsandbytes_notice():
    emit = ("import logging\n"
            f"lg = logging.getLogger({BNB_CPU_LOGGER!r})\n"
            f"lg.warning({BNB_KERNELS_NOTICE + ': %s. Please make sure you already `pip install kernels`'!r}, "
            "\"No module named 'kernels'\")\n"
            "lg.warning('another bitsandbytes warning')\n")
    bare = _py(emit)  # without the project: the notice prints (so the check below can fail)
    assert BNB_KERNELS_NOTICE in bare.stderr and "another bitsandbytes warning" in bare.stderr
    quiet = _py("import shielded_recrl.common\n" + emit)
    assert BNB_KERNELS_NOTICE not in quiet.stderr and "another bitsandbytes warning" in quiet.stderr


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_filter_matches_the_installed_bitsandbytes():
    """The filter names bitsandbytes' logger and message: a new bitsandbytes that rewords it must fail here."""
    pkg = Path(list(importlib.util.find_spec("bitsandbytes").submodule_search_locations)[0])
    src = (pkg / "backends" / "cpu" / "ops.py").read_text()
    assert BNB_CPU_LOGGER == "bitsandbytes.backends.cpu.ops" and "logging.getLogger(__name__)" in src
    assert f'"{BNB_KERNELS_NOTICE}: %s.' in src


@pytest.mark.skipif(_cuda(), reason="the CPU path is what this tests")
def test_cpu_stage_output_has_no_bitsandbytes_notice():
    """What the warm-start stage does up to model construction (LoRA on the base model), on a tiny Llama."""
    res = _py(
        "import sys, torch\n"
        "from shielded_recrl.explainer.loading import add_lora\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,\n"
        "                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)\n"
        "model = add_lora(LlamaForCausalLM(cfg), 4, 8.0, 0.0, ['q', 'k', 'v', 'o'])\n"
        "model(input_ids=torch.ones(1, 4, dtype=torch.long))\n"
        "print('bitsandbytes imported:', 'bitsandbytes' in sys.modules)\n")
    assert res.returncode == 0, res.stderr
    if importlib.util.find_spec("bitsandbytes") is not None:
        assert "bitsandbytes imported: True" in res.stdout  # peft did import it: the notice had its chance
    assert BNB_KERNELS_NOTICE not in res.stdout + res.stderr
