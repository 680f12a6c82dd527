# Windows counterpart of scripts/run_local_smoke.sh: the smoke pipeline on MovieLens-100K, offline assets.
#   powershell -ExecutionPolicy Bypass -File scripts\run_local_smoke.ps1 [-Force] [-Dataset ml100k]
# Sets up (or reuses) the venv through setup_windows.ps1, then runs the same stages one at a time (bash: --jobs 1);
# each stage's output goes to logs\smoke\<stage>.log and a failure names the stage and its log.
# UNTESTED: this project's CI has no PowerShell; keep it in step with run_local_smoke.sh.
param([switch]$Force, [string]$Dataset = 'ml100k')
$ErrorActionPreference = 'Stop'
$Root = Split-Path -Parent $PSScriptRoot
& (Join-Path $Root 'setup_windows.ps1')
$Venv = if ($env:RECRL_VENV) { $env:RECRL_VENV } else { Join-Path $Root '.venv' }
$Py = Join-Path $Venv 'Scripts\python.exe'
Set-Location $Root
$LogDir = Join-Path $Root 'logs\smoke'
New-Item -ItemType Directory -Force -Path $LogDir | Out-Null
$Times = Join-Path $LogDir 'stage_times.tsv'
Set-Content -Path $Times -Value $null
$ForceArgs = if ($Force) { @('--force') } else { @() }

function Invoke-Stage {  # Invoke-Stage NAME ARGS... : python ARGS, logged and timed
    param([string]$Name, [string[]]$Arguments)
    $log = Join-Path $LogDir "$Name.log"
    Write-Host "[smoke] stage '$Name': python $($Arguments -join ' ')"
    $watch = [System.Diagnostics.Stopwatch]::StartNew()
    # 'Continue' in this scope: with output redirected, Windows PowerShell 5.1 turns a native command's
    # stderr lines (Python's logging) into errors that 'Stop' would make fatal; the exit code decides.
    $ErrorActionPreference = 'Continue'
    & $Py @Arguments *> $log
    if ($LASTEXITCODE -ne 0) {
        Get-Content $log -Tail 20 | Write-Host
        throw "[smoke] stage '$Name' FAILED; its log: $log"
    }
    $s = [math]::Round($watch.Elapsed.TotalSeconds, 1)
    Add-Content -Path $Times -Value "$Name`t$s"
    Write-Host "[smoke]   done in ${s}s"
}

Invoke-Stage 'download' @('code/dataset/download.py', '--dataset', $Dataset)
Invoke-Stage 'preprocess' (@('code/dataset/make_splits.py', '--dataset', $Dataset) + $ForceArgs)
Invoke-Stage 'ranker' (@('code/ranker/train_sasrec.py', '--dataset', $Dataset) + $ForceArgs)
Invoke-Stage 'basis' (@('code/projection/run_basis.py', '--dataset', $Dataset, '--proj_dir', '.') + $ForceArgs)
Invoke-Stage 'lora_init' (@('code/explainer/init_lora.py', '--dataset', $Dataset) + $ForceArgs)

# Shielded PPO and its ablations (smoke config: experiments/recrl_default.yaml); without -Force a finished
# run is resumed from its latest checkpoint, which has nothing left to do.
$Resume = if ($Force) { @() } else { @('--resume', 'auto') }
$Ppo = @('code/trainer/run_recrl_cli.py', '--dataset', $Dataset, '--ranker_ckpt', "checkpoints/sasrec_$Dataset.pt")
$Runs = [ordered]@{
    'shielded'      = @('--projection_basis', "checkpoints/basis_$Dataset.pt")
    'no_projection' = @('--no_projection')
    'frozen'        = @('--freeze_store')
}
foreach ($tag in $Runs.Keys) {
    Invoke-Stage "ppo_$tag" ($Ppo + $Runs[$tag] + @('--tag', $tag) + $Resume)
}
# Evaluation of every run, the safety audits (the main run's report in docs\, the ablations' next to their
# logs; -NoFail semantics as in the bash driver), then the aggregation of the three runs.
foreach ($tag in $Runs.Keys) {
    Invoke-Stage "eval_$tag" (@('code/eval/evaluate_run.py', '--dataset', $Dataset, '--tag', $tag) + $ForceArgs)
}
foreach ($tag in $Runs.Keys) {
    $out = if ($tag -eq 'shielded') { @() } else { @('--out_dir', "logs/$Dataset/$tag") }
    Invoke-Stage "audit_$tag" (@('code/audit/run_audit.py', '--model_ckpt', "checkpoints/recrl/$Dataset/$tag/latest",
                                 '--dataset', $Dataset, '--no_fail') + $out)
}
Invoke-Stage 'aggregate' @('code/eval/aggregate_main.py', '--runs_dir', 'logs', '--out_csv',
                           'experiments/aggregate_results.csv', '--out_dir', 'experiments/figs', '--datasets', $Dataset,
                           '--tags', 'shielded', 'no_projection', 'frozen')

& $Py -m shielded_recrl.eval.smoke_table --dataset $Dataset --times $Times
if ($LASTEXITCODE -ne 0) { throw "[smoke] the results table failed" }
