"""The demo's metadata.csv columns: per-patient, per-wound and per-visit fields drawn from the caller's
random generator, all label-free noise except the two signal columns and the leaky phase columns
(synthetic.py's docstring); the column order of the real study's file.
"""

from __future__ import annotations

import numpy as np

_FLAGS = (
    "Bunion", "Claw", "Hammer", "Charcot Arthropathy", "Flat Foot", "Abnormal Nails", "Neuropathy",
    "Ischemia", "Hypertension", "Dyslipidemia", "Erythema at Peri-ulcer", "Edema at Peri-ulcer",
    "Pale Colour at Peri-ulcer", "Maceration at Peri-ulcer", "Foot Callus", "Infection",
    "Offloading: Total Contact Cast", "Offloading: Therapeutic Shoes", "Offloading: Crutches",
    "Offloading: Wheelchair",
)
_PATIENT_FLAGS = _FLAGS[:10]
_LOC_GROUPED = ["Hallux", "hallux", "Toes", "toes", "Middle", "middle", "Heel", "heel", "Ankle"]
_LOC_TEXT = ["plantar hallux", "dorsal hallux", "2nd toe tip", "3rd toe", "5th toe lateral", "1st metatarsal head",
             "midfoot plantar", "lateral midfoot", "posterior heel", "medial heel", "lateral malleolus",
             "medial malleolus"]


def _maybe(rng, value, p_missing):
    return np.nan if rng.random() < p_missing else value


def patient_fields(rng):
    f = {
        "Age": _maybe(rng, int(rng.integers(35, 86)), 0.03),
        "Sex (F:0, M:1)": str(rng.choice(["F", "M"], p=[0.3, 0.7])),
        "Weight (Kg)": _maybe(rng, round(float(rng.normal(85, 15)), 1), 0.10),
        "Height (cm)": _maybe(rng, int(rng.normal(170, 9)), 0.15),
        "Smoking": int(rng.integers(0, 4)),
        "Alcohol Consumption": int(rng.integers(0, 4)),
        "Habits Score": _maybe(rng, int(rng.integers(0, 7)), 0.25),
    }
    for c in _PATIENT_FLAGS:
        f[c] = _maybe(rng, int(rng.random() < 0.25), 0.05)
    return f


def wound_fields(rng):
    return {
        "Location": str(rng.choice(_LOC_TEXT)),
        "Side (Left:0, Right:1)": str(rng.choice(["Left", "Right"])),
        "Foot Aspect": str(rng.choice(["Dorsal", "Plantar", "Medial", "Lateral"])),
        "Location Grouped (Hallux:1,Toes,Middle,Heel,Ankle:5)": str(rng.choice(_LOC_GROUPED)),
        "Onset (Days)": _maybe(rng, int(rng.integers(7, 400)), 0.25),
    }


def visit_fields(rng, appt, z_meta):
    f = {}
    temps_missing = rng.random() < (0.6 if appt == 0 else 0.08)
    intact = round(float(rng.normal(31.0, 1.2)), 2)
    wc_norm = round(0.3 + 0.6 * z_meta, 4)
    peri_norm = round(float(rng.normal(0.5, 0.8)), 2)
    f["Wound Centre Temperature (°C)"] = np.nan if temps_missing else round(intact + wc_norm, 2)
    f["Peri-Ulcer Temperature (°C)"] = np.nan if temps_missing else round(intact + peri_norm, 2)
    f["Intact Skin Temperature (°C)"] = np.nan if temps_missing else intact
    f["Wound Centre Temperature Normalized (°C)"] = np.nan if temps_missing else wc_norm
    f["Peri-Ulcer Temperature Normalized (°C)"] = np.nan if temps_missing else peri_norm
    f["Pain Level"] = _maybe(rng, int(rng.integers(0, 11)), 0.2)
    pain = str(rng.choice(["none", "burning", "stabbing", "throbbing", "aching"]))
    f["Type of Pain"] = pain
    f["Type of Pain2"] = str(rng.choice(["tingling", "numbness"])) if rng.random() < 0.1 else np.nan
    f["Type of Pain Grouped"] = {"none": "None", "burning": "Neuropathic", "stabbing": "Neuropathic"}.get(pain, "Nociceptive")
    f["Clinical Score"] = _maybe(rng, int(rng.integers(0, 15)), 0.1)
    f["Foot Score"] = _maybe(rng, int(rng.integers(0, 10)), 0.1)
    f["Wound Score"] = round(12.0 + 3.0 * z_meta, 4)  # never missing
    f["Leg Score"] = _maybe(rng, int(rng.integers(0, 8)), 0.1)
    f["Offloading Score"] = _maybe(rng, int(rng.integers(0, 5)), 0.25)
    for c in _FLAGS[10:]:
        f[c] = _maybe(rng, int(rng.random() < 0.3), 0.05)
    f["Wound Tunneling"] = int(rng.integers(0, 4))
    amount = int(rng.integers(0, 4))
    f["Exudate Amount (None:0,Minor,Medium,Severe:3)"] = amount
    f["Exudate Appearance (Serous:1,Haemoserous,Bloody,Thick:4)"] = (
        np.nan if amount == 0 else str(rng.choice(["Serous", "Haemoserous", "Bloody", "Thick"])))
    f["Odor"] = _maybe(rng, str(rng.choice(["None", "Mild", "Strong"], p=[0.6, 0.3, 0.1])), 0.1)
    f["Dressing Grouped"] = str(rng.choice(["Foam", "Alginate", "Hydrocolloid", "Gauze", "Silver"]))
    return f


COLUMN_ORDER = [
    "ID", "Patient#", "Appt#", "DFU#", "Appt Days", "Healing Phase Abs", "Healing Phase", "Phase Confidence (%)",
    "Age", "Sex (F:0, M:1)", "Weight (Kg)", "Height (cm)", "Smoking", "Alcohol Consumption", "Habits Score",
    "Location", "Side (Left:0, Right:1)", "Foot Aspect", "Location Grouped (Hallux:1,Toes,Middle,Heel,Ankle:5)",
    "Onset (Days)",
]
