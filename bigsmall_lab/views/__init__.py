"""Widgets and charts of the lab: thin views that draw what the planners in bigsmall_lab compute.

>>> from bigsmall_lab.views import BitLayout, precision_chart
>>> BitLayout(value="1 + 2**-8").rows[2]["value"]  # bfloat16 keeps 7 mantissa bits: 2**-8 is lost
'1'
"""

from bigsmall_lab.views._bits import DEFAULT_FORMATS, BitLayout, precision_chart
from bigsmall_lab.views._memory import memory_timeline, peaks_bar

__all__ = ["DEFAULT_FORMATS", "BitLayout", "memory_timeline", "peaks_bar", "precision_chart"]
