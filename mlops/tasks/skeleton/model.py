"""The study's anomaly detectors in plain torch, registered by name: an LSTM-VAE over windows of skeleton
maps and the frame-level AE and VAE baselines.

Every model takes a batch of windows (B, T, 28, 28) (any dtype; binary maps) and returns ONE tensor, so
the generic training loop can carry it: ``(B, S, 785)`` = per reconstructed frame its 784 reconstruction
logits and, in the last column, the model's own regularisation cost in nats (the KL of its posterior to
the prior; 0 for the AE). The loss is then model-agnostic: reconstruction + that column (``metrics.negative_elbo``).

- LSTM-VAE: S = T. With one latent per window (the study's) its KL sits in row 0 (the other rows hold 0); with
  a latent per time step each row holds that step's KL. Either way the rows sum to the window's negative ELBO.
- AE / VAE: frame models. In training each stride-1 window contributes its newest frame (S = 1), so an
  epoch visits every frame once, as the study's frame-level training did; in evaluation they reconstruct
  all T frames (S = T) so their window score aggregates per-frame errors exactly like the LSTM-VAE's.

Posterior collapse: a decoder that can already draw the average skeleton learns to ignore a latent whose
every nat costs KL; on small data the LSTM-VAE did (KL -> 0.01 nats, reconstruction stuck at the average
skeleton). ``free_bits`` (nats per latent dimension, Kingma et al. 2016) makes the first nats of each
dimension free during training; evaluation reports the true KL, so validation losses stay negative ELBOs.
0 is the plain ELBO of the study; give the VAE baseline the same value for a fair comparison.

The anomaly score of a window is the mean squared error between the reconstruction probabilities and the
binary maps, averaged over its pixels and frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mlops.tasks.base import ModelRegistry, ModelSpec

MAP_SIZE = 28
PIXELS = MAP_SIZE * MAP_SIZE
#: sine/cosine pairs of a step's place in the window that the window latent's decoder reads beside the latent
POSITION_FREQUENCIES = 4
MODELS = ModelRegistry("skeleton")


def as_windows(x: torch.Tensor) -> torch.Tensor:
    """Float windows (B, T, 28, 28); ValueError naming the shape otherwise."""
    if x.dim() != 4 or tuple(x.shape[-2:]) != (MAP_SIZE, MAP_SIZE):
        raise ValueError(f"expected windows of shape (batch, T, {MAP_SIZE}, {MAP_SIZE}), got {tuple(x.shape)}")
    return x.float()


class FrameEncoder(nn.Module):
    """Two stride-2 convolutions (28 -> 14 -> 7) and a linear map: one feature vector per map."""

    def __init__(self, width: int, out_features: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, out_features),
        )

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.net(maps.reshape(-1, 1, MAP_SIZE, MAP_SIZE))


class FrameDecoder(nn.Module):
    """A feature vector -> 28x28 reconstruction logits, flattened to 784, through one hidden layer.

    Dense rather than transposed convolutions: on these sparse one-to-two-pixel-wide skeletons a small
    transposed-conv decoder sat for hundreds of steps on the average skeleton before drawing limbs, while a
    dense layer learns them at once (ablation on 16 maps: 26 vs 0.2 nats after 150 steps).
    """

    def __init__(self, width: int, in_features: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, 32 * width), nn.ReLU(inplace=True), nn.Linear(32 * width, PIXELS)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def _kl(mu: torch.Tensor, logvar: torch.Tensor, free_bits: float, training: bool) -> torch.Tensor:
    """KL(q || N(0, I)) in nats per sample (summed over the last dimension); in training each dimension's
    first ``free_bits`` nats cost nothing."""
    per_dim = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    if training and free_bits > 0:
        per_dim = per_dim.clamp_min(free_bits)
    return per_dim.sum(-1)


def _sample(mu: torch.Tensor, logvar: torch.Tensor, training: bool) -> torch.Tensor:
    # Scoring uses the posterior mean: an anomaly score must not depend on a random draw.
    if not training:
        return mu
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def step_positions(t: int, like: torch.Tensor) -> torch.Tensor:
    """(T, 2 * POSITION_FREQUENCIES) sines and cosines of each step's place in the window: what the decoder of a
    window latent reads beside it, so it can draw frame k of the window from one latent."""
    place = torch.arange(t, dtype=like.dtype, device=like.device)[:, None] / t
    angles = place * torch.pi * torch.arange(1, POSITION_FREQUENCIES + 1, dtype=like.dtype, device=like.device)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class LSTMVAE(nn.Module):
    """CNN per frame -> LSTM -> latent (J) -> LSTM -> CNN decoder per frame, reconstructing the window.

    ``window_latent=True`` (the default; the study's model): ONE J-dim latent for the whole window, from the
    encoder LSTM's last state; the decoder LSTM is fed that latent at every step, beside the step's place in the
    window (``step_positions``). Two linear paths make it learn at CPU budgets, where the plain form stayed on the
    "average skeleton" (on 4 tiny-data windows: reconstruction 31.2 nats/frame after 250 steps vs 33.9 for the
    best constant image; with the paths 8.7): the time-mean of the frame features added to the last state, and
    the decoder's input added to its LSTM's output.
    ``window_latent=False``: one J-dim latent per time step (the LSTM-VAE of Park et al. 2018), drawn from the
    encoder's state, which has seen the window up to that frame, with a linear path around each LSTM; kept to
    compare the two.
    """

    def __init__(
        self, hidden: int, latent: int, width: int, free_bits: float, window_latent: bool = True, features: int = 64
    ):
        super().__init__()
        self.latent, self.free_bits, self.window_latent = latent, free_bits, window_latent
        steps_in = latent + 2 * POSITION_FREQUENCIES if window_latent else latent
        self.encoder = FrameEncoder(width, features)
        self.encoder_lstm = nn.LSTM(features, hidden, batch_first=True)
        self.encoder_skip = nn.Linear(features, hidden)
        self.posterior = nn.Linear(hidden, 2 * latent)
        self.decoder_lstm = nn.LSTM(steps_in, hidden, batch_first=True)
        self.decoder_skip = nn.Linear(steps_in, hidden)
        self.decoder = FrameDecoder(width, hidden)

    def encode(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mu, logvar): (B, J) with ``window_latent``, else (B, T, J) per time step."""
        b, t = windows.shape[:2]
        features = self.encoder(windows).view(b, t, -1)
        states, (last, _) = self.encoder_lstm(features)
        if self.window_latent:
            mu, logvar = self.posterior(last[-1] + self.encoder_skip(features).mean(dim=1)).chunk(2, dim=-1)
        else:
            mu, logvar = self.posterior(states + self.encoder_skip(features)).chunk(2, dim=-1)
        return mu, logvar.clamp(-8.0, 8.0)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The window's latent mean (B, J) (averaged over time steps without ``window_latent``), for the 2-D
        embedding plot."""
        mu, _ = self.encode(as_windows(x))
        return mu if self.window_latent else mu.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        windows = as_windows(x)
        b, t = windows.shape[:2]
        mu, logvar = self.encode(windows)
        z = _sample(mu, logvar, self.training)
        if self.window_latent:
            steps = torch.cat([z[:, None, :].expand(b, t, self.latent), step_positions(t, z).expand(b, t, -1)], -1)
            kl = z.new_zeros(b, t)
            kl[:, 0] = _kl(mu, logvar, self.free_bits, self.training)
        else:
            steps = z
            kl = _kl(mu, logvar, self.free_bits, self.training)
        sequence = self.decoder_lstm(steps)[0] + self.decoder_skip(steps)
        recon = self.decoder(sequence.reshape(b * t, -1)).view(b, t, PIXELS)
        return torch.cat([recon, kl[..., None]], dim=-1)


class FrameAutoencoder(nn.Module):
    """A convolutional (variational) autoencoder of single maps, applied to the frames of a window."""

    def __init__(self, latent: int, width: int, variational: bool, free_bits: float = 0.0):
        super().__init__()
        self.latent, self.variational, self.free_bits = latent, variational, free_bits
        self.encoder = FrameEncoder(width, 2 * latent if variational else latent)
        self.decoder = FrameDecoder(width, latent)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Latent (mean) of the window's newest frame (B, J), for the 2-D embedding plot."""
        code = self.encoder(as_windows(x)[:, -1])
        return code.chunk(2, dim=-1)[0] if self.variational else code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = as_windows(x)
        if self.training:
            frames = frames[:, -1:]
        b, s = frames.shape[:2]
        code = self.encoder(frames)
        if not self.variational:
            recon = self.decoder(code).view(b, s, PIXELS)
            return torch.cat([recon, recon.new_zeros(b, s, 1)], dim=-1)
        mu, logvar = code.chunk(2, dim=-1)
        logvar = logvar.clamp(-8.0, 8.0)
        recon = self.decoder(_sample(mu, logvar, self.training)).view(b, s, PIXELS)
        kl = _kl(mu, logvar, self.free_bits, self.training).view(b, s, 1)
        return torch.cat([recon, kl], dim=-1)


@MODELS.register("lstm_vae")
def lstm_vae(
    hidden: int = 64, latent: int = 16, width: int = 8, free_bits: float = 0.0, window_latent: bool = True
) -> nn.Module:
    """The study's sequence model (see ``LSTMVAE``)."""
    return LSTMVAE(hidden=hidden, latent=latent, width=width, free_bits=free_bits, window_latent=window_latent)


@MODELS.register("ae")
def ae(latent: int = 16, width: int = 8) -> nn.Module:
    """Frame-level convolutional autoencoder baseline."""
    return FrameAutoencoder(latent=latent, width=width, variational=False)


@MODELS.register("vae")
def vae(latent: int = 16, width: int = 8, free_bits: float = 0.0) -> nn.Module:
    """Frame-level convolutional variational autoencoder baseline."""
    return FrameAutoencoder(latent=latent, width=width, variational=True, free_bits=free_bits)


def unpack(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction logits (B, S, 784), regularisation nats (B, S)) of a model's packed output."""
    if outputs.shape[-1] != PIXELS + 1:
        raise ValueError(f"expected packed outputs (batch, frames, {PIXELS + 1}), got {tuple(outputs.shape)}")
    return outputs[..., :PIXELS], outputs[..., PIXELS]


def reconstructed_targets(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The frames a model reconstructed: the newest S of each target window, flattened to (B, S, 784)."""
    s = outputs.shape[1]
    return targets[:, -s:].reshape(len(targets), s, PIXELS).float()


def window_scores(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Anomaly score per window (B,): squared error of reconstruction probabilities vs maps, averaged over
    the pixels of each reconstructed frame and then over the window's frames."""
    recon = torch.sigmoid(unpack(outputs)[0])
    return (recon - reconstructed_targets(outputs, targets)).pow(2).mean(-1).mean(-1)


@torch.no_grad()
def score_batch(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Anomaly scores (B,) of a batch of windows, in eval mode (frame models then see all T frames)."""
    model.eval()
    x = as_windows(windows)
    return window_scores(model(x), x)


@torch.no_grad()
def score_windows(
    model: nn.Module,
    maps: np.ndarray,
    starts: np.ndarray,
    window: int,
    batch_size: int = 128,
    with_latents: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores (N,) of the windows ``maps[s : s + window]`` for each start s, gathered batch by batch so a
    long video is never copied T times; with ``with_latents`` also their latents (N, J)."""
    model.eval()
    offsets = np.arange(window)
    scores, latents = [], []
    for first in range(0, len(starts), batch_size):
        index = starts[first : first + batch_size, None] + offsets
        x = as_windows(torch.from_numpy(np.ascontiguousarray(maps[index])))
        scores.append(window_scores(model(x), x).numpy())
        if with_latents:
            latents.append(model.embed(x).numpy())
    score = np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)
    if not with_latents:
        return score, None
    return score, (np.concatenate(latents) if latents else np.zeros((0, 0), dtype=np.float32))


def model_kwargs(name: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of model ``name`` taken from a hyperparameter set (a trial or the best params);
    KeyError names a missing one."""
    kwargs: dict[str, Any] = {"latent": int(hparams["latent"]), "width": int(hparams["width"])}
    if name == "lstm_vae":
        kwargs["hidden"] = int(hparams["hidden"])
        kwargs["window_latent"] = bool(hparams["window_latent"])
    if name in ("lstm_vae", "vae"):
        kwargs["free_bits"] = float(hparams["free_bits"])
    return kwargs


def build_model(hparams: dict[str, Any], meta: dict[str, Any], inference_module: str) -> tuple[nn.Module, ModelSpec]:
    """The model named by ``hparams['model']`` and its rebuild recipe, which carries the window length and the
    map rendering of the prepared data (``meta``) so serving draws uploads the way training saw them."""
    name = str(hparams["model"])
    kwargs = model_kwargs(name, hparams)
    spec = ModelSpec(
        task=MODELS.task,
        model=name,
        model_kwargs=kwargs,
        inference_module=inference_module,
        extra={"window": int(meta["window"]), "map": meta["map"]},
    )
    return MODELS.build(name, **kwargs), spec
