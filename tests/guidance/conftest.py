"""Shared fixtures of the guidance tests."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def lateral_frame():
    """One rendered lateral of a development phantom (seed 5, never an evaluation patient),
    centred on L2-L3: three interspaces refined by ``detect_levels``."""
    from openfluoro.fluoro.session import Session
    from openfluoro.geometry.carm import Detector
    from openfluoro.scene.patient import patient_from_phantom
    from openfluoro.scene.phantom import PhantomParams, cached_phantom

    patient = patient_from_phantom(cached_phantom(PhantomParams(voxel_mm=1.5, seed=5, lordosis_deg=50.0)))
    s = Session.for_patient(patient, detector=Detector.square(512, 300.0), seed=4)
    s.move_table(tuple(-np.asarray(patient.landmarks["discs"]["L2-L3"]["centre"], float)))
    s.set_view("lateral")
    frame = s.run(0.2)[-1]
    s.pedal_up()
    return frame
