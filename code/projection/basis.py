"""The ranking subspace ``Q`` (DESIGN.md §1 "The basis"): pure maths, no I/O.

Scores are ``s(u, i) = h_uᵀ e_i``. A change ``Δe_i`` moves a score by ``h_uᵀ Δe_i``; if ``Δe_i`` is
orthogonal to a subspace that holds nearly all of the users' states, that change is nearly zero. The
item block keeps the directions the item vectors themselves use, which the ranker's *input* side (the
history embeddings that produce ``h_u``) reads. So ``Q`` = the top right singular vectors of the stacked,
block-normalised matrix ``[H; E]`` (users' last-position states; item rows without padding).

Block normalisation: each block is divided by its RMS row norm (``‖X‖_F / sqrt(rows)``), so a block's
rows have mean squared norm 1. Without it the user block (``h_u`` comes out of a LayerNorm, norms ~sqrt(d)
times those of the item rows) dominates the spectrum (DESIGN.md §1 "Recipe"). Both blocks then weigh by
their row counts; ``block_weight`` can rebalance when one block has far more rows (ML-25M: 160k users vs
60k items). The matrix is *not* centred: scores are uncentred inner products, so the uncentred second
moment is what must be preserved.

SVD via the d × d Gram matrix: ``MᵀM = V Σ² Vᵀ`` (``torch.linalg.eigh`` in float64). Building it costs
O(n d²) and the eigendecomposition O(d³), so 220k × 128 takes well under a second, and only d × d lives
in float64. Float64 accumulation keeps the energy shares accurate down to the smallest ones we cut
(squaring σ squares the condition number, which float32 could not afford but float64 can at d ≤ 1024).
``torch.linalg.svd`` of the whole stacked matrix gives the same ``V`` up to sign at several times the time
and memory (checked in tests/test_projection_basis.py).

Batched (DESIGN.md §7, the stage's path: ``run_basis.py`` never holds the U × d user states): the Gram of
the stacked matrix is the sum of its blocks' normalised Grams, ``MᵀM = Σ_b X_bᵀX_b / rms_b²``, and a
block's ``rms² = ‖X‖_F² / rows = trace(XᵀX) / rows``, so each block needs only its running ``XᵀX`` and row
count (:class:`BlockGram`, summed batch by batch): d × d float64 whatever the number of users.
:func:`basis_from_grams` then gives :func:`compute_basis`'s result (to float64 rounding, ~1e-12).
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple

import torch

RECIPES = ("both", "users", "items")


def block_normalise(X: torch.Tensor) -> torch.Tensor:
    """``X / (‖X‖_F / sqrt(rows))``: rows get mean squared norm 1."""
    rms = X.double().norm() / math.sqrt(max(X.shape[0], 1))
    return (X.double() / rms.clamp_min(1e-30))


def stack(H: torch.Tensor | None, E_items: torch.Tensor | None, recipe: str = "both") -> torch.Tensor:
    """The matrix whose right singular vectors make ``Q``: ``[H; E]`` block-normalised, or one block."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    blocks = []
    if recipe in ("both", "users"):
        if H is None:
            raise ValueError(f"recipe {recipe!r} needs user states H")
        blocks.append(block_normalise(H))  # METHOD: neither block may dominate
    if recipe in ("both", "items"):
        if E_items is None:
            raise ValueError(f"recipe {recipe!r} needs item vectors E")
        blocks.append(block_normalise(E_items))
    return torch.cat(blocks, 0)


