"""Dosimetry from measured activities: single-time-point estimates of the time-integrated activity."""

from .single_timepoint import effective_half_life_h as effective_half_life_h
from .single_timepoint import hanscheid_relative_error as hanscheid_relative_error
from .single_timepoint import hanscheid_tia as hanscheid_tia
from .single_timepoint import madsen_relative_error as madsen_relative_error
from .single_timepoint import madsen_tia as madsen_tia
