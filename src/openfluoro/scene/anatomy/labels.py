"""Label table and tissue Hounsfield values of the phantom.

Hounsfield values are unenhanced-CT values at 120 kVp from published ranges:

* air / bowel gas -1000 (gas in bowel measures -950 to -1000);
* fat (subcutaneous, visceral, epidural) -100 to -80 (Schneider, Pedroni & Lomax,
  Phys Med Biol 41 (1996) 111, adipose -98; Kvist et al., Am J Clin Nutr 48 (1988)
  1351 use -190..-30 as the fat window, peak near -100);
* skeletal muscle 40-60 (Goodpaster et al., J Appl Physiol 89 (2000) 104: normal
  muscle ~ 40-50 HU; psoas and paraspinal ~ 45-55);
* skin (dermis) 20-60;
* liver 55-65 unenhanced (Kodama et al., AJR 188 (2007) 1307: normal 55-65),
  spleen 45-50, kidney 30-40 unenhanced, blood (aorta, IVC) 40-50;
* CSF 0-15, spinal cord 30-40, dura ~ 35 (a membrane below the voxel size);
* ligamentum flavum 60-80 (elastic ligament, denser than muscle on CT);
* intervertebral disc: annulus fibrosus 80-100, nucleus pulposus 40-70;
* vertebral cancellous bone 150-300 in healthy adults (Pickhardt et al., Ann Intern
  Med 158 (2013) 588: L1 trabecular ~ 200-260 HU in young adults; <= 110 HU suggests
  osteoporosis), cortical shell 1000-1500 (thin: seen with partial volume on CT);
* urine 0-10.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

AIR = 0
T12, L1, L2, L3, L4, L5, SACRUM, COCCYX = 1, 2, 3, 4, 5, 6, 7, 8
DISC_T12_L1, DISC_L1_L2, DISC_L2_L3, DISC_L3_L4, DISC_L4_L5, DISC_L5_S1 = 9, 10, 11, 12, 13, 14
THECAL_SAC, CSF, SPINAL_CORD, CAUDA_EQUINA, EPIDURAL_FAT, LIGAMENTUM_FLAVUM = 15, 16, 17, 18, 19, 20
PARASPINAL_MUSCLE, PSOAS, OTHER_MUSCLE, SUBCUTANEOUS_FAT, SKIN, VISCERAL_FAT = 21, 22, 23, 24, 25, 26
LIVER, KIDNEY_LEFT, KIDNEY_RIGHT, BOWEL, BOWEL_GAS, AORTA, IVC, BLADDER = 27, 28, 29, 30, 31, 32, 33, 34
HIP_LEFT, HIP_RIGHT, RIB_LEFT, RIB_RIGHT, FEMUR_LEFT, FEMUR_RIGHT = 35, 36, 37, 38, 39, 40
INTERSPINOUS_LIGAMENT, SPLEEN = 41, 42

#: label value -> structure name. "hip_*" is the whole os coxae (ilium, with its crest and wing,
#: ischium, pubis); "thecal_sac" is the dural wall, "csf" the fluid inside it.
LABELS: Mapping[int, str] = MappingProxyType({
    AIR: "air",
    T12: "T12", L1: "L1", L2: "L2", L3: "L3", L4: "L4", L5: "L5", SACRUM: "sacrum", COCCYX: "coccyx",
    DISC_T12_L1: "disc_T12_L1", DISC_L1_L2: "disc_L1_L2", DISC_L2_L3: "disc_L2_L3",
    DISC_L3_L4: "disc_L3_L4", DISC_L4_L5: "disc_L4_L5", DISC_L5_S1: "disc_L5_S1",
    THECAL_SAC: "thecal_sac", CSF: "csf", SPINAL_CORD: "spinal_cord", CAUDA_EQUINA: "cauda_equina",
    EPIDURAL_FAT: "epidural_fat", LIGAMENTUM_FLAVUM: "ligamentum_flavum",
    PARASPINAL_MUSCLE: "paraspinal_muscle", PSOAS: "psoas", OTHER_MUSCLE: "other_muscle",
    SUBCUTANEOUS_FAT: "subcutaneous_fat", SKIN: "skin", VISCERAL_FAT: "visceral_fat",
    LIVER: "liver", KIDNEY_LEFT: "kidney_left", KIDNEY_RIGHT: "kidney_right", BOWEL: "bowel",
    BOWEL_GAS: "bowel_gas", AORTA: "aorta", IVC: "ivc", BLADDER: "bladder",
    HIP_LEFT: "hip_left", HIP_RIGHT: "hip_right", RIB_LEFT: "rib_left", RIB_RIGHT: "rib_right",
    FEMUR_LEFT: "femur_left", FEMUR_RIGHT: "femur_right",
    INTERSPINOUS_LIGAMENT: "interspinous_ligament", SPLEEN: "spleen",
})

VERTEBRAE: tuple[str, ...] = ("T12", "L1", "L2", "L3", "L4", "L5")
VERTEBRA_LABEL: Mapping[str, int] = MappingProxyType({n: v for v, n in LABELS.items() if n in VERTEBRAE}
                                                      | {"sacrum": SACRUM, "coccyx": COCCYX})
DISCS: tuple[str, ...] = ("T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
DISC_LABEL: Mapping[str, int] = MappingProxyType(dict(zip(DISCS, range(DISC_T12_L1, DISC_L5_S1 + 1))))

BONE_LABELS: tuple[int, ...] = (T12, L1, L2, L3, L4, L5, SACRUM, COCCYX, HIP_LEFT, HIP_RIGHT,
                                RIB_LEFT, RIB_RIGHT, FEMUR_LEFT, FEMUR_RIGHT)
DISC_LABELS: tuple[int, ...] = tuple(DISC_LABEL.values())
CANAL_LABELS: tuple[int, ...] = (THECAL_SAC, CSF, SPINAL_CORD, CAUDA_EQUINA, EPIDURAL_FAT, LIGAMENTUM_FLAVUM)
SOFT_LABELS: tuple[int, ...] = tuple(v for v in LABELS
                                     if v not in BONE_LABELS + DISC_LABELS + CANAL_LABELS + (AIR,))

# -- Hounsfield values ------------------------------------------------------------------------
HU_AIR = -1000.0
HU_GAS = -1000.0
HU_FAT = -95.0
HU_EPIDURAL_FAT = -100.0
HU_VISCERAL_FAT = -95.0
HU_SKIN = 40.0
HU_MUSCLE = 50.0
HU_PSOAS = 48.0
HU_LIVER = 58.0
HU_SPLEEN = 47.0
HU_KIDNEY = 32.0
HU_BLOOD = 42.0
HU_BOWEL = 30.0
HU_BOWEL_WALL = 40.0
HU_URINE = 5.0
HU_CSF = 8.0
HU_DURA = 35.0
HU_CORD = 35.0
HU_ROOTS = 33.0
HU_LIGAMENTUM_FLAVUM = 70.0
HU_INTERSPINOUS = 55.0
HU_ANNULUS = 90.0
HU_NUCLEUS = 55.0
HU_CORTICAL = 1000.0      # vertebral body shell / endplates (~1 mm: the thin cortex with partial volume)
HU_CORTICAL_ARCH = 1000.0  # shell of the posterior arch (pedicles, laminae, processes)
HU_ARCH = 250.0           # interior of the posterior arch
HU_CORTICAL_PELVIS = 1000.0
HU_CANCELLOUS = 230.0     # healthy adult lumbar trabecular bone (times bone_density)
HU_CANCELLOUS_PELVIS = 200.0
