"""Simulation: a support agent whose behaviour follows its spec, traffic, and the demo story."""

from __future__ import annotations

from policy_canary.simulate._agent import (
    MODELS,
    TOOLS,
    ModelProfile,
    Outcome,
    SimulatedAgent,
    ToolProfile,
    daily_rate,
)
from policy_canary.simulate._demo import (
    POLICY,
    V1,
    V2,
    V3,
    Chapter,
    DemoReport,
    DemoScenario,
    Progress,
)
from policy_canary.simulate._receiver import WebhookReceiver
from policy_canary.simulate._traffic import TrafficDriver, TrafficStats

__all__ = [
    "MODELS",
    "POLICY",
    "TOOLS",
    "V1",
    "V2",
    "V3",
    "Chapter",
    "DemoReport",
    "DemoScenario",
    "ModelProfile",
    "Outcome",
    "Progress",
    "SimulatedAgent",
    "ToolProfile",
    "TrafficDriver",
    "TrafficStats",
    "WebhookReceiver",
    "daily_rate",
]
