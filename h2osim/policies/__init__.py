"""Eviction policies, one file each, registered by name with :func:`register`.

Add a policy by adding a module here that defines a ``@register``-ed class; the CLI,
the app and the test matrix all read :data:`POLICIES` through :func:`policy_names`.
"""

from h2osim.policies.base import (
    POLICIES,
    MaskPolicy,
    Policy,
    ReplayContext,
    ScorePolicy,
    all_parameters,
    lowest_scored,
    make_policy,
    param,
    policy_class,
    policy_names,
    register,
    top_scored,
)

__all__ = [
    "POLICIES",
    "MaskPolicy",
    "Policy",
    "ReplayContext",
    "ScorePolicy",
    "all_parameters",
    "lowest_scored",
    "make_policy",
    "param",
    "policy_class",
    "policy_names",
    "register",
    "top_scored",
]
