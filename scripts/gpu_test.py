"""Check that this machine can run the full (GPU) configuration; prints one line per check.

    python scripts/gpu_test.py               # exit 1 when no usable CUDA GPU, or a GPU check fails
    python scripts/gpu_test.py --allow_cpu   # on a CPU-only machine: say so, run the CPU checks, exit 0
    python scripts/gpu_test.py --skip_lora   # leave out the LoRA forward/backward
    python gpu_test.py [flags]               # the same from the repository root (the seed README's command)

Checks, on every visible GPU's first device: name, memory, compute capability; bf16 and fp16 matmuls;
bitsandbytes import and an int8 ``Linear8bitLt`` forward (what ``--int8`` uses); a matmul timing; a LoRA
forward/backward (peft) on a tiny randomly initialised ``LlamaForCausalLM`` built from a config, so
nothing is downloaded. Without a GPU only the matmul timing and the LoRA check run, on CPU.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

try:  # importing the project installs its filter for bitsandbytes' misleading CPU notice (common/quiet.py),
    import shielded_recrl.common  # noqa: F401 - which peft's import of bitsandbytes would print on CPU
except ImportError:  # the check also runs where the project is not installed (yet)
    pass


def lora_check(device: torch.device, dtype: torch.dtype = torch.float32) -> dict:
    """One LoRA forward/backward on a 2-layer Llama (hidden 64): only the adapters receive gradients."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                 "o_proj"], lora_dropout=0.0))
    ids = torch.randint(0, config.vocab_size, (2, 16), device=device)
    t0 = time.perf_counter()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    base_grads = [p.grad for n, p in model.named_parameters() if "lora_" not in n]
    grad_norm = float(sum(g.norm() for g in lora_grads if g is not None))
    return {"loss": float(out.loss.detach()), "lora_grad_norm": grad_norm,
            "n_lora_with_grad": sum(g is not None for g in lora_grads), "n_lora": len(lora_grads),
            "base_with_grad": sum(g is not None for g in base_grads), "seconds": seconds}


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Throughput of an n × n matmul in TFLOP/s (the mean over ``repeats`` after one warm-up)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up (kernel selection, lazy CUDA init)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e12


def int8_check(device: torch.device) -> str:
    """bitsandbytes' int8 Linear (LLM.int8(), Dettmers et al. 2022) forward on the GPU."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    ref = torch.nn.Linear(64, 64, bias=False).half()
    layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False, threshold=6.0)
    layer.load_state_dict(ref.state_dict())
    layer = layer.to(device)  # quantizes the weights
    x = torch.randn(4, 64, device=device, dtype=torch.float16)
    y = layer(x)
    err = float((y.float() - ref.to(device)(x).float()).abs().max() / ref.to(device)(x).float().abs().max())
    if not torch.isfinite(y).all() or err > 0.1:
        raise RuntimeError(f"int8 output differs from fp16 by {err:.3f} (relative max)")
    return f"bitsandbytes {bnb.__version__}: int8 Linear forward ok (relative error vs fp16 {err:.4f})"


class Report:
    def __init__(self):
        self.failed: list[str] = []

    def check(self, name: str, fn) -> object:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - every failure is reported by name, then the exit code says it
            print(f"[FAIL] {name}: {type(err).__name__}: {err}")
            self.failed.append(name)
            return None
        print(f"[ ok ] {name}: {result}")
        return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--allow_cpu", action="store_true", help="exit 0 on a machine without a CUDA GPU")
    p.add_argument("--skip_lora", action="store_true", help="skip the LoRA forward/backward check")
    args = p.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 2))  # a check, not a benchmark of the CPU
    print(f"torch {torch.__version__} (built with CUDA {torch.version.cuda}); python {sys.version.split()[0]}")
    rep = Report()

    if not torch.cuda.is_available():
        why = ("this torch build has no CUDA support: reinstall torch into the venv from a CUDA index "
               "(README 'Install')" if torch.version.cuda is None else
               "torch has CUDA support but sees no GPU (driver missing, or CUDA_VISIBLE_DEVICES hides it; "
               "try nvidia-smi)")
        print(f"no CUDA GPU: {why}")
        cpu = torch.device("cpu")
        rep.check("matmul fp32 512x512 on CPU (TFLOP/s)", lambda: round(matmul_tflops(cpu, torch.float32, 512), 4))
        if not args.skip_lora:
            rep.check("LoRA forward/backward on CPU", lambda: _lora_summary(lora_check(cpu)))
        if not args.allow_cpu:
            print("gpu_test: FAILED - the full configuration needs a CUDA GPU (pass --allow_cpu to accept CPU)")
            return 1
        print(f"gpu_test: CPU only, accepted (--allow_cpu); {len(rep.failed)} CPU check(s) failed")
        return 1 if rep.failed else 0

    for i in range(torch.cuda.device_count()):
        prop = torch.cuda.get_device_properties(i)
        print(f"GPU {i}: {prop.name}, {prop.total_memory / 2**30:.1f} GiB, "
              f"compute capability {prop.major}.{prop.minor}")
    dev = torch.device("cuda", 0)
    bf16 = torch.cuda.is_bf16_supported()
    print(f"bf16 supported: {bf16} (the stages' --dtype auto picks bf16 only where it is)")
    rep.check("fp16 matmul 4096 (TFLOP/s)", lambda: round(matmul_tflops(dev, torch.float16, 4096), 1))
    if bf16:
        rep.check("bf16 matmul 4096 (TFLOP/s)", lambda: round(matmul_tflops(dev, torch.bfloat16, 4096), 1))
    rep.check("fp32 matmul 4096 (TFLOP/s)", lambda: round(matmul_tflops(dev, torch.float32, 4096), 1))
    rep.check("bitsandbytes int8", lambda: int8_check(dev))
    if not args.skip_lora:
        rep.check("LoRA forward/backward on GPU", lambda: _lora_summary(lora_check(dev)))
    free, total = torch.cuda.mem_get_info(dev)
    print(f"GPU 0 memory free {free / 2**30:.1f} of {total / 2**30:.1f} GiB")
    if rep.failed:
        print(f"gpu_test: FAILED checks: {', '.join(rep.failed)}")
        return 1
    print("gpu_test: all GPU checks passed")
    return 0


def _lora_summary(r: dict) -> str:
    if r["n_lora_with_grad"] != r["n_lora"] or r["lora_grad_norm"] <= 0 or r["base_with_grad"]:
        raise RuntimeError(f"gradients in the wrong place: {r}")
    return f"loss {r['loss']:.3f}, {r['n_lora']} LoRA B matrices with gradients, base frozen, {r['seconds']:.2f}s"


if __name__ == "__main__":
    sys.exit(main())
