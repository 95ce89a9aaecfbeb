"""Which feature map approximates a model's softmax attention best? (decides the default)

For every candidate site of a target, capture (q, k, v) and the softmax output on a
few example inputs, fit each feature map's per-head projections to reproduce the
softmax output (Adam on the relative L2 error), and report the held-out error on
inputs of other seeds. Runs on CPU for the shipped examples; prints a table, writes JSON.

    python benchmarks/feature_maps.py examples/shapes/model.py --out benchmarks/results/feature_maps.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lincompress import Pipeline, load_target, passes
from lincompress.attention import HybridAttention, iter_sites
from lincompress.feature_maps import FEATURE_MAPS
from lincompress.rewrite import set_all_modes


def capture(model: torch.nn.Module, inputs: list[dict]) -> dict[str, list[tuple[torch.Tensor, ...]]]:
    """(q, k, v) seen by every site, one entry per forward call, with the model running softmax."""
    set_all_modes(model, "softmax")
    seen: dict[str, list] = {name: [] for name, _ in iter_sites(model)}
    handles = [
        site.register_forward_pre_hook(lambda m, a, kw, name=name: seen[name].append(tuple(t.detach() for t in a[:3])),
                                       with_kwargs=True)
        for name, site in iter_sites(model)
    ]
    with torch.no_grad():
        for kwargs in inputs:
            model(**kwargs)
    for h in handles:
        h.remove()
    return seen


def relative_error(site: HybridAttention, batch: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    errors = []
    for q, k, v in batch:
        target = F.scaled_dot_product_attention(q, k, v)
        errors.append((site.linear_branch(q, k, v) - target).norm() / target.norm())
    return torch.stack(errors).mean()


def fit(site: HybridAttention, train: list, steps: int, lr: float) -> None:
    params = list(site.feature_map_q.parameters()) + list(site.feature_map_k.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        relative_error(site, train).backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_py")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/feature_maps.json")
    args = parser.parse_args()

    target = load_target(args.model_py)
    base = Pipeline([passes.FindAttention()]).run(target)
    make_inputs = lambda seed: _inputs(target, seed)  # noqa: E731
    rows = []
    for feature_map in FEATURE_MAPS:
        start = time.perf_counter()
        state = passes.Hybridize(feature_map=feature_map).run(dataclasses.replace(base, recipe=[]))
        train = capture(state.model, [make_inputs(s) for s in range(args.batches)])
        test = capture(state.model, [make_inputs(1000 + s) for s in range(args.batches)])
        before, after = [], []
        for name, site in iter_sites(state.model):
            with torch.no_grad():
                before.append(relative_error(site, test[name]).item())
            fit(site, train[name], args.steps, args.lr)
            with torch.no_grad():
                after.append(relative_error(site, test[name]).item())
        rows.append({"feature_map": feature_map, "init_rel_error": sum(before) / len(before),
                     "fitted_rel_error": sum(after) / len(after), "worst_site_fitted": max(after),
                     "seconds": round(time.perf_counter() - start, 1)})
    print(f"{target.name}: held-out relative L2 error of linear vs softmax attention, mean over "
          f"{len(base.candidates)} sites ({platform.processor() or platform.machine()}, CPU)")
    print(f"{'feature map':<12}{'at init':>10}{'fitted':>10}{'worst site':>12}{'seconds':>9}")
    for r in rows:
        print(f"{r['feature_map']:<12}{r['init_rel_error']:>10.3f}{r['fitted_rel_error']:>10.3f}"
              f"{r['worst_site_fitted']:>12.3f}{r['seconds']:>9.1f}")
    best = min(rows, key=lambda r: r["fitted_rel_error"])["feature_map"]
    print(f"best: {best}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": target.name, "steps": args.steps, "rows": rows, "best": best}, indent=2))


def _inputs(target, seed: int) -> dict:
    """Example inputs with a fresh latent and condition per seed (and a random timestep)."""
    kwargs = target.inputs(2)
    g = torch.Generator().manual_seed(seed)
    latent = kwargs[target.latent_key]
    kwargs[target.latent_key] = torch.randn(latent.shape, generator=g, dtype=latent.dtype)
    if target.conditions is not None:
        kwargs.update(target.conditions(latent.shape[0], g))
    if target.timestep_key in kwargs:
        t = kwargs[target.timestep_key]
        kwargs[target.timestep_key] = torch.rand(t.shape, generator=g) * 1000.0
    return kwargs


if __name__ == "__main__":
    main()
