"""An independent reference projector: RTK's CPU Joseph forward projector (``itk-rtk``).

Used only to validate and benchmark our own ray caster; ``itk-rtk`` is an optional
dependency (extras ``test`` and ``bench``).
"""

from __future__ import annotations

import numpy as np

from openfluoro.geometry.carm import Geometry, pixel_offsets_mm


def _itk():
    try:
        import itk
        from itk import RTK as rtk
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the reference projector needs itk-rtk: pip install 'openfluoro[bench]'") from exc
    return itk, rtk


class RtkProjector:
    """RTK's Joseph forward projector over one scalar volume ``values[k, j, i]``.

    The ITK image carries our affine as origin/spacing/direction (ITK physical space is
    LPS), and the detector is given to RTK by source position, detector centre and its
    row/column vectors, so no angle convention is shared between the two projectors.
    The volume is converted once; ``project`` runs only RTK's filter.
    """

    def __init__(self, values: np.ndarray, affine_lps: np.ndarray) -> None:
        itk, _ = _itk()
        vol = itk.image_from_array(np.ascontiguousarray(values, dtype=np.float32))
        lin = np.asarray(affine_lps, dtype=float)[:3, :3]
        spacing = np.linalg.norm(lin, axis=0)
        vol.SetSpacing(spacing.tolist())
        vol.SetOrigin(np.asarray(affine_lps, dtype=float)[:3, 3].tolist())
        vol.SetDirection(itk.matrix_from_array(lin / spacing))
        self._volume = vol

    def project(self, geometry: Geometry) -> np.ndarray:
        """Line integrals (value x mm), shape (rows, cols)."""
        itk, rtk = _itk()
        det, pose = geometry.detector, geometry.pose
        geo = rtk.ThreeDCircularProjectionGeometry.New()
        geo.AddProjection(
            itk.Point[itk.D, 3](pose.source_lps_mm.tolist()),
            itk.Point[itk.D, 3](pose.detector_centre_lps_mm.tolist()),
            itk.Vector[itk.D, 3](pose.u_axis.tolist()),
            itk.Vector[itk.D, 3](pose.v_axis.tolist()),
        )
        u, v = pixel_offsets_mm(det)
        proj = itk.image_from_array(np.zeros((1, det.image_rows, det.image_cols), dtype=np.float32))
        proj.SetSpacing([det.image_pitch_mm, det.image_pitch_mm, 1.0])
        proj.SetOrigin([float(u[0]), float(v[0]), 0.0])
        fp = rtk.JosephForwardProjectionImageFilter[type(proj), type(self._volume)].New()
        fp.SetInput(0, proj)
        fp.SetInput(1, self._volume)
        fp.SetGeometry(geo)
        fp.Update()
        return np.asarray(itk.array_from_image(fp.GetOutput()))[0].copy()


def rtk_line_integrals(values: np.ndarray, affine_lps: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Line integrals (value x mm) of a scalar volume ``values[k, j, i]`` on every image pixel."""
    return RtkProjector(values, affine_lps).project(geometry)
