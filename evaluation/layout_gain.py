"""Layout gain: how much of the denoising error the layout removes, on held-out samples.

For every sample and timestep t, with noise drawn from a fixed seed, the model predicts its
training target twice: given the sample's grounding, and given the null grounding (every slot
masked, as the unconditional branch). Caption and noise are the same in both. Then

    gain = 1 - sum(loss with layout) / sum(loss without)

over samples and timesteps (and per timestep). A model that ignores the layout scores exactly
0; one the layout helps scores > 0. It needs no sampling and no detector, so it measures
whether the control was learned even while samples are too poor for a detector, and per-sample
losses let a category's samples be scored on their own.

    python -m evaluation.layout_gain --ckpt runs/toy_interact/model_final.pth \
        --config configs/toy_hoi.yaml --data data/toy --n 200
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import torch

DEFAULT_TIMESTEPS = (100, 300, 500, 700, 900)


@dataclass
class LayoutLosses:
    timesteps: tuple[int, ...]
    layout: torch.Tensor  # [n_samples, n_timesteps] per-sample MSE given the layout
    null: torch.Tensor    # [n_samples, n_timesteps] per-sample MSE given the null grounding

    def gain(self, rows=None) -> float:
        """1 - sum(layout) / sum(null), over `rows` (sample indices or a bool mask; all by default)."""
        layout, null = (self.layout, self.null) if rows is None else (self.layout[rows], self.null[rows])
        if null.numel() == 0:
            return float("nan")
        return float(1 - layout.sum() / null.sum())

    def gain_per_timestep(self) -> dict[int, float]:
        return {t: float(1 - self.layout[:, i].sum() / self.null[:, i].sum()) for i, t in enumerate(self.timesteps)}


@torch.no_grad()
def layout_losses(model, samples, timesteps=DEFAULT_TIMESTEPS, batch_size: int = 50, seed: int = 0,
                  device=None, progress: bool = False) -> LayoutLosses:
    """`model`: an InteractDiffusion; `samples`: HOISample-likes (image in [-1, 1], caption,
    interactions). Sample i at timestep t always gets the same noise, whatever the batching."""
    if not samples:
        raise ValueError("layout_losses: no samples given")
    bad = [t for t in timesteps if not 0 <= t < model.diffusion.num_timesteps]
    if bad:
        raise ValueError(f"timesteps {bad}: outside [0, {model.diffusion.num_timesteps})")
    device = torch.device(device or "cpu")
    model = model.to(device).eval()
    layout_out = torch.zeros(len(samples), len(timesteps))
    null_out = torch.zeros_like(layout_out)
    starts = range(0, len(samples), batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="layout gain", unit="batch")
    for start in starts:
        chunk = samples[start:start + batch_size]
        images = torch.stack([s.image for s in chunk]).to(device)
        z = model.autoencoder.encode(images).mean * model.scale_factor
        cond = model.condition([s.caption for s in chunk], [s.interactions for s in chunk])
        conds = {"layout": cond, "null": cond.null()}   # the same caption in both
        for j, t in enumerate(timesteps):
            noise = torch.stack([torch.randn(z.shape[1:], generator=torch.Generator().manual_seed(
                seed * 1_000_003 + (start + i) * 1009 + t)) for i in range(len(chunk))]).to(device)
            tt = torch.full((len(chunk),), t, device=device, dtype=torch.long)
            x_t = model.diffusion.q_sample(z, tt, noise)
            target = model.diffusion.training_target(z, tt, noise)
            for name, out in (("layout", layout_out), ("null", null_out)):
                pred = model.denoise(x_t, tt, conds[name])
                out[start:start + len(chunk), j] = (pred.float() - target.float()).pow(2).flatten(1).mean(1).cpu()
    return LayoutLosses(tuple(timesteps), layout_out, null_out)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a trained checkpoint (model_final.pth or packed)")
    parser.add_argument("--config", required=True, help="its model or training YAML")
    parser.add_argument("--data", default="data/toy", help="the dataset root of the config's data section")
    parser.add_argument("--n", type=int, default=200, help="how many test samples (the first n)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    from evaluation.toy_samples import toy_test_layouts
    from interact.pipeline import InteractDiffusionPipeline
    pipe = InteractDiffusionPipeline.from_checkpoint(args.ckpt, config=args.config, device=args.device)
    samples = toy_test_layouts(args.config, args.data, args.n)
    losses = layout_losses(pipe.model, samples, args.timesteps, seed=args.seed, device=pipe.device, progress=True)
    result = {"gain": losses.gain(), "per_timestep": losses.gain_per_timestep(), "n": len(samples)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
