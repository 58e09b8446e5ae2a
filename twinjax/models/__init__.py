"""Mechanistic models: compartmental and whole-body PBPK (see `twinjax.models.pbpk`)."""

from ._expr import Expr as Expr
from ._expr import expr as expr
from ._rosenbrock import Rodas3 as Rodas3
from ._rosenbrock import Rodas4 as Rodas4
from ._simulate import Trajectory as Trajectory
from ._simulate import simulate as simulate
from ._simulate import simulate_tandem as simulate_tandem
from .compartmental import Binding as Binding
from .compartmental import CompartmentalModel as CompartmentalModel
from .compartmental import SaturableTransfer as SaturableTransfer
from .compartmental import Transfer as Transfer
from .sbml import read_sbml as read_sbml
from .sbml import write_sbml as write_sbml
