"""The policy comparison moved to ``prism.sim.evaluation`` (one engine for ``prism evaluate``,
``prism simulate``, ``prism train`` and the notebooks); these names stay importable from here
for code written against the old module."""

from prism.sim.evaluation import (  # noqa: F401
    DEFAULT_BUDGETS,
    PolicyResult,
    at_risk_summary,
    fixed_policy,
    format_table,
    policy_table,
    random_policy,
    ranked_policy,
    threshold_policy,
)
