"""Make ``totalsegmentator_example_levels.json``: the interspaces of ``example_ct.nii.gz`` in
LPS mm, read from the CT (its label map stops at L2, see ../shared/data/README.md).

    python tests/data/make_ct_levels.py /work/shared/data/totalsegmentator_example

Method: the mean HU of a 21 x 21 mm box on the vertebral column, slice by slice, follows
the column from the labelled L1 body down (the box re-centred on the body's dense bone);
T12-L1 and L1-L2 lie at the ends of the labelled L1 body, and each lower disc at the
deepest minimum of the profile about one L1 height (-20 %/+25 %) below the one above. The result was
checked by eye on a mid-sagittal slab (every line in a gap between two bodies) and against
the labels: T12-L1 and L1-L2 must bracket the L1 label's slices.
The box follows the dense bone, which lies in the front of the body, so its centre is
anterior of the disc's; each centre is then moved, front to back only, to midway between
the centres of the two bodies next to it, each body's centre being midway between its
anterior and posterior margins on the mid-sagittal line at mid-body height
(``body_centre_y``).
"""
import json
import sys
from pathlib import Path

import numpy as np

from openfluoro.scene.patient import load_patient


#: Discs this method cannot place; ``read_levels_file`` leaves them unscored.
UNCERTAIN = {"L5-S1"}
NOTES = ("L5-S1 is steeply tilted and the column box leaves the body there: its centre is uncertain "
         "(~10 mm; a mid-sagittal view puts the anterior gap near z 226 mm) and it is not scored. "
         "Checked by eye on a mid-sagittal slab: T12-L1 to L4-L5 each lie in a gap between two bodies, "
         "midway front to back.")


def body_centre_y(hu: np.ndarray, A: np.ndarray, point) -> float:
    """The AP centre (LPS y, mm) of the vertebral body through ``point``: midway between its
    anterior margin (the last voxel of 60 HU or more before the fat or vessels in front)
    and its posterior margin (the last voxel of 40 HU or more before the spinal canal),
    walking from ``point`` along a mid-sagittal row averaged over 3 x 3 voxels."""
    i, j, k = np.rint(np.linalg.solve(A, np.r_[point, 1.0])[:3]).astype(int)
    row = hu[k - 1:k + 2, :, i - 1:i + 2].mean(axis=(0, 2))
    dj = 1 if A[1, 1] < 0 else -1                # index step toward anterior (-y)

    def margin(step: int, floor: float) -> int:
        n = j
        while 0 <= n + step < len(row) and row[n + step] >= floor:
            n += step
        return n

    ant, post = margin(dj, 60.0), margin(-dj, 40.0)
    return float(A[1, 3] + A[1, 1] * 0.5 * (ant + post))


def main(folder: Path) -> dict:
    p = load_patient(folder / "example_ct.nii.gz", folder / "example_seg.nii.gz", 82)
    vol, hu, A = p.volume, p.volume.hu, p.volume.affine_lps
    dz, dx = abs(A[2, 2]), abs(A[0, 0])
    l1 = next(i for i, n in p.label_names.items() if n == "L1")
    kk, jj, ii = np.nonzero(p.labels == l1)
    P = np.stack([ii, jj, kk], 1) @ A[:3, :3].T + A[:3, 3]
    body = P[P[:, 1] < P[:, 1].min() + 30.0]          # the anterior 30 mm: the body
    centre = body.mean(0)
    # follow the column down from the top of L1, one slice at a time
    xy = centre[:2].copy()
    profile = []
    k_top = int(kk.max()) + 4
    for k in range(min(k_top, hu.shape[0] - 1), -1, -1):
        z = A[2, 3] + A[2, 2] * k
        i, j = np.rint(vol.lps_to_index(np.array([[xy[0], xy[1], z]]))[0][:2]).astype(int)
        r = int(round(10.5 / dx))
        box = hu[k, max(0, j - r):j + r + 1, max(0, i - r):i + r + 1]
        profile.append((z, float(box.mean()), xy.copy()))
        # re-centre on the body: the anterior 30 mm of the dense bone (> 180 HU) within
        # 22 mm, over five slices, slowly, to follow the curve of the column
        R = int(round(22.0 / dx))
        j0, i0 = max(0, j - R), max(0, i - R)
        sub = hu[max(0, k - 2):k + 3, j0:j + R + 1, i0:i + R + 1]
        b = np.argwhere(sub > 180)
        if len(b) > 20:
            q = (A[:3, :3] @ np.stack([b[:, 2] + i0, b[:, 1] + j0, b[:, 0]], 0)).T + A[:3, 3]
            q = q[q[:, 1] < q[:, 1].min() + 30.0]
            xy = 0.7 * xy + 0.3 * q[:, :2].mean(0)
    zs = np.array([t[0] for t in profile])
    hv = np.array([t[1] for t in profile])
    sm = np.convolve(hv, [0.25, 0.5, 0.25], mode="same")
    # T12-L1 and L1-L2: just above and below the labelled L1 body (its anterior 30 mm);
    # below, each disc is the deepest profile minimum one vertebra height (that of L1, from
    # the labels) lower, within -20 % / +25 %
    top, bottom = float(body[:, 2].max()) + dz / 2, float(body[:, 2].min()) - dz / 2
    height = top - bottom
    names = ["T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]

    def at(z: float) -> int:
        return int(np.argmin(np.abs(zs - z)))

    found = [at(top), at(bottom)]
    for _ in names[2:]:
        prev = zs[found[-1]]
        win = [n for n in range(len(zs)) if prev - 1.25 * height <= zs[n] <= prev - 0.8 * height]
        if not win:
            break
        found.append(min(win, key=lambda n: sm[n]))
    centres = [np.array([profile[n][2][0], profile[n][2][1], zs[n]]) for n in found]
    # the bodies: between consecutive discs, and half a body beyond the first and the last
    mids = [c + [0.0, 0.0, 0.5 * height] for c in centres[:1]]
    mids += [0.5 * (a + b) for a, b in zip(centres[:-1], centres[1:])]
    mids += [c - [0.0, 0.0, 0.5 * height] for c in centres[-1:]]
    body_y = [body_centre_y(hu, A, m) for m in mids]
    discs = {}
    for name, n, c, ya, yb in zip(names, found, centres, body_y[:-1], body_y[1:]):
        discs[name] = {"centre": [round(float(c[0]), 1), round(0.5 * (ya + yb), 1), round(float(c[2]), 1)],
                       "profile_hu": round(float(sm[n])), "column_box_y_mm": round(float(c[1]), 1)}
        if name in UNCERTAIN:
            discs[name]["uncertain"] = True
    lab_z = sorted({float(A[2, 3] + A[2, 2] * k) for k in kk})
    return {"volume": "example_ct.nii.gz", "coordinates": "DICOM LPS mm (the NIfTI's affine)",
            "method": __doc__.split("Method: ")[1].strip().replace("\n", " "),
            "slice_mm": dz, "uncertainty_mm": round(dz / 2, 1),
            "check": {"L1_label_z_mm": [lab_z[0], lab_z[-1]], "L1_body_z_mm": [bottom, top]},
            "discs": discs, "notes": NOTES}


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    out = main(folder)
    path = Path(__file__).with_name("totalsegmentator_example_levels.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["discs"]), out["check"])
