#!/usr/bin/env bash
# The seed README's `bash environment_check.sh`, from the repository root: runs scripts/environment_check.sh
# (versions, CUDA, disk, memory, offline assets, and each stage's output or the command that makes it).
# The code lives in scripts/; this file only forwards to it.
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/scripts/environment_check.sh" "$@"
