"""Our ray caster against an independent projector (RTK's Joseph forward projector) on a real CT."""

import numpy as np
import pytest

from openfluoro.geometry.carm import CArmPose, Detector, Geometry, standard_view
from openfluoro.render.raycast import MaterialVolume, project_materials
from openfluoro.scene.materials import hu_to_material_densities
from openfluoro.scene.volume import load_volume

pytest.importorskip("itk")  # itk-rtk is in the test extra; skip loudly if someone removed it


@pytest.fixture(scope="module")
def real_ct(example_ct_path):
    vol = load_volume(example_ct_path)
    return vol, MaterialVolume.from_volume(vol)


@pytest.mark.realdata
@pytest.mark.parametrize("view", ["PA", "lateral", "LPO45"])
def test_agrees_with_rtk_joseph_within_1_percent_rms(real_ct, view):
    from openfluoro.render.reference import rtk_line_integrals

    vol, mvol = real_ct
    geometry = Geometry(
        standard_view(view, CArmPose(isocentre_lps_mm=tuple(vol.centre_lps_mm))), Detector.square(128, 400.0)
    )
    ours = project_materials(mvol, geometry).sum(axis=0)          # g/cm2, all materials
    ref = rtk_line_integrals(hu_to_material_densities(vol.hu).sum(axis=3), vol.affine_lps, geometry) / 10.0  # g/cm3*mm -> g/cm2
    body = ref > 0.05 * ref.max()
    assert body.mean() > 0.2, "the CT should fill a good part of the field"
    rel = (ours[body] - ref[body]) / ref[body]
    rms = float(np.sqrt(np.mean(rel**2)))
    assert rms < 0.01, f"RMS relative difference to RTK {rms:.3%}"
