"""Load balancing over a service's live hosts: pickers, passive health, Rx operators.

- :class:`Balancer` (``discovery.balancer("svc", policy=...)``): keeps the latest host set,
  picks without I/O, ejects failing hosts for a while.
- :func:`picker`: the same pickers as an Rx operator on ``hosts()``.
- :class:`RoundRobin`, :class:`Random`, :class:`LeastRequests`: the pickers themselves.
"""

from __future__ import annotations

from rx_discovery.balance._balancer import Balancer, Call
from rx_discovery.balance._ejection import Ejections
from rx_discovery.balance._operators import HostPicker, picker
from rx_discovery.balance._pickers import (
    POLICIES,
    LeastRequests,
    Picker,
    Policy,
    Random,
    RoundRobin,
    make_picker,
)

__all__ = ["POLICIES", "Balancer", "Call", "Ejections", "HostPicker", "LeastRequests", "Picker",
           "Policy", "Random", "RoundRobin", "make_picker", "picker"]
