"""Single-shot rendering: one exposed, processed frame of a volume at a named view.

What ``openfluoro render`` and the demo use; the live session builds on the same
pieces (ray caster, ``Imager``, ``ImageChain``) but caches the anatomy per pose.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from openfluoro.fluoro.chain import ChainSettings, ImageChain
from openfluoro.fluoro.exposure import decide_exposure
from openfluoro.fluoro.frame import Exposure
from openfluoro.fluoro.imager import Imager
from openfluoro.geometry.carm import CArmPose, Detector, Geometry, standard_view
from openfluoro.render.raycast import MaterialVolume, project_materials

DISPLAY_CONVENTION = "bone and steel dark, air bright (clinical fluoroscopy monitor)"


@dataclass(frozen=True, eq=False)
class Snapshot:
    display: np.ndarray         # uint8 (rows, cols), what the monitor shows
    paths_g_cm2: np.ndarray     # (3, rows, cols) material path lengths
    signal: np.ndarray          # noisy detector signal, open-beam detected quanta
    geometry: Geometry
    exposure: Exposure
    sidecar: dict[str, Any]


def render_snapshot(
    mvol: MaterialVolume,
    view: str = "PA",
    isocentre_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    kvp: float | None = None,
    ma: float | None = None,
    pulse_ms: float = 10.0,
    size_px: int = 512,
    sid_mm: float = 1000.0,
    sod_mm: float = 700.0,
    field_mm: float = 300.0,
    seed: int | None = 0,
    source: str = "",
) -> Snapshot:
    """Render, expose and process one frame; ``seed=None`` gives a noiseless frame.

    Without ``kvp`` and ``ma`` the technique is the ADRC's for normal-dose fluoroscopy at
    this view, with four times the tube current, as for a digital spot image.
    """
    pose = standard_view(view, CArmPose(sid_mm=sid_mm, sod_mm=sod_mm, isocentre_lps_mm=isocentre_lps_mm))
    geometry = Geometry(pose, Detector.square(size_px, field_mm))
    paths = project_materials(mvol, geometry)
    if kvp is None or ma is None:
        auto = decide_exposure(paths, geometry, "normal", 7.5).exposure
        kvp = auto.kvp if kvp is None else kvp
        ma = 4.0 * auto.ma * auto.pulse_ms / pulse_ms if ma is None else ma
    exposure = Exposure(kvp=kvp, ma=ma, pulse_ms=pulse_ms, pulse_rate_pps=0.0, acquisition="spot")
    rng = None if seed is None else np.random.default_rng(seed)
    exposed = Imager().expose(paths, geometry, exposure, rng)
    chain = ImageChain(ChainSettings(frame_counter=False, auto_region=0.6))
    display = chain.process(exposed.signal, {"i0": exposed.open_field_quanta})
    sidecar = {
        "source": source,
        "view": view,
        "display_convention": DISPLAY_CONVENTION,
        "image_orientation": "columns toward the detector's u axis (patient left at PA), rows toward v "
                             "(inferior at 0/0); seen from the detector side",
        "pose": {**asdict(pose), "isocentre_lps_mm": list(pose.isocentre_lps_mm)},
        "detector": asdict(geometry.detector),
        "projection_matrix": geometry.projection_matrix().tolist(),
        "exposure": {**asdict(exposure), "mas": exposure.mas},
        "dose": {"reference_air_kerma_mgy": exposed.dose.reference_air_kerma_mgy,
                 "kap_gy_cm2": exposed.dose.kap_gy_cm2,
                 "reference_point": "IEC 60601-2-43 interventional reference point, 150 mm from the "
                                    "isocentre toward the source"},
        "open_field_quanta_per_pixel": exposed.open_field_quanta,
        "noise_seed": seed,
    }
    return Snapshot(display, paths, exposed.signal, geometry, exposure, sidecar)