def gram_spectrum(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (d,) descending and right singular vectors V (d, d) of ``M`` (n × d), via the Gram
    matrix's eigendecomposition in float64."""
    M = M.double()
    return gram_eigh(M.T @ M)  # METHOD: d × d Gram matrix, O(n d²)


def gram_eigh(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gram_spectrum` from the Gram matrix ``G = MᵀM`` (d × d) itself."""
    lam, V = torch.linalg.eigh(G.double())  # ascending
    lam, V = lam.flip(0), V.flip(1)
    return lam.clamp_min(0).sqrt(), V


class BlockGram(NamedTuple):
    """One block's ``XᵀX`` (d, d) float64 and its row count: what the block contributes to the Gram of
    the stacked matrix (see the module docstring)."""
    gram: torch.Tensor
    rows: int

    def normalised(self) -> torch.Tensor:
        """The Gram of :func:`block_normalise` of the block: ``XᵀX / rms²``, ``rms² = trace(XᵀX) / rows``."""
        rms2 = self.gram.trace() / max(self.rows, 1)
        return self.gram / rms2.clamp_min(1e-60)  # block_normalise's clamp of rms at 1e-30, squared


def block_gram(batches: Iterable[torch.Tensor]) -> BlockGram:
    """:class:`BlockGram` of the rows of ``batches`` (each (b, d)), summed one batch at a time in float64."""
    G, rows = None, 0
    for X in batches:
        X = X.double()
        G = X.T @ X if G is None else G.addmm_(X.T, X)
        rows += X.shape[0]
    if G is None:
        raise ValueError("block_gram needs at least one batch of rows")
    return BlockGram(G, rows)


def energy_curve(S: torch.Tensor) -> torch.Tensor:
    """Cumulative energy share ``Σ_{j≤r} σ_j² / Σ σ²`` for r = 1..d."""
    e = S.double() ** 2
    return e.cumsum(0) / e.sum().clamp_min(1e-300)


def rank_for_energy(S: torch.Tensor, tau: float) -> int:
    """Smallest r with cumulative energy ≥ τ; τ = 1 → d (the whole space, whatever the rounding)."""
    if not 0 < tau <= 1:
        raise ValueError(f"energy τ must be in (0, 1], got {tau}")
    if tau >= 1:
        return S.numel()
    curve = energy_curve(S)
    return int((curve < tau - 1e-12).sum().item()) + 1  # METHOD: rank reaching energy τ


def compute_basis(H: torch.Tensor | None, E_items: torch.Tensor | None, energy: float, recipe: str = "both") -> dict:
    """``Q`` (d × r, float32, orthonormal) with its spectrum. ``E_items`` excludes the padding row."""
    M = stack(H, E_items, recipe)
    return _basis(*gram_spectrum(M), energy, recipe)


def basis_from_grams(H: BlockGram | None, E_items: BlockGram | None, energy: float, recipe: str = "both") -> dict:
    """:func:`compute_basis` from the blocks' :class:`BlockGram` (:func:`block_gram`) instead of the blocks."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    G = None
    for name, block, used in (("user states H", H, recipe in ("both", "users")),
                              ("item vectors E", E_items, recipe in ("both", "items"))):
        if not used:
            continue
        if block is None:
            raise ValueError(f"recipe {recipe!r} needs {name}")
        G = block.normalised() if G is None else G + block.normalised()  # METHOD: neither block may dominate
    return _basis(*gram_eigh(G), energy, recipe)


def _basis(S: torch.Tensor, V: torch.Tensor, energy: float, recipe: str) -> dict:
    r = rank_for_energy(S, energy)
    Q = V[:, :r].to(torch.float32)  # eigh's V is orthonormal in float64; the cast keeps QᵀQ = I to ~1e-7
    return {"Q": Q.contiguous(), "singular_values": S.float(), "energy": float(energy), "rank": r,
            "d": int(V.shape[0]), "recipe": recipe}


def spectrum_summary(S: torch.Tensor, taus=(0.9, 0.95, 0.99, 0.999)) -> dict[str, int]:
    """Rank reached at each energy level, e.g. ``{"rank@0.99": 57}``."""
    return {f"rank@{t}": rank_for_energy(S, t) for t in taus}


def random_basis(d: int, r: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random orthonormal d × r basis (QR of a Gaussian matrix, sign-fixed; Mezzadri 2007):
    the control that shows the *learned* subspace is what protects."""
    A = torch.randn(d, r, generator=generator, dtype=torch.float64)
    Qr, R = torch.linalg.qr(A)
    return (Qr * torch.sign(torch.diagonal(R)).unsqueeze(0)).float().contiguous()
