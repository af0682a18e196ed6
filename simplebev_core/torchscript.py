"""The Segnet's inference path as frozen TorchScript, for the node and the replay tools.

The encoder and the BEV head (compress + decoder) are traced and frozen for one input shape;
the lift between them stays eager, so a lift table or a new calibration every frame works as
before and nothing geometric is baked into a trace. Freezing folds batch norms into the
convolutions, and the traced graph runs without a Python call per layer: on the 2-core CPU
machine, CPU preset, `python -m bench.backends --configs cpu --variants eager,torchscript
--repeats 5 --rounds 3` measured 1.40x (262 -> 188 ms, 120 MiB more peak memory: the frozen
copy). RepLK encoders are re-parameterised first, as for the ONNX export.

`freeze_segnet` checks the frozen stages against the eager model on an input unlike the one
it traced with and refuses (TorchScriptError) when they disagree.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .lift import LiftTable
from .model import BevOutput, Segnet
from .replk import reparameterize_model

# Frozen vs eager: largest |difference| allowed, relative to the largest |eager value| (or 1).
# Folding batch norm into convolutions changes the float rounding only (measured ~1e-6).
RTOL = 1e-4


class TorchScriptError(ValueError):
    """The frozen model disagrees with the eager one (or cannot be traced)."""


class _Encode(nn.Module):
    def __init__(self, model: Segnet):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model.encode(images)


class _BevHead(nn.Module):
    def __init__(self, model: Segnet):
        super().__init__()
        self.model = model

    def forward(self, volume: Tensor, radar: Tensor | None = None) -> tuple[Tensor, ...]:
        out = self.model.bev_head(volume, radar)
        return out.segmentation, out.center, out.offset, out.features


@dataclass
class FrozenSegnet:
    """Called like `Segnet` in eval mode (images, pix_T_cams, ref_T_cams, radar, lift_table=);
    inputs are validated as the eager model validates them, and must have the traced shapes."""

    model: Segnet  # the eager model: validation and the lift
    encode: torch.jit.ScriptModule
    head: torch.jit.ScriptModule

    def __call__(self, images: Tensor, pix_T_cams: Tensor, ref_T_cams: Tensor,
                 radar: Tensor | None = None, *, lift_table: LiftTable | None = None
                 ) -> BevOutput:
        self.model._validate(images, pix_T_cams, ref_T_cams, radar)
        return self.model.run_stages(images, pix_T_cams, ref_T_cams, radar, lift_table,
                                     encode=self.encode, bev_head=self._bev_head)

    def _bev_head(self, volume: Tensor, radar: Tensor | None) -> BevOutput:
        outputs = self.head(volume) if radar is None else self.head(volume, radar)
        return BevOutput(*outputs)


def freeze_segnet(model: Segnet, images: Tensor, pix_T_cams: Tensor, ref_T_cams: Tensor,
                  radar: Tensor | None = None) -> FrozenSegnet:
    """Trace and freeze `model`'s stages for inputs shaped like these (on their device); the
    caller's model is not modified."""
    if model.training:
        raise TorchScriptError("freeze_segnet needs the model in eval mode")
    staged = copy.deepcopy(model).eval()
    reparameterize_model(staged)
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing warns about Python scalars in shapes; the traces are used at these shapes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch 2.14 marks torch.jit deprecated in favour of torch.compile, which needs a C++
        # toolchain and minutes of compilation at start-up; TorchScript still works, and
        # node.torchscript: false runs without it.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        feats = staged.encode(images)
        volume = staged.lift(feats, pix_T_cams, ref_T_cams, tuple(images.shape[-2:]))
        head_inputs = (volume,) if radar is None else (volume, radar)
        try:
            encode = torch.jit.freeze(torch.jit.trace(_Encode(staged).eval(), (images,)))
            head = torch.jit.freeze(torch.jit.trace(_BevHead(staged).eval(), head_inputs))
        except RuntimeError as e:
            raise TorchScriptError(f"the model cannot be traced ({e}); set "
                                   f"node.torchscript: false") from e
    frozen = FrozenSegnet(model, encode, head)
    check_frozen(frozen, model, images, pix_T_cams, ref_T_cams, radar)
    return frozen


def check_frozen(frozen: FrozenSegnet, model: Segnet, images: Tensor, pix_T_cams: Tensor,
                 ref_T_cams: Tensor, radar: Tensor | None = None) -> None:
    """Frozen and eager outputs agree within RTOL on random inputs of these shapes (seeded;
    the tracing example may be a blank frame, on which a wrong trace could still agree)."""
    gen = torch.Generator().manual_seed(0)
    probe = torch.rand(images.shape, generator=gen).to(images)
    probe_radar = None if radar is None else torch.rand(radar.shape, generator=gen).to(radar)
    with torch.no_grad():
        want = model(probe, pix_T_cams, ref_T_cams, probe_radar)
        got = frozen(probe, pix_T_cams, ref_T_cams, probe_radar)
    for name in ("segmentation", "center", "offset", "features"):
        a, b = getattr(got, name).float(), getattr(want, name).float()
        scale = max(1.0, float(b.abs().max()))
        diff = float((a - b).abs().max())
        if not diff <= RTOL * scale:
            raise TorchScriptError(
                f"the frozen TorchScript model's {name} differs from the eager model's by "
                f"{diff:.3g} (allowed {RTOL * scale:.3g}); set node.torchscript: false")
