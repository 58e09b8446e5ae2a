"""Tissue-scale reaction-diffusion on regular grids: finite-volume operators with heterogeneous
diffusivity, method-of-lines time integration (explicit, implicit or IMEX, matrix-free) and
steady states.

Units: length mm, time h, diffusivity mm^2/h, rates 1/h.
"""

from ._grid import Grid as Grid
from ._operators import Diffusion as Diffusion
from ._solve import solve_pde as solve_pde
from ._solve import steady_state as steady_state
