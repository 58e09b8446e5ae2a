"""Units of twinjax, and conversion constants for the edges of the library.

Every kernel works in these canonical units and never converts:

| quantity      | unit     |
|---------------|----------|
| time          | h        |
| activity      | MBq      |
| amount        | nmol     |
| concentration | nmol/L   |
| volume        | L        |
| mass          | kg       |
| length        | mm       |
| energy        | MeV      |
| dose          | Gy       |

User input in other units is converted once, where it enters (configuration, file readers), by
multiplying with the constants below, e.g. ``volume_L = volume_mL * ML_TO_L``.
"""

from __future__ import annotations

#: Avogadro constant (1/mol), exact since the 2019 SI redefinition.
AVOGADRO_PER_MOL = 6.02214076e23
#: Atoms in one nmol.
ATOMS_PER_NMOL = AVOGADRO_PER_MOL * 1e-9
#: Elementary charge (C) = J per eV, exact.
J_PER_EV = 1.602176634e-19
#: J per MeV.
J_PER_MEV = J_PER_EV * 1e6

# --- time
S_PER_H = 3600.0
MIN_TO_H = 1.0 / 60.0
S_TO_H = 1.0 / S_PER_H
D_TO_H = 24.0
WEEK_TO_H = 7.0 * 24.0

# --- activity
BQ_TO_MBQ = 1e-6
KBQ_TO_MBQ = 1e-3
GBQ_TO_MBQ = 1e3
MCI_TO_MBQ = 37.0
CI_TO_MBQ = 3.7e4

# --- volume / mass / length
ML_TO_L = 1e-3
G_TO_KG = 1e-3
CM_TO_MM = 10.0

# --- flows
ML_PER_MIN_TO_L_PER_H = 60.0 * ML_TO_L

#: Absorbed dose (Gy) from energy E (MeV) deposited in mass m (kg): D = E * MEV_TO_J / m.
MEV_TO_J = J_PER_MEV
#: MBq·h of cumulated activity = this many decays.
DECAYS_PER_MBQ_H = 1e6 * S_PER_H


def mbq_per_nmol(decay_constant_per_h: float) -> float:
    """Specific activity of a pure radionuclide: MBq carried by 1 nmol of its atoms.

    **Arguments:** `decay_constant_per_h` — decay constant (1/h).

    **Returns:** MBq/nmol, i.e. ``lambda[1/s] * N_A * 1e-9 * 1e-6``.
    """
    return decay_constant_per_h * S_TO_H * ATOMS_PER_NMOL * BQ_TO_MBQ
