"""An OpenFeature provider over a :class:`~policy_canary.Canary` (the ``openfeature`` extra).

::

    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext
    from policy_canary.openfeature import CanaryProvider

    provider = CanaryProvider(Canary.open(), policies=["support-agent"])
    api.set_provider(provider)
    details = api.get_client().get_object_details(
        "support-agent", {}, EvaluationContext(targeting_key=user_id)
    )
    reply = run_agent(details.value)
    provider.record(details, latency_ms=elapsed, quality=score)

A flag is a policy, the targeting key is the unit key, the value is the serving version's
spec, the variant its label (``v2``). See docs/integrations.md.
"""

from __future__ import annotations

from policy_canary.openfeature._provider import PROVIDER_NAME, CanaryProvider

__all__ = ["PROVIDER_NAME", "CanaryProvider"]
