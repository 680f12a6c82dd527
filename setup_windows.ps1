# Windows counterpart of scripts/setup.sh: create (or reuse) the virtual environment and install into it.
#   powershell -ExecutionPolicy Bypass -File setup_windows.ps1
# Environment: RECRL_VENV (default <repo>\.venv), TORCH_SPEC (default torch==2.13.0, the CPU build on
# Windows; for CUDA see WINDOWS_SETUP.md), PYTHON (default: py -3 when the launcher exists, else python).
# UNTESTED: this project's CI has no PowerShell; it mirrors scripts/setup.sh step by step.
$ErrorActionPreference = 'Stop'
$Root = $PSScriptRoot
$Venv = if ($env:RECRL_VENV) { $env:RECRL_VENV } else { Join-Path $Root '.venv' }
$TorchSpec = if ($env:TORCH_SPEC) { $env:TORCH_SPEC } else { 'torch==2.13.0' }
$RecboleWheelSpec = 'recbole==1.2.1'   # carries MovieLens-100K; read as data, never installed

function Invoke-Native {  # run a native command; stop with its name when it fails
    param([string]$Exe, [string[]]$Arguments)
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "command failed ($LASTEXITCODE): $Exe $($Arguments -join ' ')" }
}

$Py = Join-Path $Venv 'Scripts\python.exe'
if (-not (Test-Path $Py)) {
    Write-Host "[setup] creating virtual environment at $Venv"
    if ($env:PYTHON) { Invoke-Native $env:PYTHON @('-m', 'venv', $Venv) }
    elseif (Get-Command py -ErrorAction SilentlyContinue) { Invoke-Native 'py' @('-3', '-m', 'venv', $Venv) }
    else { Invoke-Native 'python' @('-m', 'venv', $Venv) }
}

Write-Host "[setup] installing into $Venv"
Invoke-Native $Py @('-m', 'pip', 'install', '--quiet', '--upgrade', 'pip')
function Test-Torch {  # is torch importable? (stderr redirected: Windows PowerShell 5.1 would turn it into
    $ErrorActionPreference = 'Continue'  # a terminating error under 'Stop', so this scope relaxes it)
    & $Py -c 'import torch' 2>$null
    return ($LASTEXITCODE -eq 0)
}
if (-not (Test-Torch)) { Invoke-Native $Py @('-m', 'pip', 'install', '--quiet', $TorchSpec) }
Invoke-Native $Py @('-m', 'pip', 'install', '--quiet', '-r', (Join-Path $Root 'requirements.txt'))
Invoke-Native $Py @('-m', 'pip', 'install', '--quiet', '--no-deps', '-r', (Join-Path $Root 'requirements-nodeps.txt'))
Invoke-Native $Py @('-m', 'pip', 'install', '--quiet', '--no-deps', '-e', $Root)

# MovieLens-100K offline copy: the recbole wheel is downloaded (not installed) into data\_wheels\.
$Wheels = Join-Path $Root 'data\_wheels'
if (-not (Get-ChildItem -Path $Wheels -Filter 'recbole-1.2.1-*.whl' -ErrorAction SilentlyContinue)) {
    New-Item -ItemType Directory -Force -Path $Wheels | Out-Null
    & $Py -m pip download --quiet --no-deps --dest $Wheels $RecboleWheelSpec
    if ($LASTEXITCODE -ne 0) { Write-Warning "could not download the $RecboleWheelSpec wheel (offline ML-100K copy)" }
}
Write-Host "[setup] python: $Py"
