"""LPIPS (Zhang et al. 2018, "lin" v0.1 on VGG16) in plain torch, for the VAE loss of paper eq. (2).

Nothing is downloaded: the user copies two files and passes their paths.

- the VGG16 backbone: torchvision's ImageNet `vgg16` state dict (`vgg16-397923af.pth`, keys `features.N.*`; the
  `classifier.*` keys are ignored);
- the linear heads: the lpips package's `lpips/weights/v0.1/vgg.pth` (keys `linK.model.1.weight`).

The layer indices and key names match both files, so they load as they are; torchvision and the lpips package are
not needed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# torchvision's VGG16 ("D") feature stack up to relu5_3: conv widths, "M" for a 2x2 max-pool.
VGG16_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
TAP_CHANNELS = (64, 128, 256, 512, 512)
BACKBONE_HINT = "torchvision's VGG16 ImageNet weights (vgg16-397923af.pth, a state dict with keys features.N.*)"
HEADS_HINT = "the lpips package's weights/v0.1/vgg.pth (keys lin0.model.1.weight ... lin4.model.1.weight)"


def vgg16_features() -> nn.Sequential:
    """VGG16 `features` up to relu5_3 (index 29), with torchvision's indices, so its state dict keys load."""
    layers: list[nn.Module] = []
    channels = 3
    for v in VGG16_LAYERS:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=False)]
            channels = v
    return nn.Sequential(*layers)


class NetLinLayer(nn.Module):
    """A 1x1 conv without bias weighting one tap's channels. `model[0]` is Dropout in the lpips package (inactive
    in its eval mode); here an Identity, so `model.1.weight` keys match and the loss stays deterministic."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def normalize_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit length along channels, as the lpips package's `normalize_tensor`."""
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """Learned perceptual distance. `forward(x, y)` on (N, 3, H, W) in [-1, 1] -> (N,) distances (0 for x == y).

    Build it with `LPIPS.from_files(backbone_path, heads_path)`; `LPIPS()` alone has random weights (tests)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.features = vgg16_features()
        for k, c in enumerate(TAP_CHANNELS):
            self.add_module(f"lin{k}", NetLinLayer(c))

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) in [-1, 1] -> the five ReLU outputs, channel-normalised."""
        x = (x - self.shift) / self.scale  # the lpips scaling layer: [-1, 1] -> ImageNet-normalised
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(normalize_channels(x))  # (N, C_k, H / 2^k, W / 2^k)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y (N, 3, H, W) in [-1, 1] -> (N,)."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS takes two (N, 3, H, W) images of one shape, got {tuple(x.shape)}, {tuple(y.shape)}."
            )
        heads = [self.lin0, self.lin1, self.lin2, self.lin3, self.lin4]
        per_tap = [
            head((fx - fy).square()).mean(dim=(1, 2, 3)) for head, fx, fy in zip(heads, self.taps(x), self.taps(y))
        ]
        return torch.stack(per_tap).sum(0)  # (5, N) -> (N,)

    @classmethod
    def from_files(cls, backbone_path: str | Path, heads_path: str | Path) -> LPIPS:
        """Frozen LPIPS in eval mode from a torchvision `vgg16` state dict file and the lpips package's `vgg.pth`."""
        model = cls()
        backbone = _load_state_dict(backbone_path, "--lpips-backbone", BACKBONE_HINT)
        backbone = {k.removeprefix("features."): v for k, v in backbone.items() if not k.startswith("classifier.")}
        _load_into(model.features, backbone, backbone_path, BACKBONE_HINT)
        heads = _load_state_dict(heads_path, "--lpips-heads", HEADS_HINT)
        _load_into(model, heads, heads_path, HEADS_HINT, prefix="lin")
        model.requires_grad_(False)
        return model.eval()


def _load_state_dict(path: str | Path, flag: str, hint: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{flag} {str(path)!r}: no such file. Copy {hint} there (nothing is downloaded).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a torch state dict file ({e}); expected {hint}.") from None
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict; expected {hint}.")
    return state


def _load_into(module: nn.Module, state: dict, path: str | Path, hint: str, prefix: str = "") -> None:
    """Load `state` into the keys of `module` that start with `prefix`, exactly; ValueError naming the file if not."""
    expected = {k: v for k, v in module.state_dict().items() if k.startswith(prefix)}
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    wrong = [k for k in expected.keys() & state.keys() if tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{str(path)!r} does not match: missing keys {missing[:4]}, unexpected keys {unexpected[:4]}, "
            f"wrong shapes {wrong[:4]}; expected {hint}."
        )
    module.load_state_dict(state, strict=False)
