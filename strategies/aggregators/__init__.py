"""Built-in aggregators, one module each."""

from .bulyan import Bulyan
from .centered_clipping import CenteredClipping
from .fltrust import FLTrust
from .geometric_median import GeometricMedian
from .krum import Krum, MultiKrum
from .mean import Mean
from .median import Median
from .norm_bounding import NormBounding
from .trimmed_mean import TrimmedMean

BUILTIN = (
    Mean, Median, TrimmedMean, Krum, MultiKrum, Bulyan, GeometricMedian,
    CenteredClipping, NormBounding, FLTrust,
)

__all__ = [
    "BUILTIN", "Bulyan", "CenteredClipping", "FLTrust", "GeometricMedian", "Krum",
    "Mean", "Median", "MultiKrum", "NormBounding", "TrimmedMean",
]
